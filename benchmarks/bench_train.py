"""gal-train throughput (images/s).

CPU (default): the `small` preset (tiny encoder, GeM pooling, MoCo v2, batch 64, 48x48 views of 64x64 cutouts of
    3 bands, queue 320 as for 1,500 cutouts):
    - the preset's training step (forward of both encoders, loss, backward, SGD step, queue update on synthetic
      preprocessed views) with gal-train's CPU defaults (bf16 autocast where the CPU has bf16 units, threads from
      the affinity, waiting without spinning) against the fp32 eager step, in the same process, windows of the two
      arms interleaved, median over the repeats;
    - whole `gal-train --preset small` runs (real processes; images/s from RUN/metrics.jsonl, wall time) with the
      defaults, with --precision fp32, and (--baseline-rev REV) with the gal-train of an earlier commit, interleaved;
    - two such runs at once against one alone (wall time, and each run's CPU time), in turn, repeated, for the
      defaults (and the baseline commit).
    The table: 1,500 synthetic galaxies (bench_embed's), or the Galaxy Zoo 1 images packed as bench_representation
    does (--gz1 DIR).  Run it without OMP_NUM_THREADS to measure the defaults as a user gets them.
GPU (--paper, when CUDA is usable): Hayat et al. 2021's configuration, resnet50-hayat, batch 512, bf16 autocast,
    channels_last, 64x64 views of 78x78 cutouts (jitter up to 7 pixels, as Hayat et al.): the full pipeline against
    the bare step of the same model; the goal is full pipeline >= 90% of the bare step (reference on one H200:
    bare step 2,950 images/s eager, 4,500 compiled).  Add --compile for both.

    python benchmarks/bench_train.py [--gz1 DIR] [--baseline-rev 67beda0]
    python benchmarks/bench_train.py --paper [--compile]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
from _record import record  # noqa: E402
from bench_embed import galaxy_cutouts, write_cutouts  # noqa: E402

USER_ENV = dict(os.environ)   # gal-train runs get the environment as the user gave it (cpu_threads adds to ours)
CHAIN = "rotate,jitter:max_shift={shift},noise,redden:ebv_max=0.5,psf:fwhm_in=1.4"


def pipeline_rate(config) -> tuple[float, list[float]]:
    from galtools.train import train

    train(config)
    records = [json.loads(line) for line in open(os.path.join(config.out, "metrics.jsonl"))]
    rates = [r["images_per_s"] for r in records if "images_per_s" in r][1:]   # drop the window with start-up
    return statistics.median(rates), rates


class StepArm:
    """The training step of gal-train's model on synthetic preprocessed views already on the device: forward of
    both encoders, loss, backward, SGD step, queue update, nothing else."""

    def __init__(self, config, bands: int, bf16: bool, channels_last: bool, splits: int = 8):
        import torch

        from galtools.models import build_encoder
        from galtools.ssl import MoCo

        self.device = torch.device("cuda" if config.device.startswith("cuda") else "cpu")
        torch.manual_seed(0)
        splits = splits if config.batch_size % splits == 0 else 1
        self.model = MoCo(build_encoder(config.arch, bands, pool=config.pool), config.dim, config.queue_size,
                          config.key_momentum, config.temperature, splits).to(self.device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        if config.compile:
            self.model.encoder_q.compile()
            self.model.encoder_k.compile()
        self.optimizer = torch.optim.SGD(self.model.encoder_q.parameters(), lr=config.scaled_lr, momentum=0.9,
                                         weight_decay=1e-4)
        shape = (config.batch_size, bands, config.crop, config.crop)
        self.views = [torch.randn(shape, device=self.device) for _ in range(2)]
        if channels_last:
            self.views = [v.contiguous(memory_format=torch.channels_last) for v in self.views]
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)
        self.batch, self.steps = config.batch_size, 0

    def window(self, steps: int) -> float:
        """images/s over ``steps`` steps."""
        start = time.perf_counter()
        for _ in range(steps):
            with self.autocast:
                loss, _ = self.model(self.views[0], self.views[1], self.steps)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.steps += 1
        loss.item()                             # wait for the device, as the pipeline's logging does
        return steps * self.batch / (time.perf_counter() - start)


def bare_step_rate(config, bands: int, windows: int, steps_per_window: int) -> tuple[float, list[float]]:
    """Median images/s over ``windows`` windows (after one warm-up window), and the windows' rates."""
    import torch

    cuda = config.device.startswith("cuda")
    if cuda:
        torch.backends.cudnn.benchmark = True   # as gal-train sets it: both sides of the comparison autotuned
    arm = StepArm(config, bands, bf16=cuda, channels_last=cuda)
    arm.window(steps_per_window)                # warms up (and compiles)
    rates = [arm.window(steps_per_window) for _ in range(windows)]
    return statistics.median(rates), rates


