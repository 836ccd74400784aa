"""gal-view as users run it: the real server as a process on a free port over tables made by gal-sim, gal-train
(conftest's trained_run), gal-embed, gal-map and gal-knn index; its JSON and PNGs checked against gal-knn, numpy and
the montage colours; errors; the static export; and the filter language."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from conftest import brute_force as reference_neighbors
from conftest import ROOT, built_once, make_cutouts, run_tool, tool_command, write_table

from galtools.io import images_of, open_table, vectors_of

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

N_OBJECTS = 160
SIMILARITY_TOLERANCE = 2e-6   # float32 dot products of unit vectors computed in different block shapes
_WORLD: dict = {}


def env():
    return {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}


def _build_world(folder, model) -> None:
    run_tool("gal-sim", "-n", N_OBJECTS, "--seed", 5, "--anomaly-fraction", 0.05, "-j", 1, "-q", "-o",
             folder / "sim.arrow", check=True, env=env())
    run_tool("gal-embed", folder / "sim.arrow", "--model", model, "--device", "cpu", "-q", "-o", folder / "emb.parquet",
             check=True, env=env())
    run_tool("gal-map", folder / "emb.parquet", "-q", "-o", folder / "map.parquet", check=True, env=env())
    run_tool("gal-knn", "index", folder / "emb.parquet", "--kind", "flat", "-q", "-o", folder / "emb.faiss",
             check=True, env=env())


def make_world(tmp_path_factory, trained_run) -> dict:
    """Cutouts (gal-sim, Arrow), their embeddings by conftest's trained encoder (a few steps of gal-train), a map
    and a flat index: made once for the whole test run (read only) and shared with the browser test; ``scratch``,
    a folder of this process's own for what the tests write."""
    if _WORLD:
        return _WORLD
    folder = built_once(tmp_path_factory, "view-world", lambda f: _build_world(f, trained_run / "encoder.onnx"))
    with open_table(str(folder / "emb.parquet")) as table:
        emb = table.read_all()
    with open_table(str(folder / "sim.arrow")) as table:
        cutouts, bands = table.read_all(), table.bands
    with open_table(str(folder / "map.parquet")) as table:
        mapped = table.read_all()
    _WORLD.update(folder=folder, emb=emb, cutouts=cutouts, bands=bands, map=mapped,
                  scratch=tmp_path_factory.mktemp("view-out"))
    return _WORLD


@pytest.fixture(scope="module")
def world(tmp_path_factory, trained_run):
    return make_world(tmp_path_factory, trained_run)


