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
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from _record import median_seconds, record  # noqa: E402


def command_seconds(count: int, jobs: int, repeats: int, output: str) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds of the process and its workers) of one gal-sim run.
    CPU time is what the run costs even when other jobs share the cores."""
    walls, cpus = [], []
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, output)
        argv = [sys.executable, "-m", "galtools.cli.sim", "-n", str(count), "-j", str(jobs), "--size", "64",
                "--anomaly-fraction", "0.05", "-q", "-o", out, "--overwrite"]
        for _ in range(repeats):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(argv, check=True, cwd=ROOT)
            walls.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


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

    for output in ("x.arrow", "x.parquet"):
        load_before = os.getloadavg()[0]
        two, two_cpu = command_seconds(args.n, 2, args.repeats, output)
        one, one_cpu = command_seconds(args.n, 1, args.repeats, output)
        load = f"load avg {load_before:.1f}->{os.getloadavg()[0]:.1f} (other jobs on the cores)"
        record(f"gal-sim -n {args.n} -j 2 --size 64 -o {output} (end to end)",
               f"{args.n / two:.0f} cutouts/s ({two:.1f} s, median of {args.repeats}; "
               f"CPU {two_cpu / args.n * 1e3:.2f} ms/cutout; {load})",
               f"-j 1: {args.n / one:.0f} cutouts/s ({one:.1f} s; CPU {one_cpu / args.n * 1e3:.2f} ms/cutout)",
               f"{one / two:.2f}x")

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
