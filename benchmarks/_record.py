"""Append benchmark rows to benchmarks/RESULTS.md: date, machine, command, median, baseline, ratio."""
from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
HEADER = ("| date | machine | benchmark | result | baseline (same run) | ratio |\n"
          "|---|---|---|---|---|---|\n")


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = ", " + torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"{platform.machine()} {cores} cores{gpu}, Python {platform.python_version()}"


def median_seconds(func, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def record(benchmark: str, result: str, baseline: str, ratio: str) -> None:
    new = not os.path.exists(RESULTS)
    with open(RESULTS, "a") as handle:
        if new:
            handle.write("# Benchmark results\n\nAppended by `benchmarks/bench_*.py` (`make bench`).\n\n" + HEADER)
        handle.write(f"| {dt.date.today().isoformat()} | {machine()} | {benchmark} | {result} | {baseline} | {ratio} |\n")
    print(f"{benchmark}: {result}; baseline {baseline}; ratio {ratio}")
