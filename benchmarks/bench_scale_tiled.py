"""The query path of a compressed index at 10^8 rows without building one: latency and RSS, not recall.

    python benchmarks/bench_scale.py --n 10000000 --kinds ivfpq --nlist 4096 --shards 4   # first: the 10^7 index
    python benchmarks/bench_scale_tiled.py OUT_FOLDER --copies 10 --nprobe 16,32,64 --refine 200,50

The 10^7 ivfpq index's inverted lists are tiled COPIES times (row ids shifted by c x its rows) into one FAISS on-disk
list file, and its refine records likewise into a COPIES x 10^7-record refine file (26 GB at 10 copies: larger than
this machine's page cache, so re-scoring reads candidates from disk as at real scale). Then ScaleIndex.search, the
library call behind `gal-knn --query`, is timed on one thread, 100 fresh queries per setting, with the RSS. The
neighbors are copies of each other, so recall means nothing here: it is measured on the 10^7 index. OUT_FOLDER is
removed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
WORK = os.path.join(HERE, ".work-scale")


def tile(out: str, copies: int, rows: int) -> str:
    import faiss
    import numpy as np

    from galtools.search.scale import refine_dtype

    source = os.path.join(WORK, f"ivfpq-{rows}.faiss")
    meta = json.load(open(source + ".json"))
    index = faiss.read_index(source, faiss.IO_FLAG_ONDISK_SAME_DIR)
    ivf = faiss.extract_index_ivf(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    path = os.path.join(out, "tiled.faiss")
    ondisk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, path + ".ivfdata")
    for number in range(ivf.nlist):
        size = lists.list_size(number)
        if size:
            codes = faiss.rev_swig_ptr(lists.get_codes(number), size * ivf.code_size).copy()
            ids = faiss.rev_swig_ptr(lists.get_ids(number), size).copy()
            all_ids = np.concatenate([ids + c * rows for c in range(copies)])
            ondisk.add_entries(number, size * copies, faiss.swig_ptr(all_ids), faiss.swig_ptr(np.tile(codes, copies)))
    ivf.replace_invlists(ondisk, False)
    ivf.ntotal = index.ntotal = rows * copies
    ondisk.this.disown()
    faiss.write_index(index, path)
    records = np.load(os.path.join(WORK, meta["refine_file"]), mmap_mode="r")
    tiled = np.lib.format.open_memmap(path + ".refine.npy", mode="w+", dtype=refine_dtype(meta["dim"]),
                                      shape=(rows * copies,))
    for c in range(copies):
        for start in range(0, rows, 1 << 20):
            stop = min(rows, start + (1 << 20))
            tiled[c * rows + start: c * rows + stop] = records[start:stop]
        tiled.flush()
    del tiled
    meta.update(count=rows * copies, ondisk="tiled.faiss.ivfdata")
    meta.pop("refine_file", None)
    json.dump(meta, open(path + ".json", "w"))
    return path


def measure(path: str, rows_per_copy: int, nprobes: list[int], refines: list[int]) -> None:
    import faiss
    import numpy as np

    from galtools.search.scale import ScaleIndex, rss_mib

    faiss.omp_set_num_threads(1)
    index = ScaleIndex(path, json.load(open(path + ".json")))
    rows = np.random.default_rng(5).choice(index.meta["count"], 100 * len(nprobes) * len(refines), replace=False)
    queries = index.vectors(rows % rows_per_copy)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for nprobe in nprobes:
        for refine in refines:
            times = []
            for query in queries[:100]:
                started = time.perf_counter()
                index.search(query[None], 10, normalized=True, nprobe=nprobe, refine=refine)
                times.append((time.perf_counter() - started) * 1e3)
            queries = queries[100:]
            print(f"nprobe {nprobe} refine {refine}: p50 {np.median(times):.1f} ms p99 {np.percentile(times, 99):.1f} "
                  f"ms; RSS {rss_mib():.0f} MiB; load avg {os.getloadavg()[0]:.1f}", flush=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the bench_scale ivfpq index tiled")
    parser.add_argument("--nprobe", default="16,32,64")
    parser.add_argument("--refine", default="200,50")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    try:
        started = time.perf_counter()
        path = tile(args.out, args.copies, args.rows)
        print(f"tiled {args.copies} x {args.rows} rows in {time.perf_counter() - started:.0f} s", flush=True)
        measure(path, args.rows, [int(v) for v in args.nprobe.split(",")], [int(v) for v in args.refine.split(",")])
    finally:
        shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
