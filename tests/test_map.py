"""gal-map: PCA against scikit-learn, three clusters give three groups (silhouette), scatter and tile pictures decode,
the tiles hold the galaxy nearest each cell's centre, UMAP is deterministic for a seed, errors and exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score

from conftest import ROOT, assert_clean_error, run_tool, tool_env

CLASSES = ("a", "b", "c")
BANDS = "g,r,i"
# rgb_composite shows i as red, r as green, g as blue: a galaxy bright in band k looks like this channel
CHANNEL_OF_CLASS = (2, 1, 0)


def sklearn_pca(x: np.ndarray, n: int = 2):
    """scikit-learn's PCA with each axis's sign fixed so its largest loading is positive: scikit-learn's own
    convention since 1.5 (1.3 and 1.4 fixed the sign from the projections instead)."""
    reference = PCA(n_components=n).fit(x)
    biggest = np.abs(reference.components_).argmax(axis=1)
    signs = np.sign(reference.components_[np.arange(n), biggest])
    reference.components_ = reference.components_ * signs[:, None]
    return reference


def three_clusters(n_per: int = 40, dim: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim)) * 3
    truth = np.repeat(np.arange(3), n_per)
    rng.shuffle(truth)
    return (centres[truth] + rng.normal(size=(len(truth), dim)) * 0.6).astype(np.float32), truth


def write(path, table, **metadata):
    from galtools.io import open_output

    with open_output(str(path), metadata=metadata, tool="test") as out:
        out.write(table)
    return str(path)


@pytest.fixture(scope="module")
def clusters(tmp_path_factory):
    from galtools.io import tensor_column, vector_column

    folder = tmp_path_factory.mktemp("map")
    x, truth = three_clusters()
    n = len(x)
    ids = np.arange(n, dtype=np.int64) + 500
    rng = np.random.default_rng(1)
    emb = write(folder / "emb.parquet", pa.table({
        "object_id": ids, "morph": pa.array(np.array(CLASSES, dtype=object)[truth]),
        "z": rng.uniform(0, 0.3, n), "embedding": vector_column(x)}), **{"galtools.model_sha256": "abc"})
    images = np.abs(rng.normal(size=(n, 3, 20, 20))).astype(np.float32) * 0.05
    images[np.arange(n), truth, 6:14, 6:14] += 10.0          # a bright centre in the band of the class
    order = rng.permutation(n)                               # cutouts in another order than the embeddings
    cutouts = write(folder / "cutouts.parquet", pa.table({"object_id": ids[order], "image": tensor_column(images[order])}),
                    **{"galtools.bands": BANDS})
    return {"folder": folder, "emb": emb, "cutouts": cutouts, "x": x, "truth": truth, "ids": ids}


def mapper(*args, **kw):
    return run_tool("gal-map", *args, **kw)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------------------------- PCA

def test_pca_equals_scikit_learn_whatever_the_block_size():
    from galtools.maps.project import pca

    rng = np.random.default_rng(3)
    x = (rng.normal(size=(300, 12)) * np.linspace(5, 0.5, 12) + rng.normal(size=12)).astype(np.float32)
    reference = sklearn_pca(x)
    ours, info = pca(x)
    np.testing.assert_allclose(ours, reference.transform(x), atol=1e-4)
    np.testing.assert_allclose(info["explained_variance_ratio"], reference.explained_variance_ratio_, rtol=1e-6)
    np.testing.assert_allclose(info["components"], reference.components_, atol=1e-5)   # float32 SVDs
    blocked, _ = pca(x, block_rows=37)
    np.testing.assert_allclose(blocked, ours, atol=1e-9)


def test_three_clusters_make_three_groups_with_a_scatter_and_tiles(clusters):
    folder = clusters["folder"]
    result = mapper(clusters["emb"], "--method", "pca", "-o", folder / "map.parquet", "--color", "morph",
                    "--plot", folder / "map.png", "--images", clusters["cutouts"], "--tiles", folder / "tiles.png",
                    "--grid", 8, "--tile-size", 16)
    assert result.returncode == 0, result.stderr.decode()
    table = pq.read_table(folder / "map.parquet")
    assert table.column_names == ["object_id", "morph", "z", "map_x", "map_y"]
    assert table["object_id"].to_pylist() == clusters["ids"].tolist()
    assert table.schema.field("map_x").type == pa.float32()
    assert json.loads(table.schema.metadata[b"galtools.map"])["method"] == "pca"
    xy = np.stack([table["map_x"].to_numpy(), table["map_y"].to_numpy()], axis=1).astype(np.float64)
    assert silhouette_score(xy, clusters["truth"]) > 0.5
    # the map is the PCA of the unit-normalised embeddings
    unit_x = unit(clusters["x"].astype(np.float64))
    np.testing.assert_allclose(xy, sklearn_pca(unit_x).transform(unit_x), atol=1e-5)
    with Image.open(folder / "map.png") as picture:
        picture.load()
        assert picture.format == "PNG" and min(picture.size) > 300
    check_tiles(folder / "tiles.png", xy, clusters["truth"], grid=8, tile=16)


def check_tiles(path, xy, truth, grid, tile):
    """Every occupied cell (and no other) shows a galaxy, of the class of the object nearest the cell's centre."""
    with Image.open(path) as picture:
        picture.load()
        assert picture.size == (grid * tile, grid * tile)
        pixels = np.asarray(picture.convert("RGB"))
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    side = (hi - lo).max()
    box_lo = (lo + hi) / 2 - side / 2
    scaled = (xy - box_lo) / side * grid
    cell = np.clip(np.floor(scaled).astype(int), 0, grid - 1)
    for column in range(grid):
        for row in range(grid):                       # row counted from the bottom of the map
            here = np.flatnonzero((cell[:, 0] == column) & (cell[:, 1] == row))
            top = (grid - 1 - row) * tile
            thumbnail = pixels[top:top + tile, column * tile:(column + 1) * tile].reshape(-1, 3).astype(float)
            if len(here) == 0:
                assert thumbnail.max() == 0, (column, row)
                continue
            distance = np.hypot(*(scaled[here] - (cell[here] + 0.5)).T)
            nearest = here[np.argmin(distance)]
            assert np.argmax(thumbnail.sum(axis=0)) == CHANNEL_OF_CLASS[truth[nearest]], (column, row)


