"""Compressed gal-knn indexes at survey scale: build per stage, bytes per vector, RSS, latency, recall; vs FAISS.

    python benchmarks/bench_scale.py                   # 10^6 vectors (about 15 minutes on 2 busy cores)
    python benchmarks/bench_scale.py --n 10000000      # 10^7 (hours with one thread)
    python benchmarks/bench_scale.py --n 100000000 --parts 10 --shards 10 --jobs 2 --nlist 8192 --kinds ivfpq
                                                       # 10^8: a survey-sized table in 10 Parquet parts

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

With --parts P the table is a folder of P numbered Parquet parts with float16 vectors (a survey's gal-embed output
as a Slurm array writes it: 26 GB at 10^8 rows instead of 51), and the exact reference is computed while the
vectors are drawn, for 1,000 fresh query vectors from the same mixture (queries by image, none of them in the
table): at 10^8 rows a second brute-force pass over the table would take longer than the build. Shards of
index-add run --jobs at a time, as the tasks of a Slurm array on one node would.
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


def _draw(rng, count, weights, means, factors):
    """count float32 vectors from the mixture."""
    import numpy as np

    component = rng.choice(len(weights), count, p=weights / weights.sum())
    x = np.empty((count, means.shape[1]), dtype=np.float32)
    for c in np.unique(component):
        chosen = component == c
        x[chosen] = means[c] + rng.standard_normal((int(chosen.sum()), means.shape[1]), dtype=np.float32) @ factors[c].T
    return x


def _merge_top(best_score, best_row, candidates, k):
    """The k best (score, row) per query of the current best and new candidates (query, row, score)."""
    import numpy as np

    q, row, score = candidates
    order = np.lexsort((-score, q))   # new candidates by query, best first
    q, row, score = q[order], row[order], score[order]
    for query in np.unique(q):   # few after the first chunks: only rows above a query's k-th best get here
        lo, hi = np.searchsorted(q, [query, query + 1])
        merged_score = np.concatenate([best_score[query], score[lo:hi]])
        merged_row = np.concatenate([best_row[query], row[lo:hi]])
        keep = np.argsort(-merged_score, kind="stable")[:k]
        best_score[query], best_row[query] = merged_score[keep], merged_row[keep]


def _write_parts(job):
    """Draw the vectors of some parts, write them, and return the exact k best rows of the queries among them."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    torch.set_num_threads(1)
    n, parts, mine, query_vectors, k, seed, folder = job
    weights, means, factors = mixture()
    means, factors = means.astype(np.float32), factors.astype(np.float32)
    dim = means.shape[1]
    queries = torch.from_numpy(query_vectors)
    best_score = np.full((len(query_vectors), k), -np.inf, dtype=np.float32)
    best_row = np.full((len(query_vectors), k), -1, dtype=np.int64)
    schema = pa.schema([("object_id", pa.int64()), ("embedding", pa.list_(pa.float16(), dim))])
    chunk = 1 << 16
    for part in mine:
        rng = np.random.default_rng([seed, part])
        lo, hi = part * n // parts, (part + 1) * n // parts
        path = os.path.join(folder, f"part-{part}-of-{parts}.parquet")
        # no compression (random mantissas do not compress), no dictionary: 3x faster to write
        with pq.ParquetWriter(path + ".tmp", schema, compression="none", use_dictionary=False) as writer:
            for start in range(lo, hi, chunk):
                count = min(hi, start + chunk) - start
                half = _draw(rng, count, weights, means, factors).astype(np.float16)
                unit = half.astype(np.float32)
                unit /= np.linalg.norm(unit, axis=1, keepdims=True)
                scores = queries @ torch.from_numpy(unit).T   # exact float32 (torch's GEMM: 3x numpy's here)
                if best_row[0, -1] < 0:   # this job's first chunk: its own top k
                    top = torch.topk(scores, k, dim=1)
                    q = np.repeat(np.arange(len(best_row)), k)
                    _merge_top(best_score, best_row, (q, top.indices.numpy().ravel() + start,
                                                      top.values.numpy().ravel()), k)
                    above = np.empty((0, 2), dtype=np.int64)
                else:   # only rows at or above a query's k-th best so far
                    above = (scores >= torch.from_numpy(best_score[:, -1:])).nonzero().numpy()
                if len(above):
                    _merge_top(best_score, best_row,
                               (above[:, 0], above[:, 1] + start, scores[above[:, 0], above[:, 1]].numpy()), k)
                values = pa.Array.from_buffers(pa.float16(), half.size, [None, pa.py_buffer(half)])
                writer.write_table(pa.table({"object_id": pa.array(np.arange(start, start + count, dtype=np.int64)),
                                             "embedding": pa.FixedSizeListArray.from_arrays(values, dim)}),
                                   row_group_size=chunk)
        os.replace(path + ".tmp", path)
        print(f"  part {part + 1}/{parts} written ({load_text()})", flush=True)
    return best_score, best_row


