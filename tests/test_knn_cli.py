"""gal-knn as a user runs it: real processes, pipes, files; results checked against a brute force and FAISS."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from conftest import brute_force as reference_neighbors
from conftest import embedding_table as table_of_embeddings
from conftest import ROOT, assert_clean_error, on_a_terminal, run_tool, tool_env, write_table
from galtools.io import open_table, tensor_column, vector_column

KNN = f"{shlex.quote(sys.executable)} -m galtools.cli.knn"
MODEL = "ab" * 32


def embedding_table(n=400, dim=16, seed=1, ids=None, centres=12):
    """Clustered embeddings with the carried columns gal-embed keeps (ra, dec, label)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centres, dim))
    labels = rng.integers(0, centres, n)
    vectors = (means[labels] + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)
    return table_of_embeddings(vectors, first_id=5000, ids=ids, ra=rng.uniform(0, 360, n), dec=rng.uniform(-20, 20, n),
                               label=[f"cluster{c}" for c in labels])


def vectors_of_table(table):
    return np.asarray(table.column("embedding").combine_chunks().values).reshape(table.num_rows, -1)


def reference(table, query_ids, k, least=False, exclude_self=True):
    """conftest's brute force (float64, ties by object_id) as (query, rank, neighbor id, similarity) rows."""
    vectors = vectors_of_table(table)
    ids = table.column("object_id").to_numpy()
    rows = [int(np.flatnonzero(ids == query)[0]) for query in query_ids]
    found, sims = reference_neighbors(vectors[rows], vectors, ids, k, exclude=rows if exclude_self else None,
                                      largest=not least)
    return [(query, rank + 1, int(ids[j]), s) for query, js, ss in zip(query_ids, found, sims)
            for rank, (j, s) in enumerate(zip(js, ss))]


def read_neighbours(path_or_bytes):
    if isinstance(path_or_bytes, bytes):
        return pa.ipc.open_stream(pa.py_buffer(path_or_bytes)).read_all()
    with open_table(str(path_or_bytes)) as table:
        return table.read_all().replace_schema_metadata(table.metadata)


def as_tuples(table):
    return list(zip(table.column("query_id").to_pylist(), table.column("rank").to_pylist(),
                    table.column("neighbor_id").to_pylist(), table.column("similarity").to_pylist()))


def assert_same_neighbours(got, want):
    assert [g[:3] for g in got] == [w[:3] for w in want]
    np.testing.assert_allclose([g[3] for g in got], [w[3] for w in want], atol=2e-6)


@pytest.fixture
def emb(tmp_path):
    table = embedding_table()
    return write_table(table, str(tmp_path / "emb.parquet"), **{"galtools.model_sha256": MODEL}), table


def test_query_to_parquet_matches_brute_force_and_carries_columns(tmp_path, emb):
    import duckdb

    path, table = emb
    out = tmp_path / "nbrs.parquet"
    run_tool("gal-knn", path, "--query", 5007, "--query", 5100, "-k", 6, "-o", out, check=True)
    rows = duckdb.sql(f"select query_id, rank, neighbor_id, similarity, neighbor_ra, neighbor_label "
                      f"from '{out}' order by query_id, rank").fetchall()  # a second reader of our Parquet
    assert_same_neighbours([r[:4] for r in rows], reference(table, [5007, 5100], 6))
    ra = dict(zip(table.column("object_id").to_pylist(), table.column("ra").to_pylist()))
    assert all(r[4] == ra[r[2]] for r in rows)
    written = read_neighbours(out)
    assert written.column_names == ["query_id", "rank", "neighbor_id", "similarity", "neighbor_ra", "neighbor_dec",
                                    "neighbor_label"]
    assert written.schema.metadata[b"galtools.model_sha256"].decode() == MODEL
    assert json.loads(written.schema.metadata[b"galtools.knn"])["k"] == 6