class Viewer:
    """A gal-view process and its URL; torch is blocked in it, to prove the server never imports it."""

    def __init__(self, *args):
        code = ("import sys; sys.modules['torch'] = None; from galtools.cli.view import main; "
                "sys.argv = ['gal-view'] + sys.argv[1:]; main()")
        self.process = subprocess.Popen([sys.executable, "-c", code, *[str(a) for a in args]], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=env())
        line = self.process.stdout.readline().decode().strip()
        if not line.startswith("http://127.0.0.1:"):
            self.process.kill()
            raise AssertionError(f"no URL from gal-view: {line!r} {self.process.stderr.read().decode()}")
        self.url = line

    def get(self, path: str, headers=None, method="GET"):
        """(status, content type, body bytes) of one request."""
        request = urllib.request.Request(self.url.rstrip("/") + path, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.headers.get("Content-Type"), response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("Content-Type"), error.read()

    def json(self, path: str, expect: int = 200):
        status, kind, body = self.get(path)
        assert status == expect and kind.startswith("application/json"), (status, kind, body[:300])
        return json.loads(body)

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        try:
            _, err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        return self.process.returncode, err.decode()


def query(**params) -> str:
    return urllib.parse.urlencode(params, doseq=True)


@pytest.fixture(scope="module")
def viewer(world):
    folder = world["folder"]
    server = Viewer(folder / "emb.parquet", "--images", folder / "sim.arrow", "--map", folder / "map.parquet",
                    "--label", "morph_class", "--columns", "z_true,mag_r", "-k", 6)
    yield server
    code, err = server.stop()
    assert code == 0 and "stopped by SIGTERM" in err, (code, err)


@pytest.fixture(scope="module")
def indexed_viewer(world):
    folder = world["folder"]
    server = Viewer(folder / "emb.parquet", "--images", folder / "sim.arrow", "--index", folder / "emb.faiss")
    yield server
    code, err = server.stop()
    assert code == 0, err


def knn(world, ids, k, *extra) -> pa.Table:
    out = world["scratch"] / f"knn-{time.monotonic_ns()}.parquet"
    args = [a for i in ids for a in ("--query", i)]
    run_tool("gal-knn", world["folder"] / "emb.parquet", *args, "-k", k, *extra, "-o", out, check=True, env=env())
    with open_table(str(out)) as table:
        return table.read_all()


def brute_force(world, query_id, k, mask=None, least=False):
    """Independent reference: every cosine similarity with numpy in float64, self left out, ties by object_id."""
    emb = world["emb"]
    vectors = vectors_of(emb, "embedding")
    ids = emb.column("object_id").to_numpy()
    row = int(np.flatnonzero(ids == query_id)[0])
    keep = np.ones(len(ids), bool) if mask is None else mask.copy()
    keep[row] = False
    candidates = np.flatnonzero(keep)
    rows, similarity = reference_neighbors(vectors[[row]], vectors[candidates], ids[candidates], k, largest=not least)
    return ids[candidates[rows[0]]].tolist(), similarity[0]


def test_neighbours_equal_gal_knn_most_and_least(viewer, world):
    ids = [3, 77, 150]
    for extra, least in (((), 0), (("--least",), 1)):
        expected = knn(world, ids, 6, *extra)
        body = viewer.json("/api/search?" + query(id=" ".join(map(str, ids[:2])) + f",{ids[2]}", least=least))
        assert [r["query"]["id"] for r in body["results"]] == ids
        for result in body["results"]:
            rows = expected.filter(pc.equal(expected.column("query_id"), result["query"]["id"]))
            assert [n["id"] for n in result["neighbors"]] == rows.column("neighbor_id").to_pylist()
            assert [n["rank"] for n in result["neighbors"]] == rows.column("rank").to_pylist()
            np.testing.assert_allclose([n["similarity"] for n in result["neighbors"]],
                                       rows.column("similarity").to_numpy(), atol=SIMILARITY_TOLERANCE, rtol=0)
            for n in result["neighbors"]:   # captions: the chosen columns of the right rows
                row = world["emb"].filter(pc.equal(world["emb"].column("object_id"), n["id"]))
                assert n["label"] == row.column("morph_class")[0].as_py()
                assert n["columns"]["z_true"] == pytest.approx(row.column("z_true")[0].as_py(), rel=1e-6)
                assert set(n["columns"]) == {"z_true", "mag_r"} and n["has_image"]
    body = viewer.json("/api/search?" + query(id=3, k=25))
    reference, similarity = brute_force(world, 3, 25)
    assert [n["id"] for n in body["results"][0]["neighbors"]] == reference
    np.testing.assert_allclose([n["similarity"] for n in body["results"][0]["neighbors"]], similarity,
                               atol=SIMILARITY_TOLERANCE, rtol=0)


def test_search_through_the_index_equals_gal_knn_with_it(indexed_viewer, world):
    expected = knn(world, [10, 11], 10, "--index", world["folder"] / "emb.faiss")
    body = indexed_viewer.json("/api/search?" + query(id=[10, 11]))
    assert indexed_viewer.json("/api/info")["search"] == "FAISS flat index"
    for result in body["results"]:
        rows = expected.filter(pc.equal(expected.column("query_id"), result["query"]["id"]))
        assert [n["id"] for n in result["neighbors"]] == rows.column("neighbor_id").to_pylist()
        np.testing.assert_allclose([n["similarity"] for n in result["neighbors"]],
                                   rows.column("similarity").to_numpy(), atol=SIMILARITY_TOLERANCE, rtol=0)


def test_a_filter_restricts_search_points_and_selection(viewer, indexed_viewer, world):
    expression = 'z_true < 0.12 and morph_class == "disk" or not (mag_r <= 17.2)'
    emb = world["emb"]
    z, mag = emb.column("z_true").to_numpy(), emb.column("mag_r").to_numpy()
    disk = np.array([c == "disk" for c in emb.column("morph_class").to_pylist()])
    mask = ((z < 0.12) & disk) | ~(mag <= 17.2)
    assert 10 < mask.sum() < N_OBJECTS - 10
    ids = emb.column("object_id").to_numpy()
    for server in (viewer, indexed_viewer):
        for least in (0, 1):
            body = server.json("/api/search?" + query(id=42, k=7, least=least, filter=expression))
            reference, similarity = brute_force(world, 42, 7, mask, bool(least))
            assert [n["id"] for n in body["results"][0]["neighbors"]] == reference
            np.testing.assert_allclose([n["similarity"] for n in body["results"][0]["neighbors"]], similarity,
                                       atol=SIMILARITY_TOLERANCE, rtol=0)
    points = viewer.json("/api/points?" + query(filter=expression, colour="z_true"))
    assert points["count"] == mask.sum() and points["total"] == N_OBJECTS
    assert points["ids"] == ids[mask].tolist()
    mapped = world["map"]
    by_id = dict(zip(mapped.column("object_id").to_pylist(), zip(mapped.column("map_x").to_pylist(),
                                                                 mapped.column("map_y").to_pylist())))
    np.testing.assert_allclose(np.column_stack([points["x"], points["y"]]), [by_id[i] for i in points["ids"]],
                               atol=1e-5, rtol=0)
    assert points["colour"]["kind"] == "number"
    np.testing.assert_allclose(points["colour"]["values"], z[mask], atol=5.1e-7, rtol=0)   # sent to 6 decimals
    categories = viewer.json("/api/points?" + query(colour="morph_class"))["colour"]
    assert [categories["categories"][c] for c in categories["values"]] == emb.column("morph_class").to_pylist()
    filtered = viewer.json("/api/points?" + query(colour="morph_class", filter=expression))["colour"]
    assert filtered["categories"] == categories["categories"]     # a filter keeps each class's colour
    assert [filtered["categories"][c] for c in filtered["values"]] == \
        [c for c, keep in zip(emb.column("morph_class").to_pylist(), mask) if keep]
    status, kind, body = viewer.get("/api/selection.csv?" + query(filter=expression))
    assert status == 200 and kind.startswith("text/csv")
    lines = body.decode().splitlines()
    assert lines[0] == "object_id" and [int(v) for v in lines[1:]] == ids[mask].tolist()


def test_tiles_are_the_montage_colours_of_the_right_cutout(viewer, world):
    from PIL import Image

    from galtools.viz import rgb_composite

    cutouts = world["cutouts"]
    for object_id in (0, 57, 159):
        status, kind, body = viewer.get(f"/api/tile?id={object_id}")
        assert status == 200 and kind == "image/png"
        picture = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
        row = cutouts.filter(pc.equal(cutouts.column("object_id"), object_id))
        expected = rgb_composite(images_of(row), world["bands"])[0]
        np.testing.assert_array_equal(picture, expected)   # same function, same single image: exact
        assert picture.std() > 5


def test_cutouts_read_by_row_from_arrow_parquet_and_fits_agree(world, tmp_path):
    from galtools.view.images import CutoutReader

    cutouts = world["cutouts"]
    shuffled = cutouts.take(pa.array(np.random.default_rng(0).permutation(cutouts.num_rows)))
    paths = [write_table(shuffled, str(tmp_path / f"c.{ext}"), bands="u,g,r,i,z") for ext in ("parquet", "fits")]
    wanted = [5, 150, 6, 77, 5]
    truth = {v: images_of(cutouts)[i] for i, v in enumerate(cutouts.column("object_id").to_pylist())}
    for path in [str(world["folder"] / "sim.arrow")] + paths:
        with open_table(path) as table:
            reader = CutoutReader(table, rgb="i,r,g")
            for object_id in wanted:
                np.testing.assert_array_equal(reader.image(reader.row_of(object_id)), truth[object_id])
            assert reader.row_of(10_000) is None and reader.tile(10_000) is None
            default = CutoutReader(table)
            assert reader.tile(5) == default.tile(5)      # i,r,g is the montages' default choice
            assert CutoutReader(table, rgb="g,r,i").tile(5) != reader.tile(5)


def test_errors_are_clear_and_the_server_keeps_serving(viewer):
    cases = [("/api/search?id=99999", 404, "object_id 99999 is not among the 160 objects"),
             ("/api/search?id=abc", 404, "object_id 'abc'"),
             ("/api/tile?id=12345678", 404, "12345678"),
             ("/api/search?" + query(id=3, filter="z_true <"), 400, "ends too early at character 9"),
             ("/api/search?" + query(id=3, filter='mag_r < 18 and (morph_class == "disk"'), 400, "missing ')'"),
             ("/api/points?" + query(filter="__import__('os').system('true')"), 400, "unexpected character '.'"),
             ("/api/points?" + query(filter="nosuch > 1"), 400, "no column 'nosuch'"),
             ("/api/points?" + query(filter='mag_r < "bright"'), 400, "cannot compare column 'mag_r'"),
             ("/api/points?" + query(filter="mag_r"), 400, "not a condition"),
             ("/api/search?" + query(id=3, k=0), 400, "k=0 is out of range"),
             ("/api/search?" + query(id=3, k="ten"), 400, "'ten' is not a number"),
             ("/api/search", 400, "no object_id to search for"),
             ("/api/points?colour=nosuch", 400, "no column 'nosuch'"),
             ("/api/nothing", 404, "nothing at /api/nothing")]
    for path, status, words in cases:
        got, kind, body = viewer.get(path)
        assert got == status and kind.startswith("application/json"), (path, got, body[:200])
        assert words in json.loads(body)["error"], (path, body)
    for path in ("/../../etc/passwd", "/static/..%2F..%2Fcli%2Fview.py", "/static/app.py", "/etc/passwd",
                 "/static/%2e%2e/catalogue.py"):
        got, kind, body = viewer.get(path)
        assert got == 404 and kind.startswith("text/html") and b"nothing at" in body or b"no file" in body, path
        assert b"import" not in body and b"root:" not in body
    assert viewer.get("/api/search?id=3", method="POST")[0] == 405
    assert viewer.get("/api/info", headers={"Host": "evil.example.com"})[0] == 400   # DNS rebinding guard
    assert viewer.json("/api/info")["count"] == N_OBJECTS
    status, kind, page = viewer.get("/")
    assert status == 200 and kind.startswith("text/html") and b"/static/app.js" in page
    for name, kind_expected in (("app.js", "text/javascript"), ("style.css", "text/css")):
        status, kind, _ = viewer.get(f"/static/{name}")
        assert status == 200 and kind.startswith(kind_expected)


def test_a_missing_tile_does_not_show_where_the_tables_are(viewer, world):
    folder = str(world["folder"])
    assert os.path.isabs(folder)
    status, kind, body = viewer.get("/api/tile?id=12345678")
    assert status == 404 and b"12345678" in body and b"sim.arrow" in body, body
    assert folder.encode() not in body and os.path.dirname(folder).encode() not in body, body
    from galtools.view.server import without_folders

    assert without_folders(f"cannot read {folder}/sim.arrow: truncated") == "cannot read sim.arrow: truncated"
    assert without_folders("nothing at /api/nothing, 1/2") == "nothing at nothing, 1/2"


def nested(depth: int) -> str:
    return "(" * depth + "mag_r < 30" + ")" * depth


def test_deeply_nested_filters_are_a_400_and_exit_2_in_one_line(world, tmp_path):
    """199 nested parentheses once overflowed the parser's recursion: HTTP 500 with a traceback of thousands of
    lines per request, and exit 1 from --export."""
    folder = world["folder"]
    server = Viewer(folder / "emb.parquet", "--images", folder / "sim.arrow")
    try:
        for route in ("/api/points?", "/api/search?id=3&", "/api/selection.csv?"):
            status, kind, body = server.get(route + query(filter=nested(199)))
            assert status == 400 and kind.startswith("application/json"), (route, status, body[:300])
            error = json.loads(body)["error"]
            assert "nested more than 50 deep at character 51" in error and len(error) < 300, error
        within = server.json("/api/points?" + query(filter=nested(50)))   # the limit itself is allowed
        assert len(within["ids"]) == N_OBJECTS
        chained = " and ".join(["mag_r < 30"] * 120)                       # long chains are not nesting
        assert len(server.json("/api/points?" + query(filter=chained))["ids"]) == N_OBJECTS
    finally:
        code, err = server.stop()
    assert code == 0 and "Traceback" not in err and "RecursionError" not in err, err[-2000:]
    assert len(err.splitlines()) < 20, err[-2000:]
    ids = tmp_path / "ids.txt"
    ids.write_text("12\n")
    result = run_tool("gal-view", folder / "emb.parquet", "--images", folder / "sim.arrow", "--export",
                      tmp_path / "site", "--queries", ids, "--filter", nested(199), env=env())
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("gal-view: error: filter '((("), lines
    assert "nested more than 50 deep" in lines[0] and len(lines[0]) < 300
    assert not (tmp_path / "site").exists()


def test_reused_connections_do_not_wait_for_delayed_acks(viewer):
    """Browsers keep a connection open; without TCP_NODELAY every response on it waited for the client's
    delayed ACK (40 ms on Linux) while a new connection each time did not."""
    import http.client
    import socket
    import statistics

    from galtools.view.server import bind

    listener = bind("127.0.0.1", 0)
    try:
        assert listener.proto == socket.IPPROTO_TCP   # asyncio sets TCP_NODELAY on what it accepts only then
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        listener.close()
    host, port = viewer.url.split("//")[1].strip("/").rsplit(":", 1)
    assert viewer.get("/api/tile?id=3")[0] == 200   # cached from now on

    def fetch(connection) -> float:
        begin = time.perf_counter()
        connection.request("GET", "/api/tile?id=3")
        response = connection.getresponse()
        assert response.status == 200 and response.read()[:4] == b"\x89PNG"
        return time.perf_counter() - begin

    reused, fresh = [], []
    kept = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        for _ in range(15):
            reused.append(fetch(kept))
            connection = http.client.HTTPConnection(host, int(port), timeout=60)
            fresh.append(fetch(connection))
            connection.close()
    finally:
        kept.close()
    # the same machine and load for both; a delayed ACK would add >= 40 ms to every reused request
    assert statistics.median(reused) < statistics.median(fresh) + 0.020, (reused, fresh)


def test_static_export_writes_pages_and_tiles_of_gal_knn_neighbours(world, tmp_path):
    from PIL import Image

    from galtools.viz import rgb_composite

    folder = world["folder"]
    queries = tmp_path / "ids.txt"
    queries.write_text("# queries\n12\n\n140\n")
    site = tmp_path / "site"
    args = [folder / "emb.parquet", "--images", folder / "sim.arrow", "--export", site, "--queries", queries,
            "-k", 5, "--label", "morph_class"]
    result = run_tool("gal-view", *args, env=env())
    assert result.returncode == 0, result.stderr.decode()
    assert sorted(os.listdir(site)) == ["index.html", "query-0001.html", "query-0002.html", "style.css", "tiles"]
    expected = knn(world, [12, 140], 5)
    page = (site / "query-0002.html").read_text()
    neighbours = expected.filter(pc.equal(expected.column("query_id"), 140)).column("neighbor_id").to_pylist()
    positions = [page.index(f'<div class="id">{n}</div>') for n in [140] + neighbours]
    assert positions == sorted(positions)       # the query, then gal-knn's neighbours in order
    emb_ids = world["emb"].column("object_id").to_pylist()
    cutouts = world["cutouts"]
    row = emb_ids.index(neighbours[0])
    picture = np.asarray(Image.open(site / "tiles" / f"{row}.png").convert("RGB"))
    image = images_of(cutouts.filter(pc.equal(cutouts.column("object_id"), neighbours[0])))
    np.testing.assert_array_equal(picture, rgb_composite(image, world["bands"])[0])
    filtered = tmp_path / "filtered"
    assert run_tool("gal-view", *args[:4], filtered, *args[5:], "--filter", 'morph_class == "disk"', env=env()) \
        .returncode == 0
    disk = np.array([c == "disk" for c in world["emb"].column("morph_class").to_pylist()])
    page = (filtered / "query-0001.html").read_text()
    shown = [int(part.split("<")[0]) for part in page.split('<div class="id">')[1:]]
    assert shown == [12] + brute_force(world, 12, 5, disk)[0]
    again = run_tool("gal-view", *args, env=env())
    assert again.returncode == 1 and "already exists (pass --overwrite" in again.stderr.decode()
    assert run_tool("gal-view", *args, "--overwrite", "--least", env=env()).returncode == 0
    assert "least similar" in (site / "query-0001.html").read_text()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".site")]


