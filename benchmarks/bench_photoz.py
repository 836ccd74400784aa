"""gal-photoz linear-probe fit on large embedding tables, streamed, against a plain numpy least-squares baseline
measured in the same run; a row is appended to benchmarks/RESULTS.md.

    python benchmarks/bench_photoz.py                          # the full size: 500,000 x 2048 (~4 GB Parquet)
    python benchmarks/bench_photoz.py --rows 100000 --passes 3 # smaller; the row says so and extrapolates

The table is synthetic (z a linear function of the embedding plus noise, every row labelled) and written as
Parquet, as gal-embed writes it.  Each measurement runs in its own process, so its peak resident memory is its own:

- probe:    ``gal-photoz fit EMB --stream --max-epochs P`` (180 bins, AdamW, batch 512): the table is re-read on
            every pass; the time per pass is what scales with the number of rows;
- baseline: the least-squares fit of z on the embedding in one streamed pass (normal equations X^T X in float64,
            then a solve): the cheapest linear fit there is, a point estimate without a pdf;
- read:     one pass that only reads and decodes the embeddings (the I/O floor of either).
Both fits are scored (sigma_MAD) on the last 10% of rows, which neither saw.
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

CHUNK = 16384


def write_table(path: str, rows: int, dim: int, seed: int) -> None:
    """Synthetic embeddings written chunk by chunk (memory stays at one chunk)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from galtools.io import vector_column

    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(dim).astype(np.float32)
    direction /= np.linalg.norm(direction)
    writer = None
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        z = rng.uniform(0.01, 0.39, n)
        signal = (z + 0.02 * rng.standard_normal(n)).astype(np.float32)
        x = rng.standard_normal((n, dim), dtype=np.float32)
        x += np.outer(signal * 30, direction)
        table = pa.table({"object_id": pa.array(np.arange(start, start + n, dtype=np.int64)),
                          "z_spec": pa.array(z), "embedding": vector_column(x)})
        if writer is None:
            schema = table.schema.with_metadata({b"galtools.model_sha256": b"bench" * 12 + b"abcd"})
            writer = pq.ParquetWriter(path, schema, compression="zstd")
        writer.write_table(table.replace_schema_metadata(writer.schema.metadata), row_group_size=CHUNK)
    writer.close()


