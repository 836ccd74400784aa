"""Streaming I/O: peak memory of gal-info --pixels and a gal-pack conversion on a 2 GB FITS cube, against loading
the cube whole with fitsio (the baseline, same run); and start-up time of `--help` against a bare interpreter.

    python benchmarks/bench_io.py [--gigabytes 2]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _record import median_seconds, record  # noqa: E402


def peak_rss_mb(command: list[str]) -> float:
    script = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", script, *command], capture_output=True, check=True)
    return float(out.stdout.decode())


def make_cube(path: str, rows: int) -> None:
    import fitsio

    block = np.random.default_rng(0).normal(size=(2000, 5, 32, 32)).astype(np.float32)
    with fitsio.FITS(path, "rw", clobber=True) as fits:
        fits.write(None, header=[{"name": "BANDS", "value": "u,g,r,i,z"}])
        fits.create_image_hdu(dims=[rows, 5, 32, 32], dtype="f4", extname="CUTOUTS")
        for lo in range(0, rows, 2000):
            fits[-1].write(block[: min(2000, rows - lo)], start=[lo, 0, 0, 0])
        fits.write({"object_id": np.arange(rows, dtype=np.int64)}, extname="CATALOG")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gigabytes", type=float, default=2.0)
    args = parser.parse_args()
    rows = int(args.gigabytes * 1e9 / (5 * 32 * 32 * 4))
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as folder:
        cube = os.path.join(folder, "big.fits")
        make_cube(cube, rows)
        size_gb = os.path.getsize(cube) / 1e9
        whole = peak_rss_mb([sys.executable, "-c", f"import fitsio; fitsio.read({cube!r}, ext='CUTOUTS').sum()"])
        info = peak_rss_mb([sys.executable, "-m", "galtools.cli.info", "--pixels", cube])
        record(f"gal-info --pixels, {size_gb:.2f} GB FITS cube ({rows} x 5x32x32)", f"peak RSS {info:.0f} MB",
               f"fitsio.read whole cube: {whole:.0f} MB", f"{info / whole:.3f}")
        pack = peak_rss_mb([sys.executable, "-m", "galtools.cli.pack", "-q", cube, "-o", os.path.join(folder, "o.parquet")])
        record(f"gal-pack FITS -> Parquet, {size_gb:.2f} GB", f"peak RSS {pack:.0f} MB",
               f"fitsio.read whole cube: {whole:.0f} MB", f"{pack / whole:.3f}")
    bare = median_seconds(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True))
    for tool in ("info", "pack"):
        help_time = median_seconds(lambda: subprocess.run([sys.executable, "-m", f"galtools.cli.{tool}", "--help"],
                                                          check=True, capture_output=True))
        record(f"gal-{tool} --help start-up", f"{help_time * 1000:.0f} ms", f"python -c pass: {bare * 1000:.0f} ms",
               f"{help_time / bare:.2f}")


if __name__ == "__main__":
    main()