def test_tile_picker_keeps_the_nearest_to_each_centre_across_batches():
    from galtools.maps.tiles import Grid, TilePicker

    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 1, size=(200, 2))
    grid = Grid.over(xy, 4)
    picker = TilePicker(grid, xy)
    images = np.arange(200, dtype=np.float32)[:, None, None, None] * np.ones((1, 1, 2, 2), np.float32)
    for rows in np.array_split(rng.permutation(200), 7):          # batches in a random order
        picker.offer(rows, images[rows])
    scaled = (xy - grid.lo) / (grid.hi - grid.lo) * 4
    for cell in range(16):
        row_from_bottom, column = divmod(cell, 4)
        centre = np.array([column + 0.5, row_from_bottom + 0.5])
        inside = [i for i in range(200) if min(int(scaled[i, 0]), 3) == column and min(int(scaled[i, 1]), 3) == row_from_bottom]
        best = min(inside, key=lambda i: (np.hypot(*(scaled[i] - centre)), i))
        assert picker.row[cell] == best
        assert picker.images[cell][0, 0, 0] == best


def test_a_pipe_and_a_colour_bar(clusters):
    folder = clusters["folder"]
    command = (f"cat {clusters['emb']} | {sys.executable} -m galtools.cli.map - --color z --plot {folder}/z.png "
               f"| cat > {folder}/map.arrows")
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, env=tool_env(), cwd=ROOT)
    assert result.returncode == 0, result.stderr.decode()
    table = ipc.open_stream(open(folder / "map.arrows", "rb").read()).read_all()
    assert table.num_rows == 120 and table.column_names[-2:] == ["map_x", "map_y"]
    with Image.open(folder / "z.png") as picture:
        picture.load()