def test_command_errors_have_documented_exit_codes(world, tmp_path):
    folder = world["folder"]
    emb, cutouts = folder / "emb.parquet", folder / "sim.arrow"
    cases = [((emb, "--images", cutouts, "--export", tmp_path / "s"), 2, "go together"),
             ((emb, "--images", cutouts, "--least"), 2, "apply to --export"),
             ((emb, "--images", cutouts, "--export", tmp_path / "s", "--queries", emb), 65, "not a text file"),
             ((emb, "--images", cutouts, "--label", "nosuch"), 65, "no column 'nosuch'"),
             ((tmp_path / "missing.parquet", "--images", cutouts), 66, "missing.parquet"),
             ((emb, "--images", emb), 65, "no 'image' column"),
             ((emb, "--images", cutouts, "--rgb", "i,r"), 2, "three bands"),
             ((emb, "--images", cutouts, "--rgb", "i,r,y"), 2, "no band 'y'")]
    ids = tmp_path / "ids.txt"
    ids.write_text("424242\n")
    cases.append(((emb, "--images", cutouts, "--export", tmp_path / "s", "--queries", ids), 65, "424242"))
    # an index of other embeddings is refused, as gal-knn refuses it
    other = tmp_path / "other.parquet"
    table = world["emb"].slice(0, 100)
    with open_table(str(emb)) as original:
        model = {"galtools.model_sha256": original.metadata["galtools.model_sha256"]}
    write_table(table, str(other), bands="u,g,r,i,z", **model)
    run_tool("gal-knn", "index", other, "--kind", "flat", "-q", "-o", tmp_path / "other.faiss", check=True, env=env())
    cases.append(((emb, "--images", cutouts, "--index", tmp_path / "other.faiss"), 65, "stale"))
    for args, code, words in cases:
        result = run_tool("gal-view", *args, env=env())
        lines = result.stderr.decode().splitlines()
        assert result.returncode == code and words in lines[-1], (args, result.returncode, lines)
        assert lines[-1].startswith("gal-view: error: ") and sum("error" in line for line in lines) == 1
    assert not (tmp_path / "s").exists()


