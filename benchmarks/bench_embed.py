"""gal-embed throughput (images/s) against a plain torch eager loop over the same model and data, same run.

CPU (always):
  gal-embed, file to file (a real process: FITS cutouts 5x72x72 in, Parquet embeddings out, start-up and model
  load included), against torch eager on the same images already in memory (centre crop, Preprocess.apply_torch,
  forward_features in batches under inference_mode, torch.set_num_threads = the CPU allocation).  Both get the
  same encoder: a galtools.models encoder with random weights, exported by gal-train's exporter.
  Measurements alternate (ours, theirs, ours, ...) so that load from other users of the machine hits both alike.

GPU (when ONNX Runtime's CUDA provider and a GPU are usable; --gpu-arch, default the paper's resnet50-hayat at
64x64): ONNX Runtime CUDA fp32 and fp16 with and without I/O binding on preprocessed batches, and gal-embed file to
file with --precision fp16; the goal is gal-embed at >= 90% of the fp16 I/O-binding rate measured in the same run.

    python benchmarks/bench_embed.py                       # resnet18 at 64x64, 1024 cutouts (a few minutes, 2 cores)
    python benchmarks/bench_embed.py --arch resnet50-hayat --n 128 --repeats 2
"""
from __future__ import annotations

import argparse
import os
import re
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


def write_cutouts(path: str, images: np.ndarray) -> None:
    import pyarrow as pa

    from galtools.io import open_output, tensor_column

    table = pa.table({"object_id": pa.array(np.arange(len(images), dtype=np.int64)), "image": tensor_column(images)})
    with open_output(path, overwrite=True, metadata={"galtools.bands": ",".join(BANDS)}, tool="bench_embed") as out:
        out.write(table)


def export_model(arch: str, size: int, sample: np.ndarray, path: str):
    """A random-weight encoder exported through gal-train's exporter (the real encoder.onnx contract)."""
    import torch

    from galtools.models import build_encoder
    from galtools.preprocess import Preprocess
    from galtools.train.export import encoder_metadata, export_encoder

    torch.manual_seed(0)
    backbone = build_encoder(arch, len(BANDS)).eval()
    preprocess = Preprocess.fit(sample, BANDS)
    metadata = encoder_metadata(BANDS, size, preprocess.to_json(), backbone.num_features, arch, "{}", "")
    export_encoder(backbone, path, metadata, size, overwrite=True)
    return backbone, preprocess


def run_gal_embed(cutouts: str, model: str, out: str, extra=()) -> tuple[float, float]:
    """(wall seconds of the whole process, images/s gal-embed reports for its read-infer-write loop)."""
    command = [sys.executable, "-m", "galtools.cli.embed", cutouts, "--model", model, "-o", out, "--overwrite",
               *extra]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, env=dict(os.environ, PYTHONPATH=ROOT))
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"gal-embed failed: {result.stderr.decode()}")
    found = re.search(r"\(([\d,]+) images/s", result.stderr.decode())
    return wall, float(found.group(1).replace(",", "")) if found else float("nan")


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


def bench_cpu(args, folder: str) -> None:
    import torch

    from galtools.embed import cpu_allocation

    threads = cpu_allocation()
    torch.set_num_threads(threads)
    images = galaxy_cutouts(args.n, args.size + 8)
    cutouts = os.path.join(folder, "cutouts.fits")
    write_cutouts(cutouts, images)
    model = os.path.join(folder, "encoder.onnx")
    backbone, preprocess = export_model(args.arch, args.size, images[:64, :, 4:-4, 4:-4], model)
    out = os.path.join(folder, "emb.parquet")

    run_gal_embed(cutouts, model, out, ["-b", str(args.batch)])          # warm-up: page cache, imports
    torch_eager(backbone, preprocess, images[: args.batch], args.size, args.batch)
    ours_wall, ours_loop, theirs = [], [], []
    for _ in range(args.repeats):
        wall, rate = run_gal_embed(cutouts, model, out, ["-b", str(args.batch)])
        ours_wall.append(wall)
        ours_loop.append(rate)
        theirs.append(torch_eager(backbone, preprocess, images, args.size, args.batch))
    ours_rate = args.n / statistics.median(ours_wall)
    torch_rate = args.n / statistics.median(theirs)
    record(f"gal-embed CPU fp32, {args.arch} at {args.size}x{args.size}, {args.n} FITS cutouts 5x{args.size + 8}^2 "
           f"-> Parquet, batch {args.batch}, {threads} threads (bench_embed.py)",
           f"{ours_rate:.1f} images/s file to file incl. start-up (median of {args.repeats}; "
           f"read-infer-write loop {statistics.median(ours_loop):.1f} images/s)",
           f"torch {torch.__version__} eager, same model and images in memory: {torch_rate:.1f} images/s "
           f"(load average {os.getloadavg()[0]:.1f} at the end: other users of the machine)",
           f"{ours_rate / torch_rate:.2f}x file to file, {statistics.median(ours_loop) / torch_rate:.2f}x loop")


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
        wall, rate = run_gal_embed(parts, model, out, extra)
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
    parser.add_argument("--n", type=int, default=1024, help="cutouts in the CPU comparison")
    parser.add_argument("--batch", type=int, default=64)
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