# -- CPU: the small preset --------------------------------------------------------------------------------------
SMALL = {"arch": "tiny", "pool": "gem", "dim": 128, "queue_size": 320, "key_momentum": 0.99, "temperature": 0.2,
         "batch_size": 64, "lr": 0.3, "crop": 48}


def cpu_note() -> str:
    from galtools.train.runtime import cpu_bf16_units

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"bf16 units: {', '.join(cpu_bf16_units()) or 'none'}; load average (1, 5, 15 min) {load}"


def preset_step(threads: int, repeats: int, steps: int) -> None:
    """The preset's step with gal-train's CPU defaults against the fp32 eager step, interleaved windows."""
    import torch

    from galtools.train import TrainConfig
    from galtools.train.runtime import resolve_precision

    config = TrainConfig(device="cpu", **SMALL)
    precision = resolve_precision("auto", torch.device("cpu"))
    arms = {"fp32 eager": StepArm(config, 3, bf16=False, channels_last=False),
            "defaults": StepArm(config, 3, bf16=precision == "bf16", channels_last=False)}
    for arm in arms.values():
        arm.window(steps)                       # warm-up
    before = cpu_note()
    rates = {name: [] for name in arms}
    for _ in range(repeats):
        for name, arm in arms.items():
            rates[name].append(arm.window(steps))
    new, old = (statistics.median(rates[name]) for name in ("defaults", "fp32 eager"))
    record(f"gal-train --preset small training step on CPU (tiny encoder, GeM, MoCo v2, batch 64, 48x48x3 synthetic "
           f"views, queue 320; {threads} torch thread(s) from the affinity): gal-train's defaults = {precision} "
           f"autocast, eager, NCHW; arms interleaved, {repeats} windows of {steps} steps each; {before} before, "
           f"{cpu_note()} after (bench_train.py)",
           f"{new:.0f} images/s (median; {', '.join(f'{r:.0f}' for r in rates['defaults'])})",
           f"fp32 eager, same process: {old:.0f} images/s ({', '.join(f'{r:.0f}' for r in rates['fp32 eager'])})",
           f"{new / old:.2f}x")


def start_train(table: str, out: str, steps: int, flags: list[str], pythonpath: str) -> subprocess.Popen:
    env = dict(USER_ENV, PYTHONPATH=pythonpath)
    args = [sys.executable, "-m", "galtools.cli.train", table, "--out", out, "--preset", "small", "--steps",
            str(steps), "--log-every", "20", "--device", "cpu", "--no-export", "--overwrite", "-q", *flags]
    # run from the work folder: from the repository's root, `python -m` would import its galtools before PYTHONPATH's
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, cwd=os.path.dirname(os.path.abspath(out)))