@pytest.mark.slow  # UMAP compiles with numba first
def test_umap_groups_the_clusters_and_a_seed_fixes_the_map(clusters):
    """One process (UMAP's numba compilation costs ~15 s per process) runs the command three times."""
    folder = clusters["folder"]
    code = ("import sys\nfrom galtools.cli.map import cli\n"
            "for seed, out in (('5', 'u1'), ('5', 'u2'), ('6', 'u3')):\n"
            "    cli.main([sys.argv[1], '--method', 'umap', '--seed', seed, '--neighbors', '10',\n"
            "              '-o', f'{sys.argv[2]}/{out}.parquet'], standalone_mode=False)\n")
    result = subprocess.run([sys.executable, "-c", code, clusters["emb"], str(folder)], capture_output=True,
                            env=tool_env(), cwd=ROOT)
    assert result.returncode == 0, result.stderr.decode()
    maps = [pq.read_table(folder / f"{name}.parquet") for name in ("u1", "u2", "u3")]
    xy = [np.stack([m["map_x"].to_numpy(), m["map_y"].to_numpy()], axis=1) for m in maps]
    assert silhouette_score(xy[0], clusters["truth"]) > 0.5
    np.testing.assert_array_equal(xy[0], xy[1])
    assert not np.allclose(xy[0], xy[2])
    assert json.loads(maps[0].schema.metadata[b"galtools.map"]) == {"method": "umap", "seed": 5, "n_neighbors": 10,
                                                                    "min_dist": 0.1}


# ------------------------------------------------------------------------------------------------------ errors

def invoke(*args):
    from conftest import cli_runner

    from galtools.cli.map import cli

    result = cli_runner().invoke(cli, [str(a) for a in args])
    return subprocess.CompletedProcess(["gal-map", *args], result.exit_code, result.stdout_bytes, result.stderr_bytes)


def test_errors_are_one_line_with_documented_codes(clusters, tmp_path):
    from galtools.io import tensor_column, vector_column

    out = tmp_path / "m.parquet"
    assert_clean_error(mapper(clusters["emb"], "--color", "shape", "--plot", tmp_path / "p.png", "-o", out),
                       65, "no 'shape' column")
    assert_clean_error(invoke(clusters["emb"], "--images", clusters["cutouts"], "-o", out), 2, "--tiles")
    assert_clean_error(invoke(clusters["emb"], "--color", "z", "-o", out), 2, "--plot")
    assert_clean_error(invoke(tmp_path / "absent.parquet", "-o", out), 66)
    x = clusters["x"][:10].copy()
    x[3, 0] = np.nan
    nan = write(tmp_path / "nan.parquet", pa.table({"object_id": np.arange(10), "embedding": vector_column(x)}))
    assert_clean_error(invoke(nan, "-o", out), 65, "NaN")
    strangers = write(tmp_path / "strangers.parquet", pa.table({
        "object_id": np.arange(5) + 10_000, "image": tensor_column(np.ones((5, 3, 8, 8), np.float32))}))
    assert_clean_error(invoke(clusters["emb"], "--images", strangers, "--tiles", tmp_path / "t.png", "-o", out),
                       65, "none of the 120 objects")
    assert not out.exists() and not (tmp_path / "t.png").exists()
    out.write_bytes(b"")
    assert_clean_error(invoke(clusters["emb"], "-o", out), 1, "--overwrite")


def test_exact_neighbours_for_umap_equal_scikit_learn():
    from sklearn.neighbors import NearestNeighbors

    from galtools.maps.project import exact_neighbours

    x, _ = three_clusters(n_per=30, dim=8, seed=2)
    indices, distances = exact_neighbours(x, 6)
    reference_distances, reference_indices = NearestNeighbors(n_neighbors=6).fit(x).kneighbors(x)
    np.testing.assert_array_equal(indices, reference_indices)
    np.testing.assert_allclose(distances, reference_distances, atol=1e-5)
    assert (indices[:, 0] == np.arange(len(x))).all()
