"""gal-view over a survey through a compressed gal-knn index (galtools.view.survey): the real server as a process;
search over every object equal to gal-knn through the same index, captions and pictures read by row, the map and
its filters over a sample."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import make_cutouts, run_tool, write_table
from galtools.io import images_of
from test_knn_scale import clustered, write_in_row_groups
from test_view import Viewer, query

pytest.importorskip("faiss")
N, SAMPLE, K = 3_000, 400, 8


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("view-survey")
    cutouts = make_cutouts(N, size=8, seed=2)
    write_table(cutouts, str(tmp / "cutouts.arrow"))
    emb = clustered(n=N, seed=6, ids=cutouts.column("object_id").to_numpy())
    emb = emb.append_column("mag", pa.array(np.random.default_rng(1).uniform(16, 22, N)))
    path = write_in_row_groups(emb, tmp / "emb.parquet", rows_per_group=500)
    run_tool("gal-knn", "index", path, "--kind", "ivfsq8", "--nlist", 20, "-o", tmp / "emb.faiss", check=True)
    server = Viewer(path, "--images", tmp / "cutouts.arrow", "--index", tmp / "emb.faiss", "--sample", SAMPLE,
                    "--label", "label", "--columns", "mag", "-k", K)
    yield {"tmp": tmp, "path": path, "emb": emb, "cutouts": cutouts, "server": server}
    code, err = server.stop()
    assert code == 0, err


def gal_knn(survey, ids, k):
    out = survey["tmp"] / f"knn-{k}-{ids[0]}.parquet"
    run_tool("gal-knn", survey["path"], "--index", survey["tmp"] / "emb.faiss",
             *[a for i in ids for a in ("--query", i)], "-k", k, "-o", out, check=True)
    return pq.read_table(out)


def test_search_covers_the_survey_and_equals_gal_knn(survey):
    server, emb = survey["server"], survey["emb"]
    info = server.json("/api/info")
    assert info["count"] == N and info["sample"] == SAMPLE and "ivfsq8" in info["search"]
    points = server.json("/api/points")
    assert points["count"] == SAMPLE and len(set(points["ids"])) == SAMPLE
    outside = [i for i in emb.column("object_id").to_pylist() if i not in set(points["ids"])][:3]
    expected = gal_knn(survey, outside, K)
    body = server.json("/api/search?" + query(id=outside))
    mag = dict(zip(emb.column("object_id").to_pylist(), emb.column("mag").to_pylist()))
    label = dict(zip(emb.column("object_id").to_pylist(), emb.column("label").to_pylist()))
    for result in body["results"]:
        rows = expected.filter(pc.equal(expected.column("query_id"), result["query"]["id"]))
        assert [n["id"] for n in result["neighbors"]] == rows.column("neighbor_id").to_pylist()
        np.testing.assert_allclose([n["similarity"] for n in result["neighbors"]],
                                   rows.column("similarity").to_numpy(), atol=1e-6, rtol=0)
        for shown in [result["query"], *result["neighbors"]]:     # captions read by row from the table
            assert shown["label"] == label[shown["id"]] and shown["columns"]["mag"] == pytest.approx(mag[shown["id"]])
            assert shown["has_image"]
    # an object of the sample sits where the map draws it
    sampled = points["ids"][7]
    query_shown = server.json("/api/search?" + query(id=sampled, k=1))["results"][0]["query"]
    assert (query_shown["x"], query_shown["y"]) == pytest.approx((points["x"][7], points["y"][7]), abs=2e-5)
    assert server.json("/api/search?" + query(id=999_999), expect=404)["error"]


def test_a_filtered_search_reads_the_candidates_by_row(survey):
    server, emb = survey["server"], survey["emb"]
    expression = "mag < 19"
    keep = dict(zip(emb.column("object_id").to_pylist(), (emb.column("mag").to_numpy() < 19).tolist()))
    target = emb.column("object_id")[1234].as_py()
    # the viewer asks the index for 64 candidates (65 less the query itself), as gal-knn -k 64 does
    candidates = gal_knn(survey, [target], 64).column("neighbor_id").to_pylist()
    want = [i for i in candidates if keep[i]][:K]
    assert len(want) == K
    got = server.json("/api/search?" + query(id=target, filter=expression))["results"][0]["neighbors"]
    assert [n["id"] for n in got] == want
    points = server.json("/api/points?" + query(filter=expression))
    assert points["count"] == sum(keep[i] for i in server.json("/api/points")["ids"]) and points["total"] == SAMPLE


def test_pictures_of_any_object_and_refusals(survey, tmp_path):
    from PIL import Image

    from galtools.viz import rgb_composite

    server, cutouts = survey["server"], survey["cutouts"]
    for row in (0, 1999, N - 1):
        object_id = cutouts.column("object_id")[row].as_py()
        status, kind, body = server.get(f"/api/tile?id={object_id}")
        assert status == 200 and kind == "image/png"
        picture = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
        np.testing.assert_array_equal(picture, rgb_composite(images_of(cutouts.slice(row, 1)), ["g", "r", "i"])[0])
    tmp = survey["tmp"]
    for extra in (["--map", survey["path"]], ["--labels", tmp_path / "labels.csv"]):
        result = run_tool("gal-view", survey["path"], "--images", tmp / "cutouts.arrow", "--index", tmp / "emb.faiss",
                          *extra)
        assert result.returncode == 2 and result.stderr.decode().count("\n") == 1, result.stderr.decode()


def test_a_survey_of_ids_and_vectors_only(survey):
    """An embedding table that carries nothing but object_id and embedding (no column to caption or filter by):
    gal-view serves it through the index, and its search equals gal-knn's."""
    tmp = survey["tmp"]
    plain = write_in_row_groups(survey["emb"].select(["object_id", "embedding"]), tmp / "plain.parquet",
                                rows_per_group=500)
    run_tool("gal-knn", "index", plain, "--kind", "ivfsq8", "--nlist", 20, "-o", tmp / "plain.faiss", check=True)
    server = Viewer(plain, "--images", tmp / "cutouts.arrow", "--index", tmp / "plain.faiss", "--sample", SAMPLE,
                    "-k", K)
    try:
        assert server.json("/api/info")["count"] == N and server.json("/api/points")["count"] == SAMPLE
        target = survey["emb"].column("object_id")[N - 5].as_py()
        got = server.json("/api/search?" + query(id=target))["results"][0]["neighbors"]
        out = tmp / "plain-knn.parquet"
        run_tool("gal-knn", plain, "--index", tmp / "plain.faiss", "--query", target, "-k", K, "-o", out, check=True)
        assert [n["id"] for n in got] == pq.read_table(out).column("neighbor_id").to_pylist()
        assert all(n["has_image"] for n in got)
    finally:
        code, err = server.stop()
    assert code == 0, err
