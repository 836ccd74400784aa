"""gal-train throughput (images/s): the full pipeline against a bare training step of the same model, same run.

full pipeline: galtools.train.train on a FITS cutout table (memory-mapped reads by the loader threads, the
    augmentation chain on the training device, preprocessing, MoCo v2 step, metrics), rate taken from
    RUN/metrics.jsonl (median over logging windows after the first, which holds start-up and compilation);
bare step: the same MoCo v2 model, optimizer, precision and memory format on synthetic preprocessed views already
    on the device: forward of both encoders, loss, backward, SGD step, queue update, nothing else.

CPU (default): the tiny encoder, batch 64, 32x32 views of 40x40 cutouts.
GPU (--paper, when CUDA is usable): the paper's configuration, resnet50-hayat, batch 512, bf16 autocast,
    channels_last, 64x64 views of 78x78 cutouts (jitter up to 7 pixels, as in the paper); the goal is full
    pipeline >= 90% of the bare step (reference on one H200: bare step 2,950 images/s eager, 4,500 compiled).
    Add --compile for both.

    python benchmarks/bench_train.py
    python benchmarks/bench_train.py --paper [--compile]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
from _record import record  # noqa: E402
from bench_embed import galaxy_cutouts, write_cutouts  # noqa: E402

CHAIN = "rotate,jitter:max_shift={shift},noise,redden:ebv_max=0.5,psf:fwhm_in=1.4"


def pipeline_rate(config) -> tuple[float, list[float]]:
    from galtools.train import train

    train(config)
    records = [json.loads(line) for line in open(os.path.join(config.out, "metrics.jsonl"))]
    rates = [r["images_per_s"] for r in records if "images_per_s" in r][1:]   # drop the window with start-up
    return statistics.median(rates), rates


def bare_step_rate(config, bands: int, windows: int, steps_per_window: int) -> tuple[float, list[float]]:
    """Median images/s over ``windows`` windows (after one warm-up window), and the windows' rates: the same model
    and step as gal-train, fed with synthetic preprocessed views already on the device."""
    import torch

    from galtools.models import build_encoder
    from galtools.ssl import MoCo

    device = torch.device("cuda" if config.device.startswith("cuda") else "cpu")
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True   # as gal-train sets it: both sides of the comparison autotuned
    torch.manual_seed(0)
    splits = 8 if config.batch_size % 8 == 0 else 1
    model = MoCo(build_encoder(config.arch, bands), config.dim, config.queue_size, config.key_momentum,
                 config.temperature, splits).to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)
    if config.compile:
        model.encoder_q.compile()
        model.encoder_k.compile()
    optimizer = torch.optim.SGD(model.encoder_q.parameters(), lr=config.scaled_lr, momentum=0.9, weight_decay=1e-4)
    shape = (config.batch_size, bands, config.crop, config.crop)
    views = [torch.randn(shape, device=device) for _ in range(2)]
    if cuda:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)

    def step(i):
        with autocast:
            loss, _ = model(views[0], views[1], i)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    rates = []
    for window in range(windows + 1):           # the first window warms up (and compiles)
        start = time.perf_counter()
        for i in range(steps_per_window):
            loss = step(window * steps_per_window + i)
        loss.item()                             # wait for the device, as the pipeline's logging does
        elapsed = time.perf_counter() - start
        if window:
            rates.append(steps_per_window * config.batch_size / elapsed)
    return statistics.median(rates), rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paper", action="store_true", help="resnet50-hayat, batch 512, bf16 on the GPU")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--windows", type=int, default=6, help="measured logging windows")
    parser.add_argument("--window-steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1: the tiny encoder's small convolutions gain little "
                             "from more, and lose much when other work shares the cores)")
    args = parser.parse_args()

    import torch

    from galtools.train import TrainConfig

    if args.paper:
        if not torch.cuda.is_available():
            sys.exit("bench_train --paper needs a CUDA GPU")
        arch, batch, size, crop, device, window = "resnet50-hayat", 512, 78, 64, "cuda", args.window_steps or 10
        queue = 65536
    else:
        arch, batch, size, crop, device, window = "tiny", 64, 40, 32, "cpu", args.window_steps or 5
        queue = 4096
        torch.set_num_threads(args.threads)
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
    precision = "bf16 autocast, channels_last" if device == "cuda" else f"fp32, {torch.get_num_threads()} threads"
    what = (f"gal-train full pipeline ({arch}, MoCo v2, batch {batch}, {crop}x{crop} views of {size}x{size} FITS "
            f"cutouts, chain {config.ops}, {device} {precision}{', compiled' if args.compile else ''}; "
            f"load avg {load:.1f}) (bench_train.py)")
    record(what, f"{full:.1f} images/s (median of {len(full_windows)} windows of {window} steps: "
                 f"{', '.join(f'{r:.0f}' for r in full_windows)})",
           f"bare step, same model on synthetic views on the device: {bare:.1f} images/s "
           f"({', '.join(f'{r:.0f}' for r in bare_windows)})", f"{full / bare:.2f}")


if __name__ == "__main__":
    main()
