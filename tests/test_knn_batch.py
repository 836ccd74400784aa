"""gal-knn --all through a compressed index, searched by inverted list in bounded batches (galtools.search.batch):
real processes at 10^4 rows, checked against the query-by-query search of the same index, killed and resumed."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import pyarrow as pa
import pytest

from conftest import run_tool, tool_command, tool_env
from test_knn_cli import as_tuples, read_neighbours
from test_knn_scale import clustered, exact_neighbors, write_in_row_groups

pytest.importorskip("faiss")


def _by_query(table):
    """(query_id, rank, neighbor_id) rows and the similarities of a neighbor table, in query order."""
    rows = sorted(as_tuples(table))
    return [r[:3] for r in rows], np.array([r[3] for r in rows])


def _query_by_query(path, index, ids, tmp_path, k=10):
    """The reference: every row asked for by id (one search of all queries, no batching by list)."""
    listing = tmp_path / "ids.txt"
    listing.write_text("\n".join(str(i) for i in ids) + "\n")
    out = tmp_path / f"by-id-{os.path.basename(str(index))}.parquet"
    run_tool("gal-knn", path, "--index", index, "--queries", listing, "-k", k, "-o", out, check=True)
    return _by_query(read_neighbours(out))


def test_all_by_inverted_list_equals_query_by_query_and_resumes_after_sigkill(tmp_path):
    table = clustered(n=10_000, seed=7)
    path = write_in_row_groups(table, tmp_path / "emb.parquet")
    index = tmp_path / "pq.faiss"
    run_tool("gal-knn", "index", path, "--kind", "ivfpq", "--nlist", 64, "--pq", 8, "-o", index, check=True)
    ids = table.column("object_id").to_pylist()
    want, want_sims = _query_by_query(path, index, ids, tmp_path)

    out = tmp_path / "all.parquet"
    checkpoint = tmp_path / "all.parquet.checkpoint"
    # 1 MiB of buffers: 29 queries a batch (1000 candidates each), the 64 lists in 5 groups: 345 batches
    command = ["--all", "-k", 10, "--buffer", 1, "-v", "-o", out]
    log = open(tmp_path / "first-run.log", "wb")
    process = subprocess.Popen(tool_command("gal-knn") + [str(a) for a in [path, "--index", index, *command]],
                               stdout=subprocess.DEVNULL, stderr=log, env=tool_env())
    deadline = time.monotonic() + 300
    while len(list(checkpoint.glob("batch-*.npz"))) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "finished before it could be killed: " + (tmp_path / "first-run.log").read_text()
    process.send_signal(signal.SIGKILL)
    process.wait()
    log.close()
    done = len(list(checkpoint.glob("batch-*.npz")))
    assert done >= 3 and not out.exists()                         # no table until it is complete

    again = run_tool("gal-knn", path, "--index", index, *command, check=True)
    err = again.stderr.decode()
    assert f"resuming from {checkpoint}: " in err and "RSS" in err and "MiB" in err
    assert not checkpoint.exists()                               # removed once the table is written
    got, got_sims = _by_query(read_neighbours(out))
    assert got == want                                           # the same ids, ranks and neighbors
    np.testing.assert_allclose(got_sims, want_sims, rtol=0, atol=1e-6)

    # and those neighbors are good ones: recall@10 against a float64 brute force on 300 rows
    rows = np.random.default_rng(3).choice(len(ids), 300, replace=False)
    truth = exact_neighbors(table, rows)
    found = {}
    for query, _, neighbor in got:
        found.setdefault(query, set()).add(neighbor)
    hits = sum(len(found[ids[r]] & {ids[t] for t in truth[i]}) for i, r in enumerate(rows))
    assert hits / (300 * 10) > 0.9


@pytest.mark.slow
def test_all_in_shards_through_a_merged_on_disk_index(tmp_path):
    """A sharded build (index-train, 2 x index-add, index-merge: lists on disk), then --all in 2 Slurm-style
    shards each with its own checkpoint: together exactly the query-by-query result; --least too."""
    table = clustered(n=10_000, seed=8)
    path = write_in_row_groups(table, tmp_path / "emb.parquet")
    trained = tmp_path / "trained.faiss"
    run_tool("gal-knn", "index-train", path, "--kind", "ivfsq8", "--nlist", 50, "-o", trained, check=True)
    for shard in range(2):
        run_tool("gal-knn", "index-add", path, "--trained", trained, "--shard", f"{shard}/2", check=True)
    merged = tmp_path / "merged.faiss"
    run_tool("gal-knn", "index-merge", trained, *[tmp_path / f"trained.part-{i}-of-2.faiss" for i in range(2)],
             "-o", merged, check=True)
    ids = table.column("object_id").to_pylist()
    want, want_sims = _query_by_query(path, merged, ids, tmp_path)
    # a checkpoint left by a run with other settings (another -k) is not resumed from: its batches are not these
    stale = tmp_path / "nb-0-of-2.parquet.checkpoint"
    stale.mkdir()
    (stale / "state.json").write_text('{"k": 99}')
    np.savez(stale / "batch-000000000000.npz", rows=np.zeros((5, 10), np.int64), scores=np.zeros((5, 10), np.float32))
    for shard in range(2):
        env = dict(tool_env(), SLURM_ARRAY_TASK_ID=str(shard), SLURM_ARRAY_TASK_COUNT="2")
        done = run_tool("gal-knn", path, "--index", merged, "--all", "--buffer", 1, "-o",
                        tmp_path / "nb-{shard}.parquet", env=env, check=True)
        assert ("holds a run with other settings" in done.stderr.decode()) == (shard == 0)
    parts = [read_neighbours(tmp_path / f"nb-{i}-of-2.parquet") for i in range(2)]
    got, got_sims = _by_query(pa.concat_tables(parts))
    assert got == want
    np.testing.assert_allclose(got_sims, want_sims, rtol=0, atol=1e-6)
    assert not list(tmp_path.glob("*.checkpoint"))

    least = read_neighbours(run_tool("gal-knn", path, "--index", merged, "--all", "--least", "-k", 3, "--buffer", 1,
                                     "-o", "-", check=True).stdout)
    listing = tmp_path / "ids.txt"
    by_id = read_neighbours(run_tool("gal-knn", path, "--index", merged, "--queries", listing, "--least", "-k", 3,
                                     "-o", "-", check=True).stdout)
    assert _by_query(least)[0] == _by_query(by_id)[0]