def sample_parts(n: int, parts: int, queries: int, k: int = 10, seed: int = 0, jobs: int = 2):
    """n vectors drawn from the mixture into PARTS numbered Parquet parts (float16 vectors), and the exact k nearest
    rows by cosine of ``queries`` fresh vectors, kept up to date chunk by chunk as the vectors are drawn (on the
    float16 values the index is built from). ``jobs`` processes draw alternate parts. Cached."""
    import multiprocessing

    import numpy as np

    folder = os.path.join(WORK, f"gmm-{n}-parts")
    reference = os.path.join(WORK, f"exact-{n}-{queries}-fresh.npz")
    if os.path.isdir(folder) and os.path.exists(reference):
        data = np.load(reference)
        return folder, data["queries"], data["truth"], float(data["seconds"])
    weights, means, factors = mixture()
    query_vectors = _draw(np.random.default_rng([seed, 1000]), queries, weights, means, factors)
    query_vectors /= np.linalg.norm(query_vectors, axis=1, keepdims=True)
    os.makedirs(folder, exist_ok=True)
    started = time.perf_counter()
    work = [(n, parts, list(range(j, parts, jobs)), query_vectors, k, seed, folder) for j in range(jobs)]
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        found = pool.map(_write_parts, work)
    best_score = np.full((queries, k), -np.inf, dtype=np.float32)
    best_row = np.full((queries, k), -1, dtype=np.int64)
    for score, row in found:
        q = np.repeat(np.arange(queries), k)
        _merge_top(best_score, best_row, (q, row.ravel(), score.ravel()), k)
    seconds = time.perf_counter() - started
    np.savez(reference, queries=query_vectors, truth=best_row, seconds=seconds)
    return folder, query_vectors, best_row, seconds


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

def build(kind: str, table: str, n: int, nlist: int, shards: int, jobs: int = 1) -> tuple[str, list[tuple[str, float, float]]]:
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
        from concurrent.futures import ThreadPoolExecutor

        def add(shard):
            return run(["galtools.cli.knn", "index-add", table, "--trained", trained, "--shard", f"{shard}/{shards}"])

        added = time.perf_counter()
        with ThreadPoolExecutor(jobs) as pool:   # --jobs index-add tasks at once, as a Slurm array on one node
            for shard, (wall, rss, _) in enumerate(pool.map(add, range(shards))):
                stages.append((f"add {shard}/{shards}", wall, rss))
        if jobs > 1:
            stages.append((f"all adds, {jobs} at a time", time.perf_counter() - added, max(r for _, _, r in stages[1:])))
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


def search_measures(path: str, table: str, rows, truth, k: int = 10, queries=None) -> dict:
    """``rows`` are the table's rows used as queries (each excluded from its own answer), or None with ``queries``
    given: fresh unit vectors that are not in the table."""
    import numpy as np

    from galtools.io import open_table
    from galtools.search.scale import _embedding_rows, _unit_checked

    exclude = rows
    if queries is None:
        with open_table(table) as opened:
            queries = _unit_checked(_embedding_rows(opened, rows), 0, table)
    else:
        rows = np.full(len(queries), -1, dtype=np.int64)   # for FAISS direct: no row is -1
    ours, meta = open_galtools(path)
    direct = Direct(path, meta)
    found = ours.search(queries, k, exclude=exclude, normalized=True).indices
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
        seconds = _timed(lambda: ours.search(queries, k, exclude=exclude, normalized=True, nprobe=nprobe))
        got = ours.search(queries, k, exclude=exclude, normalized=True, nprobe=nprobe).indices
        sweep[nprobe] = (float(np.mean([np.intersect1d(t, f[f >= 0]).size / k for t, f in zip(truth, got)])),
                         seconds / len(queries) * 1e3)
    refines = {}
    if meta["params"].get("refine"):
        for refine in (0, 50, 200, 1000) + ((3000,) if len(truth) * meta["count"] <= 10 ** 10 else ()):   # recall against time per query as more candidates are re-scored
            seconds = _timed(lambda: ours.search(queries, k, exclude=exclude, normalized=True, refine=refine))
            got = ours.search(queries, k, exclude=exclude, normalized=True, refine=refine).indices
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
    query = str(n // 3)   # object_id = row number in both kinds of table
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
    parser.add_argument("--parts", type=int, default=1,
                        help="write the table as this many Parquet parts with float16 vectors, with fresh queries")
    parser.add_argument("--jobs", type=int, default=1, help="index-add tasks run at once")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    os.makedirs(WORK, exist_ok=True)
    import faiss

    faiss.omp_set_num_threads(1)
    started = time.perf_counter()
    if args.parts > 1:
        table, queries, truth, exact_seconds = sample_parts(args.n, args.parts, args.queries)
        rows = None
        print(f"table {table} and exact reference: {exact_seconds:.0f} s ({load_text()})", flush=True)
    else:
        queries = None
        table = sample_table(args.n)
        print(f"table {table}: {time.perf_counter() - started:.0f} s ({load_text()})", flush=True)
        rows, truth, exact_seconds = exact_reference(table, args.n, args.queries)
    print(f"exact reference of {args.queries} queries: {exact_seconds:.0f} s ({load_text()})", flush=True)
    rows_out = []
    for kind in args.kinds.split(","):
        path, stages = build(kind, table, args.n, args.nlist, args.shards, args.jobs)
        print(f"{kind}: built {stages} ({load_text()})", flush=True)
        index_bytes, refine_bytes = disk_bytes(path)
        measured = search_measures(path, table, rows, truth, queries=queries)
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
        layout = (f", in {args.parts} Parquet parts of float16 vectors; {args.queries} fresh query vectors"
                  if args.parts > 1 else "")
        result = (f"{m['kind']} N={args.n:,} x 128 (mixture of {COMPONENTS} fitted to gal-embed vectors{layout}), nlist "
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
