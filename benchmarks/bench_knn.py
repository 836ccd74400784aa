"""gal-knn search speed against FAISS, measured in the same run; rows appended to benchmarks/RESULTS.md.

    python benchmarks/bench_knn.py                 # the full sizes (a few minutes on 2 cores)
    python benchmarks/bench_knn.py --n 200000      # smaller, when memory or time is short

1. exact top-10 of 1,000 queries over N=1M x 128 random unit vectors: galtools.search.exact_topk vs
   faiss.IndexFlatIP.search (goal: within 1.5x of FAISS's time);
2. approximate single-query latency at recall@10 >= 0.95 against exact single-query latency: IVF-Flat on 1M
   vectors, HNSW on --hnsw-n vectors (HNSW construction on 1M vectors takes tens of minutes on a 2-core
   machine, so its size is separate).  The vectors lie near a 16-dimensional subspace (--data low-rank, like
   real embeddings); on uniform random 128-d vectors (--data random) no index reaches recall 0.95 much faster
   than exhaustive search;
3. all-pairs top-10 over 100k x 128 (every row a query, itself excluded): time and peak memory, against
   faiss IndexFlatIP searching all rows for 11 neighbours.
Each part runs in its own process so its peak resident memory is its own.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def random_unit(n, dim, seed):
    import numpy as np

    from galtools.search import unit_rows

    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 1 << 18):  # generate in pieces: no float64 copy of the whole table
        stop = min(n, start + (1 << 18))
        out[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
    return unit_rows(out, out=out)


def low_rank_unit(n, dim, seed, intrinsic=16, noise=0.1):
    """Unit vectors near a random ``intrinsic``-dimensional subspace (plus ``noise`` isotropic scatter): closer to
    real embeddings, whose intrinsic dimension is far below D, than uniform random vectors, on which every
    approximate index degrades towards an exhaustive search."""
    import numpy as np

    from galtools.search import unit_rows

    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((intrinsic, dim), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 1 << 18):
        stop = min(n, start + (1 << 18))
        latent = rng.standard_normal((stop - start, intrinsic), dtype=np.float32)
        scatter = rng.standard_normal((stop - start, dim), dtype=np.float32)
        out[start:stop] = latent @ basis + noise * np.sqrt(intrinsic) * scatter
    return unit_rows(out, out=out)


def load_text() -> str:
    return "load avg {:.1f}".format(os.getloadavg()[0])


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(func, repeats):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def recall(truth, found):
    import numpy as np

    return float(np.mean([np.intersect1d(t, f).size / len(t) for t, f in zip(truth, found)]))


# ------------------------------------------------------------------------------------------------------- parts

def part_exact(args):
    import faiss
    import numpy as np

    from galtools.search import exact_topk

    base = random_unit(args.n, args.dim, 0)
    queries = random_unit(args.queries, args.dim, 1)
    index = faiss.IndexFlatIP(args.dim)
    index.add(base)
    ours_times, faiss_times = [], []
    for _ in range(args.repeats):  # interleaved, so a change in the machine's load hits both alike
        # check_base=False: gal-knn checks the table for NaN once when it loads it, not per search
        seconds, ours_result = timed(lambda: exact_topk(queries, base, args.k, normalized=True, check_base=False), 1)
        ours_times.append(seconds)
        seconds, (_, faiss_rows) = timed(lambda: index.search(queries, args.k), 1)
        faiss_times.append(seconds)
    agree = float(np.mean(ours_result.indices == faiss_rows))
    out = {"ours_s": statistics.median(ours_times), "faiss_s": statistics.median(faiss_times), "agree": agree,
           "peak_rss_mib": peak_rss_mib(), "load": load_text()}
    try:
        import torch

        if torch.cuda.is_available():
            exact_topk(queries[:10], base, args.k, normalized=True, device="cuda")  # warm up CUDA
            out["cuda_s"], _ = timed(lambda: exact_topk(queries, base, args.k, normalized=True, device="cuda"),
                                     args.repeats)
    except ImportError:
        pass
    return out


def _single_query_latency(search_one, queries, count):
    times = []
    for q in queries[:count]:
        start = time.perf_counter()
        search_one(q[None, :])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def part_approximate(args, kind):
    import faiss
    import numpy as np

    from galtools.search import FaissIndex, exact_topk

    n = args.n if kind == "ivf" else args.hnsw_n
    make = random_unit if args.data == "random" else low_rank_unit
    everything = make(n + args.queries, args.dim, 0)  # queries drawn like the base, and not part of it
    base, queries = everything[:n], np.ascontiguousarray(everything[n:])
    truth = exact_topk(queries, base, args.k, normalized=True).indices
    start = time.perf_counter()
    if kind == "ivf":
        index = FaissIndex.build(base, "ivf", normalized=True, nlist=args.nlist, train_size=min(n, 64 * args.nlist))
        sweep = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, args.nlist]
    else:
        index = FaissIndex.build(base, "hnsw", normalized=True, hnsw_m=args.hnsw_m,
                                 ef_construction=args.ef_construction)
        sweep = [16, 32, 64, 128, 256, 512, 1024, 2048]
    build_s = time.perf_counter() - start
    size_bytes = len(faiss.serialize_index(index.index))
    chosen, curve = None, []
    for value in sweep:
        knob = {"nprobe": value} if kind == "ivf" else {"ef": value}
        found = index.search(queries, args.k, normalized=True, **knob).indices
        r = recall(truth, found)
        curve.append((value, r))
        if r >= args.target_recall:
            chosen = (value, r, knob)
            break
    out = {"kind": kind, "n": n, "build_s": build_s, "index_bytes": size_bytes, "curve": curve,
           "params": index.params}
    if chosen is None:
        out["error"] = f"recall {args.target_recall} not reached"
        return out
    value, r, knob = chosen
    approx = _single_query_latency(lambda q: index.search(q, args.k, normalized=True, **knob), queries,
                                   args.latency_queries)
    exact = _single_query_latency(lambda q: exact_topk(q, base, args.k, normalized=True, check_base=False), queries,
                                  args.latency_queries)
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(base)
    flat_one = _single_query_latency(lambda q: flat.search(q, args.k), queries, args.latency_queries)
    out.update({"knob": knob, "recall": r, "approx_ms": approx * 1e3, "exact_ms": exact * 1e3,
                "faiss_flat_ms": flat_one * 1e3, "peak_rss_mib": peak_rss_mib(), "load": load_text()})
    return out


def part_allpairs(args, which):
    import faiss
    import numpy as np

    from galtools.search import all_rows_topk

    base = random_unit(args.allpairs_n, args.dim, 2)
    rss_data = peak_rss_mib()
    start = time.perf_counter()
    if which == "ours":
        rows = np.empty((args.allpairs_n, args.k), dtype=np.int64)
        for block_rows, topk in all_rows_topk(base, args.k, normalized=True, check_base=False):
            rows[block_rows.start:block_rows.stop] = topk.indices
    else:
        index = faiss.IndexFlatIP(args.dim)
        index.add(base)
        _, found = index.search(base, args.k + 1)
        rows = found[:, 1:]  # FAISS puts the row itself first (similarity 1) on random data
    seconds = time.perf_counter() - start
    np.save(args.scratch + f"-{which}.npy", rows)
    return {"seconds": seconds, "peak_rss_mib": peak_rss_mib(), "data_rss_mib": rss_data, "load": load_text()}


# --------------------------------------------------------------------------------------------------- the driver

def run_part(name, args):
    command = [sys.executable, os.path.abspath(__file__), "--part", name] + args.passthrough
    env = dict(os.environ)
    if args.threads:  # both libraries alike: BLAS (numpy) and OpenMP (FAISS)
        for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[variable] = str(args.threads)
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"part {name} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("-k", "--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--hnsw-n", type=int, default=100_000)
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--latency-queries", type=int, default=100)
    parser.add_argument("--allpairs-n", type=int, default=100_000)
    parser.add_argument("--parts", default="exact,ivf,hnsw,allpairs")
    parser.add_argument("--data", choices=["low-rank", "random"], default="low-rank",
                        help="Vectors of the approximate-index part (exact parts always use random ones).")
    parser.add_argument("--scratch", default="/tmp/galtools-bench-knn")
    parser.add_argument("--threads", type=int, default=None,
                        help="Threads for BLAS and FAISS alike (default: the libraries' own). One thread gives "
                             "steadier numbers on a shared machine.")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--no-record", action="store_true", help="Print only; do not append to RESULTS.md.")
    args = parser.parse_args()
    if args.part:
        handlers = {"exact": part_exact, "ivf": lambda a: part_approximate(a, "ivf"),
                    "hnsw": lambda a: part_approximate(a, "hnsw"),
                    "allpairs-ours": lambda a: part_allpairs(a, "ours"),
                    "allpairs-faiss": lambda a: part_allpairs(a, "faiss")}
        print(json.dumps(handlers[args.part](args)))
        return
    args.passthrough = [a for a in sys.argv[1:] if a not in ("--no-record",)]
    from _record import record

    save = (lambda *row: record(*row)) if not args.no_record else (lambda *row: print(" | ".join(row)))
    parts = args.parts.split(",")
    size = f"{args.n:,} x {args.dim}" + (f", {args.threads} thread(s)" if args.threads else "")
    if "exact" in parts:
        r = run_part("exact", args)
        save(f"gal-knn exact top-{args.k}, {args.queries:,} queries over {size} (bench_knn.py)",
             f"{r['ours_s']:.2f} s (median of {args.repeats}; same neighbours as FAISS: {r['agree']:.4f}; "
             f"peak RSS {r['peak_rss_mib']:.0f} MiB incl. FAISS copy; {r['load']})",
             f"faiss IndexFlatIP.search {r['faiss_s']:.2f} s", f"{r['ours_s'] / r['faiss_s']:.2f}x")
        if "cuda_s" in r:
            save(f"gal-knn exact top-{args.k} on GPU (torch), {args.queries:,} queries over {size}",
                 f"{r['cuda_s']:.3f} s", f"faiss-cpu IndexFlatIP {r['faiss_s']:.2f} s",
                 f"{r['cuda_s'] / r['faiss_s']:.2f}x")
    for kind in ("ivf", "hnsw"):
        if kind not in parts:
            continue
        r = run_part(kind, args)
        n = f"{r['n']:,} x {args.dim} {args.data} vectors" + (f", {args.threads} thread(s)" if args.threads else "")
        if "error" in r:
            save(f"gal-knn {kind} single-query latency over {n}", r["error"], f"curve {r['curve']}", "-")
            continue
        knob = ", ".join(f"{key}={value}" for key, value in r["knob"].items())
        save(f"gal-knn {kind} single query, recall@{args.k} >= {args.target_recall} over {n} (bench_knn.py)",
             f"{r['approx_ms']:.2f} ms at {knob} (recall {r['recall']:.3f}; build {r['build_s']:.0f} s; "
             f"index {r['index_bytes'] / r['n']:.0f} B/vector = {r['index_bytes'] / 2**20:.0f} MiB; {r['load']})",
             f"exact single query {r['exact_ms']:.2f} ms (faiss flat {r['faiss_flat_ms']:.2f} ms)",
             f"{r['exact_ms'] / r['approx_ms']:.1f}x faster than exact")
    if "allpairs" in parts:
        ours = run_part("allpairs-ours", args)
        theirs = run_part("allpairs-faiss", args)
        import numpy as np

        a, b = np.load(args.scratch + "-ours.npy"), np.load(args.scratch + "-faiss.npy")
        agree = float(np.mean(a == b))
        for suffix in ("-ours.npy", "-faiss.npy"):
            os.remove(args.scratch + suffix)
        threads = f", {args.threads} thread(s)" if args.threads else ""
        save(f"gal-knn --all top-{args.k} (all pairs) over {args.allpairs_n:,} x {args.dim}{threads} (bench_knn.py)",
             f"{ours['seconds']:.1f} s, peak RSS {ours['peak_rss_mib']:.0f} MiB (data alone "
             f"{ours['data_rss_mib']:.0f} MiB; same neighbours as FAISS: {agree:.4f}; {ours['load']})",
             f"faiss IndexFlatIP.search k={args.k + 1} {theirs['seconds']:.1f} s, peak RSS "
             f"{theirs['peak_rss_mib']:.0f} MiB", f"{ours['seconds'] / theirs['seconds']:.2f}x")


if __name__ == "__main__":
    main()