def test_real_pipe_stdin_to_stdout(tmp_path, emb):
    path, table = emb
    stream = tmp_path / "emb.arrows"
    with pa.OSFile(str(stream), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    command = f"cat {stream} | {KNN} - --query 5003 -k 4 | {sys.executable} -m galtools.cli.info -"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, env=tool_env(),
                            timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().startswith("stdin: 4 rows, 7 columns")
    direct = subprocess.run(["bash", "-o", "pipefail", "-c", f"cat {stream} | {KNN} - --query 5003 -k 4"],
                            capture_output=True, env=tool_env(), timeout=120)
    assert_same_neighbours(as_tuples(read_neighbours(direct.stdout)), reference(table, [5003], 4))


@pytest.mark.slow
def test_least_include_self_and_queries_file(tmp_path, emb):
    path, table = emb
    least = run_tool("gal-knn", path, "--query", 5010, "--least", "-k", 5, "-o", "-", check=True)
    assert_same_neighbours(as_tuples(read_neighbours(least.stdout)), reference(table, [5010], 5, least=True))
    with_self = run_tool("gal-knn", path, "--query", 5010, "--include-self", "-k", 3, "-o", "-", check=True)
    got = as_tuples(read_neighbours(with_self.stdout))
    assert got[0][2] == 5010 and got[0][3] == pytest.approx(1.0, abs=1e-6)
    assert_same_neighbours(got, reference(table, [5010], 3, exclude_self=False))
    (tmp_path / "ids.csv").write_text("object_id,note\n5001,a\n5002,b\n")
    (tmp_path / "ids.txt").write_text("5001\n5002\n")
    write_table(pa.table({"object_id": pa.array([5001, 5002], pa.int64())}), str(tmp_path / "ids.fits"))
    want = reference(table, [5001, 5002], 3)
    for name in ("ids.csv", "ids.txt", "ids.fits"):
        result = run_tool("gal-knn", path, "--queries", tmp_path / name, "-k", 3, "-o", "-", check=True)
        assert_same_neighbours(as_tuples(read_neighbours(result.stdout)), want)


def test_string_ids_and_ties_by_object_id(tmp_path):
    base = embedding_table(n=60, seed=3)
    vectors = vectors_of_table(base).copy()
    vectors[30:] = vectors[:30]  # every vector twice: similarity ties everywhere
    ids = np.array([f"g{n:03d}" for n in np.random.default_rng(0).permutation(60)])
    table = base.set_column(0, "object_id", pa.array(ids)).set_column(4, "embedding", vector_column(vectors))
    path = write_table(table, str(tmp_path / "emb.arrow"))
    query = ids[4]
    result = run_tool("gal-knn", path, "--query", query, "-k", 7, "--include-self", "-o", "-", check=True)
    got = as_tuples(read_neighbours(result.stdout))
    assert {got[0][2], got[1][2]} == {ids[4], ids[34]}
    assert got[0][2] == min(ids[4], ids[34])  # the tie is ordered by object_id
    for a, b in zip(got, got[1:]):
        assert a[3] > b[3] or (a[3] == b[3] and a[2] < b[2])


def test_all_rows_sharded_outputs_concatenate_to_the_whole(tmp_path):
    """Slurm-array parts are bit-identical to the unsharded run on any CPU: shards of 134, 134 and 133 rows of a
    401-row table (prime), shards of one row, and the tasks of a Slurm array all give the same bytes per row."""
    table = embedding_table(n=401, dim=48)
    path = write_table(table, str(tmp_path / "emb.parquet"), **{"galtools.model_sha256": MODEL})
    run_tool("gal-knn", path, "--all", "-k", 3, "-o", tmp_path / "all.parquet", check=True)
    whole = read_neighbours(tmp_path / "all.parquet").replace_schema_metadata(None)
    assert whole.num_rows == 3 * table.num_rows
    ids = table.column("object_id").to_pylist()
    assert_same_neighbours(as_tuples(whole)[:30], reference(table, ids[:10], 3))
    for i in range(3):
        run_tool("gal-knn", path, "--all", "-k", 3, "--shard", f"{i}/3", "-o", tmp_path / "part-{shard}.parquet",
                 check=True)
    # and once more through a Slurm array's environment instead of --shard
    env = dict(tool_env(), SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="3", SLURM_ARRAY_TASK_MIN="0")
    subprocess.run([sys.executable, "-m", "galtools.cli.knn", path, "--all", "-k", "3", "-o",
                    str(tmp_path / "slurm-{shard}.parquet")], env=env, check=True, capture_output=True)
    parts = [read_neighbours(tmp_path / f"part-{i}-of-3.parquet") for i in range(3)]
    assert sorted(p.num_rows for p in parts) == [399, 402, 402]
    joined = pa.concat_tables([p.replace_schema_metadata(None) for p in parts])
    assert joined.equals(whole)
    assert read_neighbours(tmp_path / "slurm-1-of-3.parquet").replace_schema_metadata(None).equals(
        parts[1].replace_schema_metadata(None))
    # shards of a single row: each is the same rows of the whole, to the bit
    for shard in ("0/400", "223/400", "399/400"):
        out = tmp_path / f"one-{shard.replace('/', '-')}.parquet"
        run_tool("gal-knn", path, "--all", "-k", 3, "--shard", shard, "-o", out, check=True)
        part = read_neighbours(out).replace_schema_metadata(None)
        assert part.num_rows in (3, 6)
        first = whole.column("query_id").to_pylist().index(part.column("query_id")[0].as_py())
        assert part.equals(whole.slice(first, part.num_rows))


@pytest.mark.slow
def test_index_flat_equals_exact_and_recall_is_printed(tmp_path, emb):
    path, table = emb
    exact = run_tool("gal-knn", path, "--query", 5020, "--query", 5021, "-k", 5, "-o", "-", check=True)
    built = run_tool("gal-knn", "index", path, "--kind", "flat", "--recall", "--sample", 100, check=True)
    assert built.stdout.decode().startswith("recall@10 = 1.0000 over 100 sampled queries (flat)")
    index = tmp_path / "emb.faiss"
    sidecar = json.loads((tmp_path / "emb.faiss.json").read_text())
    assert sidecar["kind"] == "flat" and sidecar["metric"] == "cosine" and sidecar["model_sha256"] == MODEL
    assert sidecar["count"] == table.num_rows and sidecar["recall"]["value"] == 1.0
    via_index = run_tool("gal-knn", path, "--index", index, "--query", 5020, "--query", 5021, "-k", 5, "-o", "-",
                         check=True)
    a, b = as_tuples(read_neighbours(exact.stdout)), as_tuples(read_neighbours(via_index.stdout))
    assert [x[:3] for x in a] == [x[:3] for x in b]
    np.testing.assert_allclose([x[3] for x in a], [x[3] for x in b], atol=1e-5)
    # --all through the index (its stored vectors are the queries) equals exact --all
    exact_all = run_tool("gal-knn", path, "--all", "-k", 3, "-o", "-", check=True)
    index_all = run_tool("gal-knn", path, "--all", "-k", 3, "--index", index, "-o", "-", check=True)
    a, b = as_tuples(read_neighbours(exact_all.stdout)), as_tuples(read_neighbours(index_all.stdout))
    assert [x[:3] for x in a] == [x[:3] for x in b] and len(a) == 3 * table.num_rows
    again = run_tool("gal-knn", "index", path, "--kind", "flat")
    assert_clean_error(again, 1, "already exists", "--overwrite")


@pytest.mark.parametrize("kind,options", [("ivf", ["--nlist", "64", "--nprobe", "4"]),
                                          ("hnsw", ["--m", "4", "--ef-construction", "40"])])
def test_approximate_index_recall_on_clustered_data(tmp_path, kind, options):
    table = embedding_table(n=3000, dim=24, seed=4, centres=40)
    path = write_table(table, str(tmp_path / "emb.parquet"))
    out = run_tool("gal-knn", "index", path, "--kind", kind, *options, "--recall", "--sample", 300,
                   "-o", tmp_path / f"{kind}.faiss", check=True).stdout.decode()
    recall = float(out.split("=")[1].split()[0])
    assert recall >= 0.9, out
    # --nprobe / --ef at query time change the search: a starved one must lose neighbours on some query
    starved = "--nprobe" if kind == "ivf" else "--ef"
    queries = [str(i) for i in range(5000, 5060)]
    args = ["-k", "10", "-o", "-", "--index", tmp_path / f"{kind}.faiss"] + sum([["--query", q] for q in queries], [])
    good = as_tuples(read_neighbours(run_tool("gal-knn", path, *args, check=True).stdout))
    poor = as_tuples(read_neighbours(run_tool("gal-knn", path, *args, starved, 1, check=True).stdout))
    truth = reference(table, [int(q) for q in queries], 10)
    hits = lambda got: len({(g[0], g[2]) for g in got} & {(t[0], t[2]) for t in truth})  # noqa: E731
    assert hits(poor) < hits(good)


def test_stale_or_mismatched_index_exits_65(tmp_path, emb):
    path, table = emb
    run_tool("gal-knn", "index", path, "--kind", "ivf", "--nlist", 8, "-o", tmp_path / "i.faiss", check=True)
    changed = vectors_of_table(table).copy()
    changed[7, 0] += 0.5
    write_table(table.set_column(4, "embedding", vector_column(changed)), str(tmp_path / "changed.parquet"),
                **{"galtools.model_sha256": MODEL})
    stale = run_tool("gal-knn", tmp_path / "changed.parquet", "--index", tmp_path / "i.faiss", "--query", 5001)
    assert_clean_error(stale, 65, "stale", "rebuild")
    write_table(table, str(tmp_path / "other.parquet"), **{"galtools.model_sha256": "cd" * 32})
    other = run_tool("gal-knn", tmp_path / "other.parquet", "--index", tmp_path / "i.faiss", "--query", 5001)
    assert_clean_error(other, 65, "another model")
    (tmp_path / "i.faiss.json").unlink()
    bare = run_tool("gal-knn", path, "--index", tmp_path / "i.faiss", "--query", 5001)
    assert_clean_error(bare, 65, "no sidecar")


def test_errors_are_one_line_with_documented_codes(tmp_path, emb):
    path, table = emb
    assert_clean_error(run_tool("gal-knn", path, "--query", 12), 65, "object_id 12 not in", "400 ids", "e.g. 5000")
    assert_clean_error(run_tool("gal-knn", path, "--query", "abc"), 65, "'abc' not in")
    assert_clean_error(run_tool("gal-knn", path, "--query", 5001, "-k", 400), 65, "k=400", "399")
    assert_clean_error(run_tool("gal-knn", path, "--all", "-k", 400, "-o", tmp_path / "x.parquet"), 65, "k=400")
    assert not (tmp_path / "x.parquet").exists()
    assert_clean_error(run_tool("gal-knn", path), 2, "exactly one kind of query")
    assert_clean_error(run_tool("gal-knn", tmp_path / "missing.parquet", "--query", 1), 66, "no such file")
    vectors = vectors_of_table(table).copy()
    vectors[9, 3] = np.nan
    nan_path = write_table(table.set_column(4, "embedding", vector_column(vectors)), str(tmp_path / "nan.parquet"))
    assert_clean_error(run_tool("gal-knn", nan_path, "--query", 5001), 65, "NaN", "object_id 5009")
    parts = tmp_path / "parts"
    parts.mkdir()
    write_table(table.slice(0, 200), str(parts / "a.parquet"), **{"galtools.model_sha256": MODEL})
    write_table(table.slice(200), str(parts / "b.parquet"), **{"galtools.model_sha256": "cd" * 32})
    assert_clean_error(run_tool("gal-knn", parts, "--query", 5001), 65, "2 models")
    os.remove(parts / "b.parquet")
    write_table(table.slice(200), str(parts / "b.parquet"), **{"galtools.model_sha256": MODEL})
    assert run_tool("gal-knn", parts, "--query", 5001, "-o", "-").returncode == 0  # same model: one table
    no_emb = write_table(table.drop_columns(["embedding"]), str(tmp_path / "noemb.parquet"))
    assert_clean_error(run_tool("gal-knn", no_emb, "--query", 5001), 65, "no 'embedding' column")
    (tmp_path / "taken.parquet").write_bytes(b"x")
    assert_clean_error(run_tool("gal-knn", path, "--query", 5001, "-o", tmp_path / "taken.parquet"), 1,
                       "already exists")


def test_terminal_gets_a_readable_table(emb):
    path, table = emb
    text = on_a_terminal("gal-knn", path, "--query", "5002", "-k", "3", columns=160)
    assert "neighbor_id" in text and "similarity" in text
    for query, rank, neighbour, similarity in reference(table, [5002], 3):
        assert str(neighbour) in text and f"{similarity:.4f}" in text


def test_montage_places_query_and_neighbours_in_order(tmp_path, emb):
    from PIL import Image

    from galtools.viz import rgb_composite

    path, table = emb
    rng = np.random.default_rng(2)
    images = rng.gamma(2.0, 1.0, (table.num_rows, 3, 12, 12)).astype(np.float32)
    cutouts = pa.table({"object_id": table.column("object_id"), "image": tensor_column(images)})
    cutouts_path = write_table(cutouts, str(tmp_path / "cutouts.fits"), bands="g,r,i")
    png = tmp_path / "m.png"
    run_tool("gal-knn", path, "--query", 5005, "--query", 5006, "-k", 4, "--montage", png, "--images", cutouts_path,
             "--label", "label", "-o", tmp_path / "n.parquet", check=True)
    picture = np.asarray(Image.open(png).convert("RGB"))
    want = reference(table, [5005, 5006], 4)
    ids = table.column("object_id").to_pylist()
    # every row's first picture is the query, then its neighbours in rank order; compare the cells' centres
    cell = 96
    height_per_row = (picture.shape[0] - 12 - 8 - 4) // 2
    for r, query in enumerate([5005, 5006]):
        order = [query] + [w[2] for w in want if w[0] == query]
        composites = rgb_composite(images[[ids.index(i) for i in order]], ["g", "r", "i"])
        y = 12 + 8 + r * height_per_row + 4
        for c, expected in enumerate(composites):
            x = c * (cell + 4) + 4
            centre = picture[y + cell // 2, x + cell // 2]
            np.testing.assert_array_equal(centre, expected[6, 6])
    assert picture.shape[1] == 5 * (cell + 4) + 4


def test_help_is_fast_and_imports_no_torch_or_faiss(emb):
    path, _ = emb
    code = ("import sys\nfrom galtools.cli.knn import main\n"
            "for args in (['--help'], ['index', '--help'], [sys.argv[1], '--query', '5001', '-o', '/dev/null', "
            "'--format', 'arrow-stream', '--overwrite']):\n"
            "    try:\n        main(args)\n    except SystemExit as exc:\n        assert exc.code == 0, exc.code\n"
            "print(sorted(m for m in ('torch', 'faiss', 'onnxruntime', 'sklearn') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, path], capture_output=True, cwd=ROOT, env=tool_env())
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip().splitlines()[-1] == "[]"