def _anonymous_kib(pid: int) -> int:
    """Resident anonymous memory of a process (Linux): its real memory use.  The Parquet reader memory-maps the
    file, and the mapped pages it touches count in VmRSS/ru_maxrss although the kernel can drop them at will,
    so ru_maxrss of a streamed read grows towards the file's size; RssAnon does not."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(command: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak anonymous resident memory MiB sampled every 50 ms, stdout) of a child process."""
    import threading

    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=dict(os.environ, PYTHONPATH=ROOT))
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.wait(0.05):
            peak[0] = max(peak[0], _anonymous_kib(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr.decode()}")
    return seconds, peak[0] / 1024, stdout.decode()


# -- the child processes -------------------------------------------------------------------------------------

def child_lstsq(path: str, holdout_from: int) -> None:
    """One streamed pass of normal equations over the training rows, then a solve; sigma_MAD on the hold-out."""
    import numpy as np

    from galtools.io import open_table, vectors_of
    from galtools.photoz.metrics import photoz_metrics

    start = time.perf_counter()
    gram = xty = None
    done = 0
    held_x, held_z = [], []
    with open_table(path) as table:
        for batch in table.iter_batches(columns=["embedding", "z_spec"]):
            x = vectors_of(batch)
            z = batch.column("z_spec").to_numpy()
            rows = np.arange(done, done + len(z))
            done += len(z)
            train = rows < holdout_from
            xa = np.hstack([x[train], np.ones((train.sum(), 1), np.float32)]).astype(np.float64)
            if gram is None:
                gram = np.zeros((xa.shape[1], xa.shape[1]))
                xty = np.zeros(xa.shape[1])
            gram += xa.T @ xa
            xty += xa.T @ z[train]
            if (~train).any():
                held_x.append(np.array(x[~train]))
                held_z.append(z[~train])
    coefficients = np.linalg.solve(gram + 1e-6 * np.eye(len(gram)), xty)
    seconds = time.perf_counter() - start
    x, z = np.concatenate(held_x), np.concatenate(held_z)
    z_fit = np.hstack([x, np.ones((len(x), 1), np.float32)]) @ coefficients
    print(json.dumps({"seconds": seconds, "sigma_mad": photoz_metrics(z_fit, z)["sigma_mad"]}))


def child_read(path: str) -> None:
    from galtools.io import open_table, vectors_of

    start = time.perf_counter()
    total = 0.0
    with open_table(path) as table:
        for batch in table.iter_batches(columns=["embedding"]):
            total += float(vectors_of(batch)[:, 0].sum())
    print(json.dumps({"seconds": time.perf_counter() - start}))


def child_score(model_path: str, path: str, holdout_from: int) -> None:
    import numpy as np

    from galtools.io import open_table, vectors_of
    from galtools.photoz.metrics import photoz_metrics
    from galtools.photoz.model import PhotozModel

    model = PhotozModel.load(model_path)
    with open_table(path) as table:
        predicted, truth, done = [], [], 0
        for batch in table.iter_batches(columns=["embedding", "z_spec"]):
            keep = np.arange(done, done + batch.num_rows) >= holdout_from
            done += batch.num_rows
            if keep.any():
                predicted.append(model.predict(vectors_of(batch)[keep])["z_phot"])
                truth.append(batch.column("z_spec").to_numpy()[keep])
    print(json.dumps({"sigma_mad": photoz_metrics(np.concatenate(predicted), np.concatenate(truth))["sigma_mad"],
                      "training": model.info["training"]}))


# -- the benchmark -------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--passes", type=int, default=5, help="passes of the probe (--max-epochs)")
    parser.add_argument("--target-rows", type=int, default=500_000, help="size the time is extrapolated to")
    parser.add_argument("--folder", default=None, help="where to write the table (default: a temporary folder)")
    parser.add_argument("--no-record", action="store_true", help="print the row instead of appending it")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        {"lstsq": lambda: child_lstsq(rest[0], int(rest[1])), "read": lambda: child_read(rest[0]),
         "score": lambda: child_score(rest[0], rest[1], int(rest[2]))}[kind]()
        return

    from _record import record

    if args.no_record:
        def record(*columns):
            print(" | ".join(columns))

    folder = args.folder or tempfile.mkdtemp(prefix="bench-photoz-")
    os.makedirs(folder, exist_ok=True)
    table = os.path.join(folder, f"emb-{args.rows}x{args.dim}.parquet")
    model = os.path.join(folder, "probe.model")
    if not os.path.exists(table):
        start = time.perf_counter()
        write_table(table, args.rows, args.dim, seed=0)
        print(f"wrote {table} ({os.path.getsize(table) / 2**30:.2f} GiB) in {time.perf_counter() - start:.0f} s")
    holdout_from = int(0.9 * args.rows)
    # the probe trains on the first 90% (its own validation split inside); the hold-out rows are unlabelled for it
    labelled = os.path.join(folder, f"emb-{args.rows}x{args.dim}-train.parquet")
    if not os.path.exists(labelled):
        _mask_holdout(table, labelled, holdout_from)
    me = [sys.executable, os.path.abspath(__file__), "--child"]
    read_s, read_rss, out = run_measured(me + ["read", labelled])
    lstsq_s, lstsq_rss, out = run_measured(me + ["lstsq", table, str(holdout_from)])
    lstsq = json.loads(out)
    if os.path.exists(model):
        os.unlink(model)
    fit_s, fit_rss, _ = run_measured([sys.executable, "-m", "galtools.cli.photoz", "fit", labelled, "--stream",
                                      "--max-epochs", str(args.passes), "-q", "-o", model])
    _, _, out = run_measured(me + ["score", model, table, str(holdout_from)])
    probe = json.loads(out)
    training = probe["training"]
    passes = training["checks"]
    at_check = [0.0] + training["seconds_at_check"]     # training time only: no start-up, no statistics pass
    per_pass = statistics.median(b - a for a, b in zip(at_check[:-1], at_check[1:]))
    scale = args.target_rows / args.rows
    load = os.getloadavg()[0]
    size = f"{args.rows:,} x {args.dim}"
    extrapolated = (f"; extrapolated to {args.target_rows:,} rows: {per_pass * scale:.0f} s per pass "
                    f"(time per pass is linear in rows)" if args.rows != args.target_rows else "")
    record(f"gal-photoz fit --stream (linear probe, 180 bins) on {size} Parquet embeddings, {passes} passes "
           f"(bench_photoz.py; load avg {load:.1f})",
           f"{per_pass:.1f} s per pass (median; whole command {fit_s:.0f} s incl. start-up and the statistics "
           f"pass; read-only pass {read_s:.1f} s); peak anonymous RSS {fit_rss:.0f} MiB "
           f"(table {os.path.getsize(table) / 2**20:.0f} MiB on disk); hold-out sigma_MAD "
           f"{probe['sigma_mad']:.4f}{extrapolated}",
           f"numpy least squares, one streamed pass: {lstsq['seconds']:.1f} s, peak anonymous RSS {lstsq_rss:.0f} MiB, "
           f"hold-out sigma_MAD {lstsq['sigma_mad']:.4f}",
           f"{per_pass / lstsq['seconds']:.2f}x per pass")


def _mask_holdout(source: str, target: str, holdout_from: int) -> None:
    """A copy whose z_spec is null from row ``holdout_from`` on (those rows are the hold-out)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    reader = pq.ParquetFile(source)
    writer = pq.ParquetWriter(target, reader.schema_arrow, compression="zstd")
    done = 0
    for group in range(reader.num_row_groups):
        piece = reader.read_row_group(group)
        held = np.arange(done, done + piece.num_rows) >= holdout_from
        done += piece.num_rows
        z = pc.if_else(pa.array(held), pa.nulls(piece.num_rows, pa.float64()), piece.column("z_spec"))
        writer.write_table(piece.set_column(1, "z_spec", z), row_group_size=CHUNK)
    writer.close()


if __name__ == "__main__":
    main()
