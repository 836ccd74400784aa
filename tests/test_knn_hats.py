"""gal-knn --all of a HATS catalogue into a folder writes a HATS catalogue (one row per object: its columns, then
its k neighbor ids and similarities), exact or through a compressed index, in one process or a sharded array; lsdb
opens it and cross-matches it with the input. Checked against gal-knn's own neighbor table of the same rows."""
from __future__ import annotations

import os
import subprocess

import numpy as np
import pyarrow as pa
import pytest

from test_hats_out import ENV, N, ok, opens_and_matches_itself, partitions, run, survey  # noqa: F401 (a fixture)
from conftest import tool_command

K = 5


def neighbor_lists(table: pa.Table) -> dict:
    """{object_id: [neighbor ids in rank order]} from a long neighbor table."""
    got: dict = {}
    for query, rank, neighbor in zip(table.column("query_id").to_pylist(), table.column("rank").to_pylist(),
                                     table.column("neighbor_id").to_pylist()):
        got.setdefault(query, {})[rank] = neighbor
    return {q: [by_rank[r] for r in sorted(by_rank)] for q, by_rank in got.items()}


def catalogue_lists(folder: str) -> tuple[dict, dict]:
    table = pa.concat_tables(partitions(folder).values())
    ids = table.column("object_id").to_pylist()
    return (dict(zip(ids, table.column("neighbor_id").to_pylist())),
            dict(zip(ids, table.column("similarity").to_pylist())))


def long_table(*args) -> pa.Table:
    result = ok(run("gal-knn", *args, "-k", K, "-o", "-"))
    return pa.ipc.open_stream(pa.py_buffer(result.stdout)).read_all()


@pytest.fixture(scope="module")
def embedded(survey):  # noqa: F811
    """gal-embed's HATS catalogue of the survey (built once with it, read only)."""
    return survey["embedded"]


def test_all_of_a_hats_catalogue_is_a_hats_catalogue(survey, embedded):  # noqa: F811
    out = str(survey["tmp"] / "knn_catalogue")
    result = ok(run("gal-knn", embedded, "--all", "-k", K, "-o", out + "/"))
    assert b"HATS catalogue complete" in result.stderr
    written = partitions(out)
    assert sorted(written) == sorted(partitions(survey["catalogue"]))
    for part in written.values():
        assert part.column_names[0] == "object_id" and part.column_names[-2:] == ["neighbor_id", "similarity"]
        assert {"ra", "dec", "_healpix_29"} <= set(part.column_names) and "embedding" not in part.column_names
    lists, sims = catalogue_lists(out)
    assert len(lists) == N
    want = long_table(survey["plain"], "--all")
    assert lists == neighbor_lists(want)                         # the same neighbors, in the same order
    similarity = dict(((q, r), s) for q, r, s in zip(want.column("query_id").to_pylist(),
                                                     want.column("rank").to_pylist(),
                                                     want.column("similarity").to_pylist()))
    np.testing.assert_allclose([s for q in lists for s in sims[q]],
                               [similarity[(q, r)] for q in lists for r in range(1, K + 1)], rtol=0, atol=1e-6)
    opens_and_matches_itself(out, survey)


def test_a_sharded_array_through_a_compressed_index(survey, embedded):  # noqa: F811
    """index-built from the catalogue, then two --all tasks at once (one by --shard, one by Slurm's variables)
    writing their partitions into one catalogue: the neighbors of the query-by-query search of that index."""
    index = str(survey["tmp"] / "emb.faiss")
    ok(run("gal-knn", "index", embedded, "--kind", "ivfsq8", "--nlist", 4, "-o", index))
    out = str(survey["tmp"] / "knn_index_catalogue")
    args = [embedded, "--index", index, "--all", "-k", K, "-o", out]
    slurm = dict(ENV, SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="2")
    tasks = [subprocess.Popen(tool_command("gal-knn") + [str(a) for a in args] + ["--shard", "0/2"], env=ENV,
                              stderr=subprocess.PIPE),
             subprocess.Popen(tool_command("gal-knn") + [str(a) for a in args], env=slurm, stderr=subprocess.PIPE)]
    errors = [task.communicate(timeout=600)[1].decode() for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], errors
    assert sorted(partitions(out)) == sorted(partitions(survey["catalogue"]))
    lists, _ = catalogue_lists(out)
    ids = survey["tmp"] / "ids.txt"
    ids.write_text("\n".join(str(i) for i in lists) + "\n")
    assert lists == neighbor_lists(long_table(embedded, "--index", index, "--queries", ids))
    opens_and_matches_itself(out, survey)
    assert not [p for p in os.listdir(survey["tmp"]) if ".checkpoint" in p]   # each task's, removed when done