def test_a_port_in_use_is_a_usage_error_and_help_imports_no_torch(viewer, world):
    port = viewer.url.rsplit(":", 1)[1].strip("/")
    folder = world["folder"]
    result = run_tool("gal-view", folder / "emb.parquet", "--images", folder / "sim.arrow", "--port", port, env=env())
    assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr.decode()
    code = ("import sys; from galtools.cli.view import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'pyarrow', 'numpy', 'starlette', 'uvicorn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, env=env()).stdout.decode()
    assert "gal-view emb.parquet --images" in out.split("Example:")[1] and out.strip().splitlines()[-1] == "[]"


def test_another_host_warns_and_ctrl_c_stops_cleanly(world):
    folder = world["folder"]
    process = subprocess.Popen(tool_command("gal-view") + [str(folder / "emb.parquet"), "--images",
                               str(folder / "sim.arrow"), "--host", "0.0.0.0"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env())
    url = process.stdout.readline().decode().strip()
    assert url.startswith("http://0.0.0.0:")
    port = url.rsplit(":", 1)[1].strip("/")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=60) as response:
        assert json.loads(response.read())["map"] == "pca (computed by gal-view)"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()
    assert "anyone who can reach this machine" in err.decode() and "stopped by SIGINT" in err.decode()


# ------------------------------------------------------------------------------------------ the filter language

def _table():
    return pa.table({"z": [0.05, 0.2, None, 0.08, 0.5], "kind": ["disk", "elliptical", "disk", None, "it's"],
                     "n": [1, 2, 3, 4, 5], "flag": [True, False, True, False, None],
                     "odd name": [1.0, 2.0, 3.0, 4.0, 5.0]})


@pytest.mark.parametrize("expression, expected", [
    ("z < 0.1", [1, 0, 0, 1, 0]),
    ("z<0.1 and kind == \"disk\"", [1, 0, 0, 0, 0]),
    ("kind == 'disk' or n >= 4", [1, 0, 1, 1, 1]),
    ("not kind == 'disk' or n = 1", [1, 1, 0, 0, 1]),   # not binds tighter than or; null never matches
    ("not (kind == 'disk' or n == 1)", [0, 1, 0, 0, 1]),
    ("n > 1 and n < 5 or z > 0.4", [0, 1, 1, 1, 1]),     # and binds tighter than or
    ("n > 1 and (n < 3 or z > 0.4)", [0, 1, 0, 0, 1]),
    ("flag", [1, 0, 1, 0, 0]),
    ("flag == false and n != 2", [0, 0, 0, 1, 0]),
    ("kind == 'it\\'s'", [0, 0, 0, 0, 1]),
    ("0.1 > z", [1, 0, 0, 1, 0]),
    ("`odd name` >= 3e0 AND n <= -1e-3", [0, 0, 0, 0, 0]),
    ("n >= -2 and z != .2", [1, 0, 0, 1, 1]),
])
def test_filters_match_a_hand_evaluation(expression, expected):
    from galtools.view.filters import Filter

    table = _table()
    assert Filter(expression, table.schema).mask(table).astype(int).tolist() == expected


@pytest.mark.parametrize("expression, words", [
    ("", "empty filter"), ("z <", "ends too early"), ("z < 0.1 and", "ends too early"), ("(z < 1", "missing ')'"),
    ("z < 1)", "unexpected ')' at character 6"), ("z < 'a", "unterminated string"),
    ("z ~ 1", "unexpected character '~'"),
    ("1 < 2", "needs a column"), ("nosuch == 1", "no column 'nosuch'"), ("z < 'text'", "cannot compare"),
    ("kind", "not a condition"), ("z", "not a condition"), ("kind == 'a' and z", "is not true or false"),
    ("__import__('os')", "unexpected '('"), ("z < 1e999", "bad number"), ("z < 1.2.3", "bad number"),
    ("x" * 3000, "characters long"), ("(" * 199 + "z < 1" + ")" * 199, "nested more than 50 deep"),
    ("not " * 51 + "flag", "nested more than 50 deep at character 201"),
])
def test_bad_filters_are_usage_errors_naming_the_place(expression, words):
    from galtools.errors import UsageProblem
    from galtools.view.filters import Filter

    table = _table()
    with pytest.raises(UsageProblem, match=None) as raised:
        Filter(expression, table.schema).mask(table)
    assert words in raised.value.one_line(), raised.value.one_line()


def test_sdss_sized_ids_travel_as_text_and_keep_every_digit(world, tmp_path):
    """objids beyond 2^53 would lose digits as JavaScript numbers: the JSON carries them as strings."""
    offset = 588017703489700179
    with open_table(str(world["folder"] / "emb.parquet")) as table:
        model = {"galtools.model_sha256": table.metadata["galtools.model_sha256"]}

    def shifted(table):
        ids = pa.array(table.column("object_id").to_numpy() + offset, pa.int64())
        return table.set_column(table.schema.get_field_index("object_id"), "object_id", ids)

    emb = write_table(shifted(world["emb"]), str(tmp_path / "emb.parquet"), bands="u,g,r,i,z", **model)
    cutouts = write_table(shifted(world["cutouts"]), str(tmp_path / "cutouts.arrow"), bands="u,g,r,i,z")
    server = Viewer(emb, "--images", cutouts, "--label", "morph_class")
    try:
        body = server.json("/api/search?" + query(id=offset + 3, k=5))["results"][0]
        assert body["query"]["id"] == str(offset + 3)
        assert [n["id"] for n in body["neighbors"]] == [str(offset + i) for i in brute_force(world, 3, 5)[0]]
        status, kind, png = server.get(f"/api/tile?id={body['neighbors'][0]['id']}")
        assert status == 200 and png[:4] == b"\x89PNG"
        points = server.json("/api/points")
        assert points["ids"][:3] == [str(offset), str(offset + 1), str(offset + 2)]
        assert server.json("/api/info")["example_id"] == str(offset)
        lines = server.get("/api/selection.csv?" + query(filter='morph_class == "disk"'))[2].decode().splitlines()
        disk = [i for i, c in enumerate(world["emb"].column("morph_class").to_pylist()) if c == "disk"]
        assert lines[1:] == [str(offset + i) for i in disk]
    finally:
        code, err = server.stop()
    assert code == 0, err


def test_gal_map_and_gal_view_give_a_class_the_same_colour(tmp_path):
    """Four classes in four places along the map's first axis, of unequal counts and names out of count order:
    each class's colour in gal-view's legend data is the colour of that class's points in gal-map's picture."""
    from PIL import Image

    from galtools.io import vector_column

    rng = np.random.default_rng(7)
    classes = {"zeta": 30, "alpha": 8, "mid": 18, "beta": 12}   # placed left to right in this order
    names = np.repeat(list(classes), list(classes.values()))
    place = np.repeat(np.arange(len(classes)), list(classes.values()))
    n = len(names)
    vectors = np.zeros((n, 8), np.float32)
    vectors[:, 0] = 10.0 * place + rng.normal(0, 0.6, n)
    vectors[:, 1] = rng.normal(0, 3.0, n)                        # spread the points so that many stand alone
    vectors[:, 2:] = rng.normal(0, 0.05, (n, 6))
    vectors[:, 2] += 40.0                                        # one side of the sphere: the map keeps the order
    ids = pa.array(np.arange(n, dtype=np.int64))
    emb = write_table(pa.table({"object_id": ids, "kind": pa.array(names), "embedding": vector_column(vectors)}),
                      str(tmp_path / "emb.parquet"), **{"galtools.model_sha256": "0" * 64})
    cutouts = make_cutouts(n=n).set_column(0, "object_id", ids)
    cutouts = write_table(cutouts, str(tmp_path / "cutouts.arrow"))
    run_tool("gal-map", emb, "--color", "kind", "--plot", tmp_path / "map.png", "-q", "-o", tmp_path / "map.parquet",
             check=True, env=env())
    server = Viewer(emb, "--images", cutouts, "--map", tmp_path / "map.parquet")
    try:
        colour = server.json("/api/points?" + query(colour="kind"))["colour"]
    finally:
        server.stop()
    assert sorted(colour["categories"]) == sorted(classes) and len(set(colour["colours"])) == len(classes)
    with open_table(str(tmp_path / "map.parquet")) as table:
        mapped = table.read_all()
    map_x = dict(zip(mapped.column("object_id").to_pylist(), mapped.column("map_x").to_pylist()))
    picture = np.asarray(Image.open(tmp_path / "map.png").convert("RGB")).astype(np.float64)
    white = np.array([255.0, 255.0, 255.0])
    found = {}
    for name, hex_colour in zip(colour["categories"], colour["colours"]):
        pure = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)], np.float64)
        # a point is drawn at alpha 0.8 over white; overlapping points go towards the pure colour
        shades = np.stack([white + t * (pure - white) for t in np.linspace(0.75, 1.0, 11)])
        distance = np.min(np.linalg.norm(picture[:, :, None, :] - shades[None, None], axis=-1), axis=-1)
        columns = np.nonzero(distance < 4.0)[1]
        assert len(columns) > 30, (name, hex_colour, len(columns))
        found[name] = float(np.median(columns))
    by_picture = sorted(found, key=found.get)
    by_map = sorted(classes, key=lambda c: np.median([map_x[i] for i in np.nonzero(names == c)[0]]))
    assert by_picture == by_map, (found, by_map)
