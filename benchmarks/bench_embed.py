"""gal-embed throughput (images/s) against a plain torch eager loop over the same model and data, same run.

CPU (always):
  gal-embed, file to file (a real process: cutouts in, Parquet embeddings out, start-up and model load included),
  at each --precisions (fp32, int8, auto), against torch eager fp32 on the same images already in memory (centre
  crop, Preprocess.apply_torch, forward_features in batches under inference_mode, torch.set_num_threads = the CPU
  allocation).  Both get the same encoder: a galtools.models encoder with random weights, exported by gal-train's
  exporter.  Measurements alternate (each precision, then torch, then again) so that load from other users of the
  machine hits all alike; the load average is recorded with each row, and so are the CPU's model and vector
  extensions.  Lower precisions come with their parity figures: those gal-embed checked (first 256 cutouts) and the
  benchmark's own over the whole output against the fp32 output (cosine min; kNN overlap@10 over the first 2,048).
  The cutouts are gal-sim mocks (5 bands; --mocks blobs: the Gaussian blobs of earlier rows, whose kNN overlap is
  decided by pixel noise), or with --data a gz1-sdss folder (labels.csv + images/) its real gri images packed with
  gal-pack and read as parts until --n is reached.
  Start-up: gal-embed on a one-cutout table (imports, model load, one batch, write, exit): an upper bound of the
  time to the first batch.

GPU (when ONNX Runtime's CUDA provider and a GPU are usable; --gpu-arch, default Hayat et al.'s resnet50-hayat at
64x64): ONNX Runtime CUDA fp32 and fp16 with and without I/O binding on preprocessed batches, and gal-embed file to
file with --precision fp16; the goal is gal-embed at >= 90% of the fp16 I/O-binding rate measured in the same run.

    python benchmarks/bench_embed.py                       # resnet18 at 64x64, 10,000 gal-sim cutouts
    python benchmarks/bench_embed.py --data DATA/gz1-sdss --n 10000
    python benchmarks/bench_embed.py --arch resnet50-hayat --n 128 --repeats 2 --precisions fp32
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
from _record import record  # noqa: E402

BANDS = ["u", "g", "r", "i", "z"]


def galaxy_cutouts(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Gaussian galaxies over two decades of flux on sky noise, float32 (n, 5, size, size)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size].astype(np.float32) - (size - 1) / 2
    out = np.empty((n, len(BANDS), size, size), np.float32)
    colours = np.array([0.3, 1.0, 1.6, 2.0, 2.3], np.float32)[:, None, None]
    for i in range(n):
        radius = rng.uniform(1.5, 8)
        blob = np.exp(-0.5 * (x ** 2 + y ** 2) / radius ** 2) * 10 ** rng.uniform(0, 2)
        out[i] = colours * blob + rng.normal(0, 0.05, (len(BANDS), size, size))
    return out


def write_cutouts(path: str, images: np.ndarray, bands=BANDS) -> None:
    import pyarrow as pa

    from galtools.io import open_output, tensor_column

    table = pa.table({"object_id": pa.array(np.arange(len(images), dtype=np.int64)), "image": tensor_column(images)})
    with open_output(path, overwrite=True, metadata={"galtools.bands": ",".join(bands)}, tool="bench_embed") as out:
        out.write(table)


def export_model(arch: str, size: int, sample: np.ndarray, path: str, bands=BANDS):
    """A random-weight encoder exported through gal-train's exporter (the real encoder.onnx contract)."""
    import torch

    from galtools.models import build_encoder
    from galtools.preprocess import Preprocess
    from galtools.train.export import encoder_metadata, export_encoder

    torch.manual_seed(0)
    backbone = build_encoder(arch, len(bands)).eval()
    preprocess = Preprocess.fit(sample, list(bands))
    metadata = encoder_metadata(list(bands), size, preprocess.to_json(), backbone.num_features, arch, "{}", "")
    export_encoder(backbone, path, metadata, size, overwrite=True)
    return backbone, preprocess


