"""Compressed gal-knn indexes at survey scale: build per stage, bytes per vector, RSS, latency, recall; vs FAISS.

    python benchmarks/bench_scale.py                   # 10^6 vectors (about 15 minutes on 2 busy cores)
    python benchmarks/bench_scale.py --n 10000000      # 10^7 (hours with one thread)

The vectors have the structure of real embeddings: a Gaussian mixture (64 components, full covariances) fitted
to gal-embed's 128-d embeddings of gal-sim cutouts (an encoder trained with gal-train --preset small --steps 200),
sampled in chunks and streamed to a Parquet table (never uniform noise, on which every index looks bad for the
wrong reason). The fitted mixture and the tables are cached in benchmarks/.work-scale/ (ignored by git).

Rows (appended to benchmarks/RESULTS.md), per kind (ivfpq built in shards: index-train, index-add x S,
index-merge; ivfsq8 and ivf by `gal-knn index`), all with OMP_NUM_THREADS=1:
  build seconds per stage and each stage's peak RSS (its own process, os.wait4);
  bytes per vector on disk (index file + on-disk lists; the float16 refine file apart) and in RAM (codes + ids);
  recall@10 of 1,000 queries (rows of the table, themselves excluded) against exact neighbors found by streaming
  brute force over the table;
  single-query latency p50/p99 (one thread, 200 queries) through galtools.search against FAISS called directly on
  the same file with the same nprobe and the same float16 re-scoring (the baseline), and the overhead of a batch of
  1,000 queries (goal: gal-knn at most 10% over FAISS);
  `gal-knn EMB --index X --query ID` and `--all --shard 0/100` as real processes: wall time, peak RSS, rows/s.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
WORK = os.path.join(HERE, ".work-scale")
COMPONENTS = 64


def load_text() -> str:
    return "load avg {:.1f}".format(os.getloadavg()[0])


def run(args: list[str]) -> tuple[float, float, str]:
    """Run a tool as its own process: (wall seconds, its peak RSS in MiB, its stdout). The peak is the tool's own
    VmHWM, which /usr/bin/time reports (a child forked from this process would count this one's memory too)."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    started = time.perf_counter()
    with tempfile.NamedTemporaryFile("r") as peak:
        done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", peak.name, sys.executable, "-m", *args],
                              capture_output=True, env=env)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr.decode()}")
        return wall, int(peak.read().split()[-1]) / 1024.0, done.stdout.decode()


# ------------------------------------------------------------------------------------------------ the vectors

def embeddings_for_mixture() -> str:
    """gal-embed's embeddings of gal-sim cutouts (made once, cached)."""
    emb = os.path.join(WORK, "sim-emb.parquet")
    if os.path.exists(emb):
        return emb
    os.makedirs(WORK, exist_ok=True)
    steps = [["galtools.cli.sim", "-n", "3000", "--seed", "1", "-o", os.path.join(WORK, "sim.parquet")],
             ["galtools.cli.train", os.path.join(WORK, "sim.parquet"), "--out", os.path.join(WORK, "run"),
              "--preset", "small", "--steps", "200", "--device", "cpu"],
             ["galtools.cli.embed", os.path.join(WORK, "sim.parquet"), "--model",
              os.path.join(WORK, "run", "encoder.onnx"), "-o", emb]]
    for step in steps:
        run(step)
    return emb


def mixture(seed: int = 0):
    """(weights, means, Cholesky factors) of a Gaussian mixture with full covariances fitted to unit embeddings
    (cached as .npz). Full covariances of ~50 points each are low-rank: the mixture keeps the embeddings' local
    dimension (nearest-neighbor distances of a sample as large as the fitted set match the real set's: 1 - cos of
    the 1st/10th neighbor 0.0026/0.0043 vs 0.0031/0.0052), where diagonal covariances spread every component over
    all 128 dimensions and make neighbors nearly equidistant, like noise."""
    import numpy as np

    path = os.path.join(WORK, f"mixture-{COMPONENTS}.npz")
    if not os.path.exists(path):
        import pyarrow.parquet as pq
        from sklearn.mixture import GaussianMixture

        from galtools.io import vectors_of
        from galtools.search import unit_rows

        table = pq.read_table(embeddings_for_mixture(), columns=["embedding"])
        vectors = unit_rows(vectors_of(table.combine_chunks().to_batches()[0]))
        fitted = GaussianMixture(COMPONENTS, covariance_type="full", random_state=seed, reg_covar=1e-6).fit(vectors)
        np.savez(path, weights=fitted.weights_, means=fitted.means_, factors=np.linalg.cholesky(fitted.covariances_))
    data = np.load(path)
    return data["weights"], data["means"], data["factors"]


