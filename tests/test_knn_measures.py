"""gal-knn beyond plain neighbor lists: precision@k of a label, the queries' own columns, id lists in any form,
the terminal table's whole column names; checked as real processes against numpy brute force."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from conftest import brute_force, on_a_terminal, run_tool, shell, write_table
from galtools.io import open_table, vector_column

K = 5


def clustered(n=240, dim=12, seed=4, centres=6):
    rng = np.random.default_rng(seed)
    means = 2.0 * rng.standard_normal((centres, dim))
    classes = rng.integers(0, centres, n)
    vectors = (means[classes] + 2.5 * rng.standard_normal((n, dim))).astype(np.float32)
    labels = [f"c{c % 4}" for c in classes]          # 6 clusters, 4 labels: precision well below 1
    labels[3] = None                                  # one unlabelled query
    return pa.table({"object_id": pa.array(np.arange(100, 100 + n, dtype=np.int64)),
                     "ra": pa.array(rng.uniform(0, 360, n)), "label": pa.array(labels, pa.string()),
                     "embedding": vector_column(vectors)})


def brute_force_neighbors(table, k):
    """(N, k) rows of each row's k most similar other rows, float64, ties by object_id; and the smallest gap
    between the k-th and the (k+1)-th similarity (so float32 search cannot reorder the boundary)."""
    vectors = np.asarray(table.column("embedding").combine_chunks().values).reshape(table.num_rows, -1)
    every = np.arange(table.num_rows)
    rows, sims = brute_force(vectors, vectors, table.column("object_id").to_numpy(), k + 1, exclude=every)
    return rows[:, :k], float(np.min(sims[:, k - 1] - sims[:, k]))


def brute_force_precision(table, k):
    rows, gap = brute_force_neighbors(table, k)
    assert gap > 1e-5, "test data too close to a tie at the k-th neighbor"
    labels = table.column("label").to_pylist()
    per_class = {}
    for q, neighbors in enumerate(rows):
        if labels[q] is None:
            continue
        hits = sum(labels[j] == labels[q] for j in neighbors)
        count, total = per_class.get(labels[q], (0, 0))
        per_class[labels[q]] = (count + 1, total + hits)
    return per_class


@pytest.fixture
def emb(tmp_path):
    table = clustered()
    return write_table(table, str(tmp_path / "emb.parquet")), table


def test_precision_at_k_matches_brute_force_per_class_and_overall(tmp_path, emb):
    path, table = emb
    result = run_tool("gal-knn", path, "--all", "--precision-at", K, "--label", "label", check=True)
    got = json.loads(result.stdout)
    want = brute_force_precision(table, K)
    assert got["k"] == K and got["label"] == "label" and got["unlabelled_queries"] == 1
    assert set(got["classes"]) == set(want)
    for name, (count, hits) in want.items():
        assert got["classes"][name]["queries"] == count and got["classes"][name]["hits"] == hits
        assert got["classes"][name]["precision"] == pytest.approx(hits / (count * K), abs=1e-12)
    queries, hits = sum(c for c, _ in want.values()), sum(h for _, h in want.values())
    assert got["queries"] == queries == table.num_rows - 1
    assert got["precision"] == pytest.approx(hits / (queries * K), abs=1e-12)
    assert got["macro_precision"] == pytest.approx(np.mean([h / (c * K) for c, h in want.values()]), abs=1e-12)
    assert 0.2 < got["precision"] < 0.95   # the data mixes labels: a measure that can fail both ways

    # shards add up to the whole, and -o FILE writes the neighbor table as well
    parts = [json.loads(run_tool("gal-knn", path, "--all", "--precision-at", K, "--label", "label", "--shard",
                                 f"{i}/3", "-o", tmp_path / f"n{i}.parquet", check=True).stdout) for i in range(3)]
    assert sum(p["hits"] for p in parts) == got["hits"] and sum(p["queries"] for p in parts) == got["queries"]
    with open_table(str(tmp_path / "n0.parquet")) as written:
        assert written.num_rows == K * 80


def test_precision_usage_errors(emb):
    path, _ = emb
    for args, words in [(["--precision-at", 3], "needs --label"),
                        (["--precision-at", 3, "--label", "label", "-o", "-"], "JSON on stdout"),
                        (["--precision-at", 5, "--label", "label", "-k", 3], "below --precision-at"),
                        (["--precision-at", 3, "--label", "nope"], "not a column"),
                        (["--label", "label"], "--label is for")]:
        result = run_tool("gal-knn", path, "--all", *args)
        assert result.returncode == 2, (args, result.stderr.decode())
        assert words in result.stderr.decode()


def test_query_columns_carry_each_query_own_values(tmp_path, emb):
    path, table = emb
    out = tmp_path / "n.parquet"
    run_tool("gal-knn", path, "--all", "-k", 3, "--query-columns", "ra,label", "-o", out, check=True)
    with open_table(str(out)) as written:
        got = written.read_all()
    assert got.column_names[:5] == ["query_id", "query_ra", "query_label", "rank", "neighbor_id"]
    by_id = {i: (ra, label) for i, ra, label in zip(*(table.column(c).to_pylist() for c in ("object_id", "ra",
                                                                                             "label")))}
    for query, ra, label in zip(*(got.column(c).to_pylist() for c in ("query_id", "query_ra", "query_label"))):
        assert (ra, label) == by_id[query]
    rows, _ = brute_force_neighbors(table, 3)
    ids = table.column("object_id").to_pylist()
    assert got.column("neighbor_id").to_pylist()[:3] == [ids[j] for j in rows[0]]
    # ids as queries too; a column EMB lacks is a usage error
    one = run_tool("gal-knn", path, "--query", 105, "-k", 2, "--query-columns", "label", check=True)
    streamed = pa.ipc.open_stream(pa.py_buffer(one.stdout)).read_all()
    assert streamed.column("query_label").to_pylist() == [by_id[105][1]] * 2
    bad = run_tool("gal-knn", path, "--query", 105, "--query-columns", "z")
    assert bad.returncode == 2 and "--query-columns z" in bad.stderr.decode()


def test_queries_from_a_table_a_csv_a_list_or_stdin(tmp_path, emb):
    path, table = emb
    want = run_tool("gal-knn", path, "--query", 107, "--query", 140, "-k", 3, check=True).stdout
    (tmp_path / "q.csv").write_text("ra,object_id\n1.0,107\n2.0,140\n")
    (tmp_path / "q.txt").write_text("107\n\n140\n")
    queries = write_table(pa.table({"object_id": pa.array([107, 140], pa.int64())}), str(tmp_path / "q.parquet"))
    for source in (tmp_path / "q.csv", tmp_path / "q.txt", queries):
        got = run_tool("gal-knn", path, "--queries", source, "-k", 3, check=True).stdout
        assert pa.ipc.open_stream(pa.py_buffer(got)).read_all().equals(pa.ipc.open_stream(pa.py_buffer(want))
                                                                       .read_all())
    piped = shell(f"printf 'object_id\\n107\\n140\\n' | gal-knn {path} --queries - -k 3 | gal-info --json -")
    assert piped.returncode == 0, piped.stderr.decode()
    assert json.loads(piped.stdout)["rows"] == 6
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    bad = run_tool("gal-knn", path, "--queries", tmp_path / "bad.csv")
    assert bad.returncode == 65 and "without an object_id column" in bad.stderr.decode()


def test_terminal_table_shows_whole_column_names(emb):
    import re

    path, _ = emb
    text = on_a_terminal("gal-knn", path, "--query", "101", "-k", "2", "--query-columns", "label", columns=60)
    lines = [line for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines() if line.strip()]
    header = lines[0].split()
    columns = ["query_id", "query_label", "rank", "neighbor_id", "similarity", "neighbor_ra", "neighbor_label"]
    assert header == columns[:len(header)] and len(header) >= 4    # whole names, in order, from the left
    first = next(i for i, line in enumerate(lines) if line.startswith("not shown"))
    note = " ".join(line.strip() for line in lines[first:])     # rich wraps the note at the terminal's width
    assert note.split(": ", 1)[1].split(";")[0].split(", ") == columns[len(header):]
    assert all(len(line) <= 60 for line in lines)
    assert "…" not in "".join(lines)