def run_gal_embed(cutouts: str, model: str, out: str, extra=(), env=None) -> tuple[float, float, float, str]:
    """(wall seconds of the whole process, its CPU seconds, the images/s gal-embed reports for its read-infer-write
    loop, its stderr)."""
    command = [sys.executable, "-m", "galtools.cli.embed", cutouts, "--model", model, "-o", out, "--overwrite",
               *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})))
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    err = result.stderr.decode()
    if result.returncode != 0:
        raise SystemExit(f"gal-embed failed: {err}")
    found = re.search(r"\(([\d,]+) images/s", err)
    return wall, cpu, float(found.group(1).replace(",", "")) if found else float("nan"), err


def torch_eager(backbone, preprocess, images: np.ndarray, size: int, batch: int) -> float:
    """Seconds for the plain torch loop: crop, preprocess, forward, batch after batch."""
    import torch

    top = (images.shape[-1] - size) // 2
    start = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, len(images), batch):
            x = torch.from_numpy(images[lo:lo + batch, :, top:top + size, top:top + size])
            backbone(preprocess.apply_torch(x)).numpy()
    return time.perf_counter() - start


def cpu_text() -> str:
    from galtools.embed.precision import cpu_description

    cpu = cpu_description()
    return f"{cpu['model']} ({', '.join(cpu['flags']) or 'no vector extensions listed'})"


def real_images(data: str, size: int, folder: str) -> tuple[np.ndarray, list]:
    """The gz1-sdss gri composites, packed by gal-pack to (size + 8)^2 cutouts."""
    from galtools.io import images_of, open_table

    packed = os.path.join(folder, "real.parquet")
    command = [sys.executable, "-m", "galtools.cli.pack", os.path.join(data, "labels.csv"), "--crop", "212",
               "--resize", str(size + 8), "--bands", "i,r,g", "-o", packed, "--overwrite", "-q"]
    result = subprocess.run(command, capture_output=True, env=dict(os.environ, PYTHONPATH=ROOT))
    if result.returncode != 0:
        raise SystemExit(f"gal-pack failed: {result.stderr.decode()}")
    with open_table(packed) as table:
        return np.ascontiguousarray(images_of(table.read_all())), list(table.bands)