def sample_table(n: int, seed: int = 0) -> str:
    """n vectors drawn from the mixture, written in chunks to a Parquet table (object_id, embedding)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = os.path.join(WORK, f"gmm-{n}.parquet")
    if os.path.exists(path):
        return path
    weights, means, factors = mixture()
    rng = np.random.default_rng(seed)
    dim = means.shape[1]
    schema = pa.schema([("object_id", pa.int64()), ("embedding", pa.list_(pa.float32(), dim))])
    temporary = path + ".tmp"
    with pq.ParquetWriter(temporary, schema) as writer:
        for start in range(0, n, 1 << 17):
            count = min(n, start + (1 << 17)) - start
            component = rng.choice(len(weights), count, p=weights / weights.sum())
            x = np.empty((count, dim), dtype=np.float32)
            for c in np.unique(component):
                chosen = component == c
                x[chosen] = means[c] + rng.standard_normal((int(chosen.sum()), dim)) @ factors[c].T
            embedding = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim)
            writer.write_table(pa.table({"object_id": pa.array(np.arange(start, start + count, dtype=np.int64)),
                                         "embedding": embedding}), row_group_size=65536)
    os.replace(temporary, path)
    return path


def exact_reference(table_path: str, n: int, queries: int, k: int = 10):
    """Rows used as queries and their exact k nearest rows (self excluded), by streaming brute force (cached)."""
    import numpy as np

    path = os.path.join(WORK, f"exact-{n}-{queries}.npz")
    if os.path.exists(path):
        data = np.load(path)
        return data["rows"], data["truth"], float(data["seconds"])
    from galtools.io import open_table
    from galtools.search.scale import _embedding_rows, _unit_checked, streaming_exact_topk

    rows = np.sort(np.random.default_rng(1).choice(n, queries, replace=False))
    started = time.perf_counter()
    with open_table(table_path) as table:
        unit = _unit_checked(_embedding_rows(table, rows), 0, table_path)
        truth = streaming_exact_topk(table, unit, k, exclude=rows).indices
    seconds = time.perf_counter() - started
    np.savez(path, rows=rows, truth=truth, seconds=seconds)
    return rows, truth, seconds


# ------------------------------------------------------------------------------------------------- the builds

def build(kind: str, table: str, n: int, nlist: int, shards: int) -> tuple[str, list[tuple[str, float, float]]]:
    """Build one kind; returns its path and (stage, seconds, peak RSS MiB) per stage."""
    out = os.path.join(WORK, f"{kind}-{n}.faiss")
    mine = (f"{kind}-{n}.",) + ((f"trained-{n}.",) if kind == "ivfpq" else ())
    for leftover in [p for p in os.listdir(WORK) if p.startswith(mine)]:
        os.remove(os.path.join(WORK, leftover))
    stages = []
    if kind == "ivfpq":
        trained = os.path.join(WORK, f"trained-{n}.faiss")
        wall, rss, _ = run(["galtools.cli.knn", "index-train", table, "--kind", kind, "--nlist", str(nlist),
                            "-o", trained])
        stages.append(("train", wall, rss))
        parts = []
        for shard in range(shards):
            wall, rss, _ = run(["galtools.cli.knn", "index-add", table, "--trained", trained,
                                "--shard", f"{shard}/{shards}"])
            stages.append((f"add {shard}/{shards}", wall, rss))
        parts = sorted(os.path.join(WORK, p) for p in os.listdir(WORK)
                       if p.startswith(f"trained-{n}.part-") and p.endswith(".faiss"))
        wall, rss, _ = run(["galtools.cli.knn", "index-merge", trained, *parts, "-o", out])
        stages.append(("merge", wall, rss))
    else:
        wall, rss, _ = run(["galtools.cli.knn", "index", table, "--kind", kind, "--nlist", str(nlist), "-o", out])
        stages.append(("one process", wall, rss))
    return out, stages


def disk_bytes(path: str) -> tuple[int, int]:
    """(index file + on-disk lists, refine file) in bytes."""
    meta = json.load(open(path + ".json"))
    index = os.path.getsize(path) + (os.path.getsize(path + ".ivfdata") if meta.get("ondisk") else 0)
    refine = 0
    if meta.get("refine_file"):
        refine = os.path.getsize(os.path.join(os.path.dirname(path), meta["refine_file"]))
    elif os.path.exists(path + ".refine.npy"):
        refine = os.path.getsize(path + ".refine.npy")
    return index, refine


# ---------------------------------------------------------------------------------------------- the searches

class Direct:
    """FAISS called directly on the same file, with the same nprobe and the same float16 re-scoring."""

    def __init__(self, path: str, meta: dict):
        import faiss
        import numpy as np

        flags = faiss.IO_FLAG_ONDISK_SAME_DIR if meta.get("ondisk") else faiss.IO_FLAG_MMAP
        self.index = faiss.read_index(path, flags)
        faiss.extract_index_ivf(self.index).nprobe = meta["params"]["nprobe"]
        self.refine = meta["params"].get("refine", 0)
        folder = os.path.dirname(path)
        refine_file = os.path.join(folder, meta["refine_file"]) if meta.get("refine_file") else path + ".refine.npy"
        self.records = np.load(refine_file, mmap_mode="r") if os.path.exists(refine_file) else None
        quantizer = faiss.extract_index_ivf(self.index).quantizer
        self.centroids = quantizer.reconstruct_n(0, quantizer.ntotal)

    def search(self, queries, k):
        import numpy as np

        if not self.refine:
            return self.index.search(queries, k)[1]
        _, rows = self.index.search(queries, self.refine)
        unique, inverse = np.unique(rows, return_inverse=True)
        records = self.records[np.maximum(unique, 0)]   # (list, float16 residual to its centroid) per row
        vectors = self.centroids[records["list"]] + records["residual"].astype(np.float32)
        scores = np.einsum("qd,qkd->qk", queries, vectors[inverse.reshape(rows.shape)])
        scores = np.where(rows >= 0, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(rows, order, 1)


def open_galtools(path: str):
    from galtools.search.faiss_index import FaissIndex
    from galtools.search.scale import is_scale_sidecar, open_scale, read_sidecar

    meta = read_sidecar(path)
    return (open_scale(path) if is_scale_sidecar(meta) else FaissIndex.load(path)), meta


def search_measures(path: str, table: str, rows, truth, k: int = 10) -> dict:
    import numpy as np

    from galtools.io import open_table
    from galtools.search.scale import _embedding_rows, _unit_checked

    with open_table(table) as opened:
        queries = _unit_checked(_embedding_rows(opened, rows), 0, table)
    ours, meta = open_galtools(path)
    direct = Direct(path, meta)
    found = ours.search(queries, k, exclude=rows, normalized=True).indices
    recall = float(np.mean([np.intersect1d(t, f[f >= 0]).size / k for t, f in zip(truth, found)]))
    found_direct = direct.search(queries, k + 1)
    recall_direct = float(np.mean([np.intersect1d(t, f[(f >= 0) & (f != r)][:k]).size / k
                                   for t, f, r in zip(truth, found_direct, rows)]))

    def latencies(search_one, count=200):
        times = []
        for i in range(count):
            started = time.perf_counter()
            search_one(queries[i: i + 1])
            times.append(time.perf_counter() - started)
        return np.percentile(times, 50) * 1e3, np.percentile(times, 99) * 1e3

    for _ in range(2):   # warm the page cache and the mapped lists for both
        latencies(lambda q: ours.search(q, k, normalized=True), 50)
        latencies(lambda q: direct.search(q, k), 50)
    ours_lat = latencies(lambda q: ours.search(q, k, normalized=True))
    direct_lat = latencies(lambda q: direct.search(q, k))
    batch_ours = statistics.median(_timed(lambda: ours.search(queries, k, normalized=True)) for _ in range(3))
    batch_direct = statistics.median(_timed(lambda: direct.search(queries, k)) for _ in range(3))
    sweep = {}
    for nprobe in (8, 16, 32, 64):   # recall against time per query as nprobe grows
        seconds = _timed(lambda: ours.search(queries, k, exclude=rows, normalized=True, nprobe=nprobe))
        got = ours.search(queries, k, exclude=rows, normalized=True, nprobe=nprobe).indices
        sweep[nprobe] = (float(np.mean([np.intersect1d(t, f[f >= 0]).size / k for t, f in zip(truth, got)])),
                         seconds / len(queries) * 1e3)
    refines = {}
    if meta["params"].get("refine"):
        for refine in (0, 50, 200, 1000, 3000):   # recall against time per query as more candidates are re-scored
            seconds = _timed(lambda: ours.search(queries, k, exclude=rows, normalized=True, refine=refine))
            got = ours.search(queries, k, exclude=rows, normalized=True, refine=refine).indices
            refines[refine] = (float(np.mean([np.intersect1d(t, f[f >= 0]).size / k for t, f in zip(truth, got)])),
                               seconds / len(queries) * 1e3)
    return {"sweep": sweep, "refines": refines, "recall": recall, "recall_direct": recall_direct, "p50": ours_lat[0], "p99": ours_lat[1],
            "p50_direct": direct_lat[0], "p99_direct": direct_lat[1], "batch": batch_ours,
            "batch_direct": batch_direct, "code_bytes": _code_bytes(direct.index)}


def _code_bytes(index) -> int:
    import faiss

    ivf = faiss.extract_index_ivf(index)
    return int(ivf.code_size) + 8


def _timed(func) -> float:
    started = time.perf_counter()
    func()
    return time.perf_counter() - started


def cli_measures(path: str, table: str, n: int, all_shards: int) -> dict:
    query = str(n // 3)
    out = os.path.join(WORK, "neighbors.parquet")
    wall, rss, _ = run(["galtools.cli.knn", table, "--index", path, "--query", query, "-k", "10", "-o", out,
                        "--overwrite"])
    shard_rows = n // all_shards
    all_wall, all_rss, _ = run(["galtools.cli.knn", table, "--index", path, "--all", "-k", "10", "--shard", f"0/{all_shards}",
                                "-o", out, "--overwrite"])
    return {"query_wall": wall, "query_rss": rss, "all_wall": all_wall, "all_rss": all_rss,
            "all_rate": shard_rows / all_wall}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--kinds", default="ivfpq,ivfsq8,ivf")
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--all-shards", type=int, default=100, help="--all is timed on shard 0 of this many")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    os.makedirs(WORK, exist_ok=True)
    import faiss

    faiss.omp_set_num_threads(1)
    started = time.perf_counter()
    table = sample_table(args.n)
    print(f"table {table}: {time.perf_counter() - started:.0f} s ({load_text()})", flush=True)
    rows, truth, exact_seconds = exact_reference(table, args.n, args.queries)
    print(f"exact reference of {args.queries} queries: {exact_seconds:.0f} s ({load_text()})", flush=True)
    rows_out = []
    for kind in args.kinds.split(","):
        path, stages = build(kind, table, args.n, args.nlist, args.shards)
        print(f"{kind}: built {stages} ({load_text()})", flush=True)
        index_bytes, refine_bytes = disk_bytes(path)
        measured = search_measures(path, table, rows, truth)
        measured.update(cli_measures(path, table, args.n, args.all_shards))
        measured.update(kind=kind, stages=stages, disk=index_bytes / args.n, refine=refine_bytes / args.n,
                        load=load_text())
        print(json.dumps(measured), flush=True)
        rows_out.append(measured)
    if not args.no_record:
        record_rows(args, rows_out, exact_seconds)


def record_rows(args, rows_out, exact_seconds):
    from _record import machine, record  # noqa: F401

    for m in rows_out:
        stages = ", ".join(f"{s} {w:.0f} s/{r:.0f} MiB" for s, w, r in m["stages"])
        overhead = m["batch"] / m["batch_direct"] - 1
        result = (f"{m['kind']} N={args.n:,} x 128 (mixture of {COMPONENTS} fitted to gal-embed vectors), nlist "
                  f"{args.nlist}: build {stages}; disk {m['disk']:.0f} B/vector (+ refine {m['refine']:.0f}), codes+ids "
                  f"{m['code_bytes']} B/vector in RAM; recall@10 {m['recall']:.3f} over {args.queries} queries; 1 "
                  f"thread p50 {m['p50']:.2f} ms p99 {m['p99']:.2f} ms; batch of {args.queries} {m['batch']:.2f} s "
                  f"(overhead {overhead:+.1%}); CLI --query {m['query_wall']:.1f} s/{m['query_rss']:.0f} MiB peak, "
                  f"--all (shard 0/{args.all_shards}) {m['all_rate']:.0f} rows/s/{m['all_rss']:.0f} MiB peak; recall@10/ms per query at nprobe "
                  + " ".join(f"{p}: {r:.3f}/{t:.2f}" for p, (r, t) in m["sweep"].items())
                  + ("; at refine " + " ".join(f"{p}: {r:.3f}/{t:.2f}" for p, (r, t) in m["refines"].items())
                     if m["refines"] else "") + f"; {m['load']}")
        baseline = (f"FAISS direct, same file and re-scoring: recall@10 {m['recall_direct']:.3f}, p50 "
                    f"{m['p50_direct']:.2f} ms p99 {m['p99_direct']:.2f} ms, batch {m['batch_direct']:.2f} s; exact "
                    f"reference by streaming brute force {exact_seconds:.0f} s")
        record("bench_scale " + m["kind"], result, baseline, f"{m['batch'] / m['batch_direct']:.2f}x")


if __name__ == "__main__":
    main()
