"""gal-embed | gal-knn, and --query-image: a tiny linear encoder.onnx built by hand, so every embedding has a
formula written out here (preprocess, flatten, matrix product) to check against."""
from __future__ import annotations

import shlex
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from conftest import brute_force as reference_neighbors
from conftest import run_tool, tool_env, write_table
from galtools.io import tensor_column

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

BANDS = ["g", "r", "i"]
SIZE = 8      # the model's input size; cutouts are 12 x 12 and centre-cropped
DIM = 6


def linear_encoder(path, weights, preprocess, bands=BANDS):
    """encoder.onnx of the galtools contract: image [batch, bands, S, S] -> Flatten, MatMul -> embedding [batch, D]."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "weights"], ["embedding"])],
        "linear",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", len(bands), SIZE, SIZE])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", weights.shape[1]])],
        [numpy_helper.from_array(weights.astype(np.float32), "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {"galtools.bands": ",".join(bands), "galtools.input_size": str(SIZE),
                       "galtools.preprocess": preprocess.to_json(), "galtools.embedding_dim": str(weights.shape[1]),
                       "galtools.arch": "linear-test"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return str(path)


def embed_by_formula(images, weights, preprocess):
    crop = (images.shape[-1] - SIZE) // 2
    prepared = preprocess.apply_numpy(images[:, :, crop:crop + SIZE, crop:crop + SIZE])
    return prepared.reshape(len(images), -1).astype(np.float64) @ weights.astype(np.float64)


@pytest.fixture
def world(tmp_path):
    from galtools.preprocess import Preprocess

    rng = np.random.default_rng(11)
    images = rng.gamma(2.0, 1.0, (150, 3, 12, 12)).astype(np.float32)
    images[75:] += images[:75] * 0.5  # some structure, so neighbours mean something
    preprocess = Preprocess.fit(images, BANDS)
    weights = rng.standard_normal((3 * SIZE * SIZE, DIM)).astype(np.float32)
    model = linear_encoder(tmp_path / "encoder.onnx", weights, preprocess)
    ids = np.arange(900, 1050, dtype=np.int64)
    cutouts = pa.table({"object_id": pa.array(ids), "ra": pa.array(rng.uniform(0, 360, 150)),
                        "morph": pa.array(["spiral" if i % 2 else "elliptical" for i in range(150)]),
                        "image": tensor_column(images)})
    path = write_table(cutouts, str(tmp_path / "cutouts.fits"), bands="g,r,i")
    return {"tmp": tmp_path, "images": images, "ids": ids, "weights": weights, "preprocess": preprocess,
            "model": model, "cutouts": path}


def brute_force(query_vectors, base_vectors, ids, k, exclude_rows=None):
    """conftest's reference as [(neighbor id, similarity), ...] per query."""
    rows, sims = reference_neighbors(query_vectors, base_vectors, ids, k, exclude=exclude_rows)
    return [[(int(ids[j]), s) for j, s in zip(r, ss)] for r, ss in zip(rows, sims)]


def run_pipe(command):
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, env=tool_env(), timeout=300)


def neighbours(stdout):
    table = pa.ipc.open_stream(pa.py_buffer(stdout)).read_all()
    return table, list(zip(table.column("query_id").to_pylist(), table.column("neighbor_id").to_pylist(),
                           table.column("similarity").to_pylist()))


def test_embed_pipe_into_knn(world):
    py = shlex.quote(sys.executable)
    result = run_pipe(f"{py} -m galtools.cli.embed {world['cutouts']} --model {world['model']} --device cpu "
                      f"| {py} -m galtools.cli.knn - --query 905 -k 5")
    assert result.returncode == 0, result.stderr.decode()
    table, got = neighbours(result.stdout)
    vectors = embed_by_formula(world["images"], world["weights"], world["preprocess"])
    want = brute_force(vectors[[5]], vectors, world["ids"], 5, exclude_rows=[5])[0]
    assert [g[1] for g in got] == [w[0] for w in want]
    np.testing.assert_allclose([g[2] for g in got], [w[1] for w in want], atol=1e-5)
    assert "neighbor_morph" in table.column_names and "neighbor_ra" in table.column_names


def test_query_image_embeds_on_the_fly_and_draws_a_montage(world):
    tmp = world["tmp"]
    emb = tmp / "emb.parquet"
    run_tool("gal-embed", world["cutouts"], "--model", world["model"], "--device", "cpu", "-o", emb, check=True)
    rng = np.random.default_rng(5)
    new_images = (world["images"][[3, 40]] * rng.uniform(0.9, 1.1, (2, 3, 1, 1))).astype(np.float32)
    new = pa.table({"object_id": pa.array(["new-a", "new-b"]), "image": tensor_column(new_images)})
    new_path = write_table(new, str(tmp / "new.parquet"), bands="g,r,i")
    png = tmp / "m.png"
    result = run_tool("gal-knn", emb, "--query-image", new_path, "--model", world["model"], "-k", 4, "-o", "-",
                      "--montage", png, "--images", world["cutouts"], "--label", "morph", check=True)
    _, got = neighbours(result.stdout)
    base = embed_by_formula(world["images"], world["weights"], world["preprocess"])
    queries = embed_by_formula(new_images, world["weights"], world["preprocess"])
    want = brute_force(queries, base, world["ids"], 4)
    assert [(g[0], g[1]) for g in got] == [(q, w[0]) for q, ws in zip(["new-a", "new-b"], want) for w in ws]
    np.testing.assert_allclose([g[2] for g in got], [w[1] for ws in want for w in ws], atol=1e-5)
    from PIL import Image

    assert Image.open(png).size[0] == 5 * (96 + 4) + 4


def test_query_image_with_wrong_bands_or_model_exits_65(world):
    tmp = world["tmp"]
    emb = tmp / "emb.parquet"
    run_tool("gal-embed", world["cutouts"], "--model", world["model"], "--device", "cpu", "-o", emb, check=True)
    two_band = pa.table({"object_id": pa.array([1]), "image": tensor_column(world["images"][:1, :2])})
    two_path = write_table(two_band, str(tmp / "two.parquet"), bands="g,r")
    result = run_tool("gal-knn", emb, "--query-image", two_path, "--model", world["model"])
    err = result.stderr.decode()
    assert result.returncode == 65 and "missing i" in err and "Traceback" not in err, err
    unnamed = write_table(two_band, str(tmp / "unnamed.parquet"), bands="")
    result = run_tool("gal-knn", emb, "--query-image", unnamed, "--model", world["model"])
    assert result.returncode == 65 and "2-band images" in result.stderr.decode(), result.stderr.decode()
    other = linear_encoder(tmp / "other.onnx", world["weights"][:, ::-1].copy(), world["preprocess"])
    one = write_table(pa.table({"object_id": pa.array([1]), "image": tensor_column(world["images"][:1])}),
                      str(tmp / "one.parquet"), bands="g,r,i")
    result = run_tool("gal-knn", emb, "--query-image", one, "--model", other)
    assert result.returncode == 65 and "not the model that made the table" in result.stderr.decode()
    result = run_tool("gal-knn", emb, "--query-image", one)
    assert result.returncode == 2 and "--query-image needs --model" in result.stderr.decode()