def cutout_input(args, folder: str):
    """(the path gal-embed reads, the same images in memory for torch, their bands, a description)."""
    if args.data:
        distinct, bands = real_images(args.data, args.size, folder)
        parts = os.path.join(folder, "parts")
        os.makedirs(parts, exist_ok=True)
        write_cutouts(os.path.join(parts, "part-000.parquet"), distinct, bands)
        copies = max(1, -(-args.n // len(distinct)))
        for k in range(1, copies):
            os.link(os.path.join(parts, "part-000.parquet"), os.path.join(parts, f"part-{k:03d}.parquet"))
        images = np.concatenate([distinct] * copies)
        return parts, images, bands, (f"{len(images):,} real gz1-sdss cutouts ({len(distinct):,} distinct, read "
                                      f"{copies} times as Parquet parts) {len(bands)}x{args.size + 8}^2")
    path = os.path.join(folder, "cutouts.fits")
    if args.mocks == "blobs":
        images = galaxy_cutouts(args.n, args.size + 8)
        write_cutouts(path, images)
        return path, images, BANDS, f"{args.n:,} synthetic FITS cutouts (Gaussian blobs) 5x{args.size + 8}^2"
    return path, *sim_images(args.n, args.size + 8, path), f"{args.n:,} gal-sim FITS cutouts 5x{args.size + 8}^2"


def sim_images(n: int, size: int, path: str) -> tuple[np.ndarray, list]:
    """gal-sim mocks (bulge + disk, PSF, sky noise, neighbors): galaxies whose nearest neighbors mean something,
    which a lower precision's kNN overlap needs (Gaussian blobs differ by two numbers and their noise)."""
    from galtools.embed import cpu_allocation
    from galtools.io import images_of, open_table

    command = [sys.executable, "-m", "galtools.cli.sim", "-n", str(n), "--size", str(size), "--seed", "0", "-j",
               str(cpu_allocation()), "-q", "-o", path, "--overwrite"]
    result = subprocess.run(command, capture_output=True, env=dict(os.environ, PYTHONPATH=ROOT))
    if result.returncode != 0:
        raise SystemExit(f"gal-sim failed: {result.stderr.decode()}")
    with open_table(path) as table:
        return np.ascontiguousarray(images_of(table.read_all())), list(table.bands)


def parity_of_outputs(reference: str, candidate: str) -> str:
    """The benchmark's own parity figures: cosine min over every row, kNN overlap@10 over the first 2,048."""
    from galtools.embed.precision import parity
    from galtools.io import open_table, vectors_of

    with open_table(reference) as a, open_table(candidate) as b:
        x, y = vectors_of(a.read_all()), vectors_of(b.read_all())
    cosine = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    head = parity("", x[:2048], y[:2048])
    return f"cosine min {cosine.min():.4f} over {len(x):,}, kNN overlap@10 {head.overlap:.3f} over {head.rows:,}"


def bench_cpu(args, folder: str) -> None:
    import torch

    from galtools.embed import cpu_allocation
    from galtools.io import open_table

    threads = cpu_allocation()
    torch.set_num_threads(threads)
    cutouts, images, bands, described = cutout_input(args, folder)
    model = os.path.join(folder, "encoder.onnx")
    backbone, preprocess = export_model(args.arch, args.size, images[:64, :, 4:-4, 4:-4], model, bands)
    env = {"GALTOOLS_CACHE_DIR": os.path.join(folder, "cache")}
    precisions = args.precisions.split(",")
    outputs = {p: os.path.join(folder, f"emb-{p}.parquet") for p in precisions}
    load_before = os.getloadavg()[0]

    # warm-up: imports, page cache; conversions and auto's choice made and cached (timed apart, on the first part
    # when the input is parts: the same first cutouts calibrate and check)
    warm = os.path.join(cutouts, "part-000.parquet") if os.path.isdir(cutouts) else cutouts
    first = {}
    for precision in precisions:
        wall, _, _, _ = run_gal_embed(warm, model, outputs[precision],
                                      ["-b", str(args.batch), "--precision", precision], env)
        first[precision] = wall
    torch_eager(backbone, preprocess, images[: args.batch], args.size, args.batch)
    walls, cpus, loops = ({p: [] for p in precisions} for _ in range(3))
    theirs = []
    for _ in range(args.repeats):
        for precision in precisions:
            wall, cpu, rate, _ = run_gal_embed(cutouts, model, outputs[precision],
                                               ["-b", str(args.batch), "--precision", precision], env)
            walls[precision].append(wall)
            cpus[precision].append(cpu)
            loops[precision].append(rate)
        theirs.append(torch_eager(backbone, preprocess, images, args.size, args.batch))
    n = len(images)
    torch_rate = n / statistics.median(theirs)
    load = f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    for precision in precisions:
        with open_table(outputs[precision]) as table:
            used = table.metadata.get("galtools.embed.precision", "?")
            checked = table.metadata.get("galtools.embed.parity")
        wall = statistics.median(walls[precision])
        rate = n / wall
        busy = statistics.median(c / w for c, w in zip(cpus[precision], walls[precision])) / threads
        notes = [f"first run {first[precision]:.1f} s on {'the first part' if warm != cutouts else 'the input'} "
                 "incl. conversion"] if precision != "fp32" else []
        if used != "fp32" or precision != "fp32":
            notes.append(f"ran {used}")
        if checked:
            figures = json.loads(checked)
            notes.append(f"gal-embed's parity check on {figures['rows']}: cosine min {figures['cosine_min']:.4f}, "
                         f"kNN overlap@10 {figures['overlap']:.3f}")
        if precision != "fp32" and "fp32" in outputs:
            notes.append("against the fp32 output: " + parity_of_outputs(outputs["fp32"], outputs[precision]))
        record(f"gal-embed CPU --precision {precision}, {args.arch} at {args.size}x{args.size}, {described} -> "
               f"Parquet, batch {args.batch}, {threads} threads; CPU {cpu_text()}; {load} (bench_embed.py)",
               f"{rate:.1f} images/s file to file incl. start-up (median of {args.repeats}; read-infer-write loop "
               f"{statistics.median(loops[precision]):.1f} images/s; process CPU {busy:.0%} of {threads} cores"
               + (f"; {'; '.join(notes)}" if notes else "") + ")",
               f"torch {torch.__version__} eager fp32, same model and images in memory: {torch_rate:.1f} images/s",
               f"{rate / torch_rate:.2f}x file to file, {statistics.median(loops[precision]) / torch_rate:.2f}x loop")
    bench_startup(args, folder, cutouts, model, env, threads)
    bench_stages(args, cutouts, model, env, threads,
                 lambda n: torch_eager(backbone, preprocess, images[:n], args.size, args.batch))


def bench_startup(args, folder: str, cutouts: str, model: str, env: dict, threads: int) -> None:
    """Seconds from the start of a gal-embed process to its first batch written (imports, sha256, session, one
    batch, write), as gal-embed -v reports it, on a one-cutout table with warm caches."""
    from galtools.io import images_of, open_table

    one = os.path.join(folder, "one.parquet")
    with open_table(cutouts) as table:
        write_cutouts(one, images_of(next(table.iter_batches(batch_size=1))), table.bands)
    out = os.path.join(folder, "one-emb.parquet")
    run_gal_embed(one, model, out, [], env)   # caches filled
    walls, cpus = [], []
    for _ in range(7):
        err = run_gal_embed(one, model, out, ["-v"], env)[3]
        found = re.search(r"first batch written ([\d.]+) s after the process started \(CPU ([\d.]+) s\)", err)
        walls.append(float(found.group(1)))
        cpus.append(float(found.group(2)))
    bare = statistics.median(run_python_pass() for _ in range(5))
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    record(f"gal-embed start-up to the first batch written, {args.arch} at {args.size}x{args.size}, fp32, one-cutout "
           f"table, caches warm, {threads} threads; CPU {cpu_text()}; load average {os.getloadavg()[0]:.1f} "
           "(bench_embed.py)",
           f"{wall * 1000:.0f} ms wall, {cpu * 1000:.0f} ms CPU (median of 7, from gal-embed -v)",
           f"python -c pass: {bare * 1000:.0f} ms", f"{wall / 0.5:.2f} of the 0.5 s goal ({cpu / 0.5:.2f} in CPU)")


def bench_stages(args, cutouts: str, model: str, env: dict, threads: int, torch_loop=None) -> None:
    """Where gal-embed's time goes: CPU ms per cutout of each stage run one after the other in one thread (reading,
    preparing, session.run at each precision, writing), on the first part or 2,048 cutouts. CPU time, not wall:
    other users of the machine inflate the wall clock, not this."""
    import pyarrow as pa

    from galtools.embed import EmbedSettings, load_encoder
    from galtools.embed.inputs import InputPlan, Preparer
    from galtools.io import images_of, open_output, open_table, vector_column

    source = os.path.join(cutouts, "part-000.parquet") if os.path.isdir(cutouts) else cutouts
    os.environ.update(env)
    load = time.process_time()
    encoder = load_encoder(model, EmbedSettings(device="cpu", batch_size=args.batch, threads=threads))
    load = time.process_time() - load
    timings = {"read": 0.0, "prepare": 0.0, "write": 0.0}
    prepared, ids = [], []
    with open_table(source) as table:
        plan = InputPlan.for_table(encoder.info, table.bands, table.require_images(), table.name, model)
        preparer = Preparer(plan)
        start = time.process_time()
        for batch in table.iter_batches(batch_size=args.batch):
            timings["read"] += time.process_time() - start
            start = time.process_time()
            prepared.append(preparer(images_of(batch))[0])
            ids.append(batch.column("object_id"))
            timings["prepare"] += time.process_time() - start
            if sum(len(p) for p in prepared) >= 2048:
                break
            start = time.process_time()
    n = sum(len(p) for p in prepared)
    runs = {}
    for precision in [p for p in args.precisions.split(",") if p in ("fp32", "int8", "bf16")]:
        if precision != "fp32":
            encoder = load_encoder(model, EmbedSettings(device="cpu", batch_size=args.batch, threads=threads,
                                                        precision=precision))
            encoder.pending.decide(np.concatenate(prepared)[:256], source)
        encoder.runner.run(prepared[0])
        start = time.process_time()
        embedded = [encoder.runner.run(p) for p in prepared]
        runs[precision] = (time.process_time() - start) / n * 1000
    out = os.path.join(os.path.dirname(model), "stages.parquet")
    with open_output(out, overwrite=True, metadata={}, tool="bench_embed") as sink:
        start = time.process_time()
        for column, vectors in zip(ids, embedded):
            sink.write(pa.RecordBatch.from_arrays([column, vector_column(vectors)], names=["object_id", "embedding"]))
        timings["write"] = time.process_time() - start
    per = {k: v / n * 1000 for k, v in timings.items()}
    if torch_loop is not None:   # torch eager's crop + preprocess + forward, same cutouts, same measure
        torch_loop(n)
        start = time.process_time()
        torch_loop(n)
        runs["torch eager fp32 (whole loop)"] = (time.process_time() - start) / n * 1000
    record(f"gal-embed stages, {args.arch} at {args.size}x{args.size}, {n:,} cutouts of {os.path.basename(source)}, "
           f"batch {args.batch}, {threads} threads; CPU {cpu_text()}; load average {os.getloadavg()[0]:.1f} "
           "(bench_embed.py)",
           "CPU ms per cutout: " + ", ".join(f"{k} {v:.3f}" for k, v in per.items()) + "; session.run "
           + ", ".join(f"{p} {v:.3f}" for p, v in runs.items())
           + f"; model load (sha256 + session) {load * 1000:.0f} ms",
           "session.run fp32", ", ".join(f"{p} {runs['fp32'] / v:.2f}x faster" for p, v in runs.items()
                                         if p != "fp32") or "-")


def run_python_pass() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], capture_output=True)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------------------------ GPU

