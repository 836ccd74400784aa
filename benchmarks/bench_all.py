"""`gal-knn --all` through a compressed index, by inverted list (galtools.search.batch) against query blocks.

    python benchmarks/bench_all.py                       # 200,000 vectors, one shard of 10 (a few minutes)
    python benchmarks/bench_all.py --n 1000000 --kinds ivfsq8

The vectors are bench_scale.py's (a Gaussian mixture fitted to gal-embed's embeddings of gal-sim; cached in
benchmarks/.work-scale/). Per kind, one `gal-knn index` of the table, then the rows of `--shard 0/S` as queries,
each arm its own process with OMP_NUM_THREADS=1, peak RSS its own (/usr/bin/time):
  gal-knn EMB --index X --all --shard 0/S -o OUT      (by inverted list, finished batches kept for a rerun)
  the same rows searched 2,048 at a time through ScaleIndex.search (what --all did before: the baseline; the
  table opened as gal-knn opens it, no output written),
and whether the two give the same neighbor ids (they should: same codes, same scanner, same re-scoring).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_scale import ROOT, WORK, load_text, run, sample_table  # noqa: E402

BLOCKS = """
import sys, time, numpy as np
from galtools.search.queries import load_for_index
base, index = load_for_index(sys.argv[5], sys.argv[1]); start, stop = int(sys.argv[2]), int(sys.argv[3])
found = []
began = time.perf_counter()
for first in range(start, stop, 2048):
    rows = np.arange(first, min(stop, first + 2048))
    found.append(index.search(index.vectors(rows), 10, exclude=rows, normalized=True).indices)
seconds = time.perf_counter() - began
np.save(sys.argv[4], np.concatenate(found))
print(seconds)
"""


def run_code(code: str, args: list[str]) -> tuple[float, float, str]:
    """Like bench_scale.run, for a script: (wall seconds, its own peak RSS in MiB, its stdout)."""
    import subprocess
    import tempfile

    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    started = time.perf_counter()
    with tempfile.NamedTemporaryFile("r") as peak:
        done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", peak.name, sys.executable, "-c", code, *args],
                              capture_output=True, env=env)
        if done.returncode != 0:
            raise SystemExit(done.stderr.decode())
        return time.perf_counter() - started, int(peak.read().split()[-1]) / 1024.0, done.stdout.decode()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--kinds", default="ivfsq8,ivfpq")
    parser.add_argument("--nlist", type=int, default=256)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    table = sample_table(args.n)
    stop = args.n // args.shards
    rows = []
    for kind in args.kinds.split(","):
        index = os.path.join(WORK, f"all-{kind}-{args.n}.faiss")
        if not os.path.exists(index + ".json"):
            run(["galtools.cli.knn", "index", table, "--kind", kind, "--nlist", str(args.nlist), "-o", index,
                 "--overwrite"])
        out = os.path.join(WORK, f"all-{kind}.parquet")
        load_before = load_text()
        wall, rss, _ = run(["galtools.cli.knn", table, "--index", index, "--all", "-k", "10", "--shard",
                            f"0/{args.shards}", "-o", out, "--overwrite"])
        blocks_out = os.path.join(WORK, f"all-{kind}-blocks.npy")
        base_wall, base_rss, printed = run_code(BLOCKS, [index, "0", str(stop), blocks_out, table])
        import numpy as np
        import pyarrow.parquet as pq

        got = pq.read_table(out, columns=["query_id", "rank", "neighbor_id"]).sort_by([("query_id", "ascending"),
                                                                                         ("rank", "ascending")])
        want = np.load(blocks_out)
        same = np.array_equal(got.column("neighbor_id").to_numpy().reshape(-1, 10), want)   # ids are row numbers
        measured = {"kind": kind, "queries": stop, "wall": wall, "rss": rss, "rate": stop / wall,
                    "base_wall": base_wall, "base_search": float(printed.split()[-1]), "base_rss": base_rss,
                    "base_rate": stop / base_wall, "same": bool(same), "load": f"{load_before} -> {load_text()}"}
        print(json.dumps(measured), flush=True)
        rows.append(measured)
    if not args.no_record:
        from _record import machine, record  # noqa: F401

        for m in rows:
            record(f"gal-knn --all through {m['kind']} by inverted list (bench_all.py): N={args.n:,} x 128 "
                   f"(bench_scale's mixture), nlist {args.nlist}, the {m['queries']:,} rows of --shard "
                   f"0/{args.shards} as queries, k=10, default --buffer 256 MiB, 1 thread; {m['load']}",
                   f"{m['rate']:.0f} rows/s ({m['wall']:.1f} s wall incl. start-up), peak RSS {m['rss']:.0f} MiB; "
                   f"neighbor ids {'identical to' if m['same'] else 'DIFFERENT from'} the baseline's",
                   f"ScaleIndex.search 2,048 rows at a time (the previous --all): {m['base_rate']:.0f} rows/s "
                   f"({m['base_wall']:.1f} s wall, {m['base_search']:.1f} s searching), peak RSS "
                   f"{m['base_rss']:.0f} MiB", f"{m['rate'] / m['base_rate']:.2f}x rows/s")


if __name__ == "__main__":
    main()
