"""gal-sim speed: 64x64 ugriz cutouts per second (goal: >= 150/s on 2 cores), with baselines in the same run:

- the same command with -j 1 (what the second core buys);
- the plain GalSim path, Convolve(bulge + disk, PSF).drawImage() per band and source (render_scene's
  method="galsim"), on the same scenes in one process, against the k-space fast path in one process.

End to end means a real `gal-sim -n N -o file.parquet` process: start-up, K-correction tables, scene draws,
rendering, noise, Arrow conversion and the Parquet write.

    python benchmarks/bench_sim.py [-n 3000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from _record import median_seconds, record  # noqa: E402


def command_seconds(count: int, jobs: int, repeats: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "sim.parquet")
        argv = [sys.executable, "-m", "galtools.cli.sim", "-n", str(count), "-j", str(jobs), "--size", "64",
                "--anomaly-fraction", "0.05", "-q", "-o", out, "--overwrite"]

        def run():
            subprocess.run(argv, check=True, cwd=ROOT)

        return median_seconds(run, repeats)


def per_object_seconds(scenes, method: str, repeats: int) -> float:
    from galtools.sim.render import render_scene

    def run():
        for scene in scenes:
            render_scene(scene, 64, 0.396, noise=False, method=method)

    run()  # warm-up: GalSim's profile tables
    return median_seconds(run, repeats) / len(scenes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3000, help="cutouts per gal-sim run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    two = command_seconds(args.n, 2, args.repeats)
    one = command_seconds(args.n, 1, args.repeats)
    load_after = os.getloadavg()[0]
    load = f"load avg {load_before:.1f}->{load_after:.1f}"
    record(f"gal-sim -n {args.n} -j 2 --size 64 -o x.parquet (end to end)",
           f"{args.n / two:.0f} cutouts/s ({two:.1f} s, median of {args.repeats}; {load})",
           f"-j 1: {args.n / one:.0f} cutouts/s ({one:.1f} s)", f"{one / two:.2f}x")

    from galtools.sim import SimConfig, object_scene

    config = SimConfig(seed=0, size=64, anomaly_fraction=0.0)
    scenes = [object_scene(config, k)[0] for k in range(200)]
    fast = per_object_seconds(scenes, "kspace", args.repeats)
    plain = per_object_seconds(scenes, "galsim", args.repeats)
    record("gal-sim rendering, 200 galaxies 5x64x64, one process, k-space fast path",
           f"{1 / fast:.0f} cutouts/s ({fast * 1e3:.2f} ms each)",
           f"GalSim Convolve().drawImage() per band: {1 / plain:.0f} cutouts/s ({plain * 1e3:.2f} ms)",
           f"{plain / fast:.2f}x")


if __name__ == "__main__":
    main()