def gpu_usable() -> bool:
    import onnxruntime as ort

    from galtools.embed.providers import cuda_device_count

    return "CUDAExecutionProvider" in ort.get_available_providers() and cuda_device_count()[0] > 0


def ort_rate(session, batches, io_binding: bool, repeats: int) -> float:
    """images/s of session runs over preprocessed host batches, outputs copied back to the host."""
    import onnxruntime as ort

    def once():
        for x in batches:
            if io_binding:
                binding = session.io_binding()
                binding.bind_ortvalue_input("image", ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
                binding.bind_output("embedding", "cuda", 0)
                session.run_with_iobinding(binding)
                binding.copy_outputs_to_cpu()
            else:
                session.run(["embedding"], {"image": x})

    once()   # warm-up: cuDNN algorithm search, arena growth
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return sum(len(x) for x in batches) / statistics.median(times)


def bench_gpu(args, folder: str) -> None:
    from galtools.embed import EmbedSettings, load_encoder

    size = 64
    images = galaxy_cutouts(args.gpu_n, size)
    model = os.path.join(folder, "encoder-gpu.onnx")
    _, preprocess = export_model(args.gpu_arch, size, images[:64], model)
    prepared = preprocess.apply_numpy(images)
    batches = [np.ascontiguousarray(prepared[lo:lo + args.gpu_batch])
               for lo in range(0, len(prepared) - args.gpu_batch + 1, args.gpu_batch)]
    rates, cosine = {}, None
    for precision in ("fp32", "fp16"):
        encoder = load_encoder(model, EmbedSettings(device="cuda", precision=precision, batch_size=args.gpu_batch,
                                                    cache_dir=os.path.join(folder, "cache")))
        rates[f"{precision}"] = ort_rate(encoder.session, batches, False, args.repeats)
        rates[f"{precision}+iobinding"] = ort_rate(encoder.session, batches, True, args.repeats)
        first = encoder.runner.run(encoder.runner.stage(batches[0]))
        if precision == "fp32":
            reference = first
        else:
            cosine = float(np.min((first * reference).sum(1) / np.linalg.norm(first, axis=1)
                                  / np.linalg.norm(reference, axis=1)))
        del encoder

    # gal-embed file to file: the same cutouts repeated as parts of one table (page cache, not disk, is read)
    parts = os.path.join(folder, "parts")
    os.makedirs(parts, exist_ok=True)
    write_cutouts(os.path.join(parts, "part-000.parquet"), images)
    for k in range(1, args.gpu_parts):
        os.link(os.path.join(parts, "part-000.parquet"), os.path.join(parts, f"part-{k:03d}.parquet"))
    total = args.gpu_n * args.gpu_parts
    out = os.path.join(folder, "emb-gpu.parquet")
    extra = ["--device", "cuda", "--precision", "fp16", "-b", str(args.gpu_batch)]
    run_gal_embed(parts, model, out, extra)      # warm-up and fp16 cache
    loops, walls = [], []
    for _ in range(args.repeats):
        wall, _, rate, _ = run_gal_embed(parts, model, out, extra)
        walls.append(wall)
        loops.append(rate)
    loop_rate = statistics.median(loops)
    reference = rates["fp16+iobinding"]
    summary = ", ".join(f"{k} {v:,.0f}" for k, v in rates.items())
    record(f"gal-embed GPU fp16, {args.gpu_arch} at 64x64, {total:,} Parquet cutouts -> Parquet, batch "
           f"{args.gpu_batch} (bench_embed.py)",
           f"{loop_rate:,.0f} images/s read-infer-write loop ({total / statistics.median(walls):,.0f} incl. "
           f"start-up; median of {args.repeats})",
           f"ONNX Runtime session alone, images/s: {summary}; fp16 cosine to fp32 {cosine:.6f}",
           f"{loop_rate / reference:.2f} of fp16+iobinding (goal >= 0.90)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18", help="galtools.models encoder for the CPU comparison")
    parser.add_argument("--size", type=int, default=64, help="the encoder's input size (cutouts are 8 px larger)")
    parser.add_argument("--n", type=int, default=10000, help="cutouts in the CPU comparison")
    parser.add_argument("--data", default=None, help="a gz1-sdss folder (labels.csv, images/): real cutouts")
    parser.add_argument("--mocks", choices=["gal-sim", "blobs"], default="gal-sim",
                        help="the cutouts without --data: gal-sim galaxies, or Gaussian blobs (the rows before "
                             "2026-12-02)")
    parser.add_argument("--precisions", default="fp32,int8,auto", help="gal-embed --precision values to time")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu", choices=["auto", "yes", "no"], default="auto")
    parser.add_argument("--gpu-arch", default="resnet50-hayat")
    parser.add_argument("--gpu-n", type=int, default=16384, help="distinct cutouts of the GPU run")
    parser.add_argument("--gpu-parts", type=int, default=8, help="times the GPU run reads them (as parts)")
    parser.add_argument("--gpu-batch", type=int, default=512)
    parser.add_argument("--skip-cpu", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as folder:
        if not args.skip_cpu:
            bench_cpu(args, folder)
        if args.gpu == "yes" or (args.gpu == "auto" and gpu_usable()):
            bench_gpu(args, folder)
        elif args.gpu == "auto":
            print("no usable GPU: GPU part skipped")


if __name__ == "__main__":
    main()