def finish_with_cpu(process: subprocess.Popen, started: float) -> tuple[float, float]:
    """Wall seconds since ``started`` and CPU seconds (user + system, all threads) of a finished gal-train."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"bench_train: gal-train exited {process.returncode}")
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime


def train_rate(out: str) -> float:
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return statistics.median([r["images_per_s"] for r in records if "images_per_s" in r][1:])


def whole_runs(table: str, work: str, arms: dict, steps: int, repeats: int) -> None:
    """gal-train --preset small runs of each arm, interleaved: images/s (median of the logging windows after the
    first) and wall time, median over the repeats."""
    before = cpu_note()
    rates, walls = {name: [] for name in arms}, {name: [] for name in arms}
    for _ in range(repeats):
        for name, (flags, pythonpath) in arms.items():
            out = os.path.join(work, "run")
            started = time.perf_counter()
            walls[name].append(finish_with_cpu(start_train(table, out, steps, flags, pythonpath), started)[0])
            rates[name].append(train_rate(out))
    summary = {name: (statistics.median(rates[name]), statistics.median(walls[name])) for name in arms}

    def describe(name):
        rate, wall = summary[name]
        return (f"{name}: {rate:.0f} images/s ({', '.join(f'{r:.0f}' for r in rates[name])}), "
                f"{wall:.1f} s wall incl. start-up")

    base = [name for name in arms if name != "defaults"]
    record(f"gal-train --preset small, whole runs of {steps} steps on CPU ({table_name(table)}; real processes, "
           f"arms interleaved, {repeats} repeats; {before} before, {cpu_note()} after) (bench_train.py)",
           describe("defaults"), "; ".join(describe(name) for name in base),
           ", ".join(f"{summary['defaults'][0] / summary[name][0]:.2f}x {name}" for name in base))


def concurrent_runs(table: str, work: str, arms: dict, steps: int, repeats: int) -> None:
    """Two gal-train runs at once against one alone, in turn ``repeats`` times: wall time of the pair against the
    single run's (median of the repeats' ratios), with each run's CPU seconds: threads that spin while they wait
    show as CPU time that grows when a neighbour shares the cores."""
    for name, (flags, pythonpath) in arms.items():
        before = cpu_note()
        ratios, notes = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            alone, alone_cpu = finish_with_cpu(start_train(table, os.path.join(work, "alone"), steps, flags,
                                                           pythonpath), started)
            started = time.perf_counter()
            pair = [start_train(table, os.path.join(work, f"pair{i}"), steps, flags, pythonpath) for i in (0, 1)]
            ends = [finish_with_cpu(p, started) for p in pair]
            both = max(wall for wall, _ in ends)
            rates = [train_rate(os.path.join(work, f"pair{i}")) for i in (0, 1)]
            ratios.append(both / alone)
            notes.append(f"pair {both:.1f} s ({rates[0]:.0f} and {rates[1]:.0f} images/s, CPU "
                         f"{ends[0][1]:.1f} and {ends[1][1]:.1f} s) against alone {alone:.1f} s "
                         f"({train_rate(os.path.join(work, 'alone')):.0f} images/s, CPU {alone_cpu:.1f} s), "
                         f"load {os.getloadavg()[0]:.1f}")
        record(f"two concurrent gal-train --preset small runs of {steps} steps on CPU against one alone, {name} "
               f"({table_name(table)}; {repeats} repeats, each the run alone then the pair; {before} before, "
               f"{cpu_note()} after) (bench_train.py)",
               "; ".join(notes),
               "one run alone, same repeat (wall time including start-up)",
               f"{statistics.median(ratios):.2f}x the time for twice the work (median; "
               f"{', '.join(f'{r:.2f}' for r in ratios)}; goal <= 2)")


def table_name(table: str) -> str:
    return "Galaxy Zoo 1 SDSS gri, 1,500 8-bit 64x64" if "gz1" in os.path.basename(table) else \
        "1,500 synthetic 3-band 64x64 flux cutouts"


def cpu_main(args) -> None:
    from galtools.train.runtime import cpu_threads

    threads = cpu_threads()                     # before torch is imported, as gal-train does
    if "steps" in args.parts:
        preset_step(threads, args.repeats, args.window_steps or 10)
    if not {"runs", "concurrent"} & set(args.parts):
        return
    with tempfile.TemporaryDirectory() as work:
        if args.gz1:
            table = os.path.join(work, "gz1.parquet")
            subprocess.run([sys.executable, "-m", "galtools.cli.pack", os.path.join(args.gz1, "labels.csv"), "--crop",
                            "212", "--resize", "64", "--bands", "i,r,g", "--pixscale", "1.31", "-q", "-o", table],
                           check=True)
        else:
            table = os.path.join(work, "cutouts.fits")
            write_cutouts(table, galaxy_cutouts(1500, 64)[:, :3], bands=("g", "r", "i"))
        arms = {"defaults": ([], ROOT), "--precision fp32": (["--precision", "fp32"], ROOT)}
        if args.baseline_rev:
            old = os.path.join(work, "baseline")
            os.makedirs(old)
            archive = subprocess.run(["git", "-C", ROOT, "archive", args.baseline_rev, "galtools"], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
            arms[f"gal-train of {args.baseline_rev}"] = ([], old)
        if "runs" in args.parts:
            whole_runs(table, work, arms, args.steps, args.repeats_runs)
        if "concurrent" in args.parts:
            concurrent_runs(table, work, {k: v for k, v in arms.items() if k != "--precision fp32"},
                            args.concurrent_steps, args.repeats_concurrent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paper", action="store_true", help="resnet50-hayat, batch 512, bf16 on the GPU")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--windows", type=int, default=6, help="--paper: measured logging windows")
    parser.add_argument("--window-steps", type=int, default=None, help="steps per measured window")
    parser.add_argument("--parts", default="steps,runs,concurrent", type=lambda text: text.split(","),
                        help="CPU: which measurements (steps, runs, concurrent)")
    parser.add_argument("--repeats", type=int, default=7, help="CPU: interleaved windows per arm of the step")
    parser.add_argument("--steps", type=int, default=120, help="CPU: steps of each whole run")
    parser.add_argument("--repeats-runs", type=int, default=2, help="CPU: whole runs per arm")
    parser.add_argument("--concurrent-steps", type=int, default=60, help="CPU: steps of each concurrent run")
    parser.add_argument("--repeats-concurrent", type=int, default=2, help="CPU: repeats of one run, then two")
    parser.add_argument("--gz1", default=None, metavar="DIR", help="CPU: train on the Galaxy Zoo 1 images in DIR")
    parser.add_argument("--baseline-rev", default=None, metavar="REV",
                        help="CPU: also run the gal-train of this git commit (e.g. the one before a change)")
    args = parser.parse_args()
    if not args.paper:
        cpu_main(args)
        return

    import torch

    from galtools.train import TrainConfig

    if not torch.cuda.is_available():
        sys.exit("bench_train --paper needs a CUDA GPU")
    arch, batch, size, crop, device, window = "resnet50-hayat", 512, 78, 64, "cuda", args.window_steps or 10
    queue = 65536
    steps = window * (args.windows + 1)
    rows = batch * min(steps + 2, 16)   # the loader cycles epochs: 16 batches are enough (4.5 GB -> 0.5 GB on GPU)
    with tempfile.TemporaryDirectory() as tmp:
        table = os.path.join(tmp, "cutouts.fits")
        write_cutouts(table, galaxy_cutouts(rows, size))
        config = TrainConfig(inputs=[table], out=os.path.join(tmp, "run"), arch=arch, crop=crop, batch_size=batch,
                             steps=steps, queue_size=queue, ops=CHAIN.format(shift=(size - crop) // 2),
                             pixscale=0.396, log_every=window, checkpoint_every=10**9, device=device,
                             compile=args.compile, export=False, preprocess_sample=512)
        # Bare-step windows before and after the pipeline, so that a change of load on a shared machine hits both.
        before = bare_step_rate(config, 5, max(1, args.windows // 2), window)[1]
        full, full_windows = pipeline_rate(config)
        bare_windows = before + bare_step_rate(config, 5, max(1, args.windows - args.windows // 2), window)[1]
        bare = statistics.median(bare_windows)
    load = os.getloadavg()[0]
    what = (f"gal-train full pipeline ({arch}, MoCo v2, batch {batch}, {crop}x{crop} views of {size}x{size} FITS "
            f"cutouts, chain {config.ops}, {device} bf16 autocast, channels_last{', compiled' if args.compile else ''}; "
            f"load avg {load:.1f}) (bench_train.py)")
    record(what, f"{full:.1f} images/s (median of {len(full_windows)} windows of {window} steps: "
                 f"{', '.join(f'{r:.0f}' for r in full_windows)})",
           f"bare step, same model on synthetic views on the device: {bare:.1f} images/s "
           f"({', '.join(f'{r:.0f}' for r in bare_windows)})", f"{full / bare:.2f}")


if __name__ == "__main__":
    main()
