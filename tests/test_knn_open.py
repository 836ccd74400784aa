"""gal-knn --query through a compressed index finds its ids in the index's sorted id file (EMB.faiss.ids.npy), not
by reading the table's id column: same neighbors as the older path and as a float64 brute force, integer and string
ids; a missing id file falls back to reading the ids, a foreign one is refused (65). Real processes."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pytest

from conftest import run_tool
from test_knn_cli import as_tuples, assert_clean_error, read_neighbours
from test_knn_scale import clustered, exact_neighbors, write_in_row_groups

pytest.importorskip("faiss")
QUERY_ROWS = [0, 17, 4_321, 9_999]


def _index(tmp_path, table, name):
    path = write_in_row_groups(table, tmp_path / f"{name}.parquet")
    index = tmp_path / f"{name}.faiss"
    run_tool("gal-knn", "index", path, "--kind", "ivfpq", "--nlist", 64, "--pq", 8, "-o", index, check=True)
    return path, index


def _neighbors(path, index, ids, k=10):
    result = run_tool("gal-knn", path, "--index", index, *[a for i in ids for a in ("--query", i)], "-k", k, check=True)
    return result, [tuple(row) for row in as_tuples(read_neighbours(result.stdout))]


def _without_id_file(index, tmp_path):
    """A copy of the index as an older galtools wrote it: no id file and no entries for it in the sidecar."""
    old = tmp_path / "old.faiss"
    shutil.copy(index, old)
    shutil.copy(f"{index}.refine.npy", f"{old}.refine.npy")
    meta = json.loads(open(f"{index}.json").read())
    del meta["id_lookup"], meta["sample_fingerprint"]
    open(f"{old}.json", "w").write(json.dumps(meta))
    return old


@pytest.mark.parametrize("kind", ["int", "str"])
def test_query_by_id_uses_the_id_file_and_equals_the_older_path_and_brute_force(tmp_path, kind):
    table = clustered(seed=3)
    ids = table.column("object_id").to_numpy()
    if kind == "str":   # ids of different lengths, not in row order when sorted as text
        ids = np.array([f"J{int(i) % 997}-{int(i)}" for i in ids], dtype=object)
        table = table.set_column(0, "object_id", pa.array(list(ids), pa.string()))
    path, index = _index(tmp_path, table, "emb")
    assert np.load(f"{index}.ids.npy", mmap_mode="r").shape == (table.num_rows,)
    wanted = [ids[r] for r in QUERY_ROWS]
    result, got = _neighbors(path, index, wanted)
    assert b"reading the table's ids" not in result.stderr
    _, older = _neighbors(path, _without_id_file(index, tmp_path), wanted)
    assert got == older                                # ids, ranks and similarities, exactly
    truth = exact_neighbors(table, QUERY_ROWS)
    for q, row in enumerate(QUERY_ROWS):
        found = [n for query, _, n, _ in got if query == ids[row]]
        assert len(found) == 10 and ids[row] not in found
        assert len(set(found) & {ids[t] for t in truth[q]}) >= 8   # recall@10 of ivfpq + refine on these clusters
    assert_clean_error(run_tool("gal-knn", path, "--index", index, "--query", "J1-nowhere" if kind == "str" else 7),
                       65, "not in")


def test_a_missing_id_file_falls_back_and_a_foreign_one_is_refused(tmp_path):
    table = clustered(seed=4)
    path, index = _index(tmp_path, table, "emb")
    wanted = [100_000 + r for r in QUERY_ROWS]
    _, expected = _neighbors(path, index, wanted)
    ids_file = tmp_path / "emb.faiss.ids.npy"
    shutil.move(ids_file, tmp_path / "kept.npy")
    result, got = _neighbors(path, index, wanted)
    assert got == expected and b"reading the table's ids" in result.stderr and b"rebuild" in result.stderr
    # the id file of another table with the same row count: rows found for an id hold other ids there
    other = clustered(seed=4, ids=np.arange(100_000, 110_000, dtype=np.int64)[::-1].copy())
    _, other_index = _index(tmp_path, other, "other")
    shutil.copy(f"{other_index}.ids.npy", ids_file)
    assert_clean_error(run_tool("gal-knn", path, "--index", index, "--query", 100_017), 65, "id file", "rebuild")
    np.save(ids_file, np.zeros(5, dtype=[("id", "<i8"), ("row", "<i8")]))   # a truncated one
    assert_clean_error(run_tool("gal-knn", path, "--index", index, "--query", 100_017), 65, "id file", "rebuild")
