"""One centre crop (galtools.preprocess.centre_crop) for gal-pack --crop, training's views, the augmentations and
gal-embed: the same cutout file gives the same pixels through each, checked against a slice written out here.

gal-embed's input is made visible with an encoder.onnx that only flattens its input, under a model input scaling
of 'identity': the embedding it writes is the crop it fed the model, pixel for pixel."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from conftest import run_tool, write_table
from galtools.io import images_of, open_table, tensor_column

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

BANDS = ["g", "r", "i"]
FULL = 13   # odd margin: (13 - 8) // 2 = 2 rows above the crop, 3 below
SIZE = 8


def flattening_encoder(path, preprocess_json: str) -> str:
    """encoder.onnx of the galtools contract whose embedding is its input image, flattened."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["embedding"], axis=1)], "flatten",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", len(BANDS), SIZE, SIZE])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", len(BANDS) * SIZE * SIZE])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {"galtools.bands": ",".join(BANDS), "galtools.input_size": str(SIZE),
                       "galtools.preprocess": preprocess_json,
                       "galtools.embedding_dim": str(len(BANDS) * SIZE * SIZE), "galtools.arch": "flatten-test"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def cutouts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crop")
    rng = np.random.default_rng(5)
    images = rng.gamma(2.0, 1.0, (40, len(BANDS), FULL, FULL)).astype(np.float32)
    table = pa.table({"object_id": pa.array(np.arange(100, 140, dtype=np.int64)), "image": tensor_column(images)})
    return {"folder": folder, "images": images, "path": write_table(table, str(folder / "cutouts.fits"))}


def embedded_pixels(cutouts, preprocess_json: str, name: str) -> np.ndarray:
    """What gal-embed fed the model for each cutout of the file, (n, bands, S, S), read back from its output."""
    model = flattening_encoder(cutouts["folder"] / f"{name}.onnx", preprocess_json)
    out = str(cutouts["folder"] / f"{name}.parquet")
    run_tool("gal-embed", cutouts["path"], "--model", model, "-o", out, "--overwrite", check=True)
    with open_table(out) as table:
        embedded = table.read_all()
    assert embedded.column("object_id").to_pylist() == list(range(100, 140))
    vectors = np.stack(embedded.column("embedding").to_numpy(zero_copy_only=False))
    return vectors.reshape(-1, len(BANDS), SIZE, SIZE)


def test_training_views_augmentations_gal_pack_and_gal_embed_crop_the_same_pixels(cutouts):
    import torch

    from galtools.augment import AugmentPipeline
    from galtools.preprocess import Scaling
    from galtools.train.data import CutoutData, centre_crop

    reference = cutouts["images"][:, :, 2:10, 2:10]          # rows and columns 2..9 of 13: written out, not computed

    embedded = embedded_pixels(cutouts, Scaling.build(BANDS, [("identity", {})]).to_json(), "identity")
    np.testing.assert_array_equal(embedded, reference)

    data = CutoutData([cutouts["path"]])                      # training reads the file as gal-train does
    raw = data.read(np.arange(data.num_rows))
    np.testing.assert_array_equal(centre_crop(raw, SIZE), reference)        # eval views, preprocessing's sample
    for spec in ("", "jitter:max_shift=0"):                   # the augmentations' own crop, without and with jitter
        views = AugmentPipeline.from_spec(spec, out_size=SIZE, bands=BANDS)(torch.from_numpy(raw), np.arange(40))
        np.testing.assert_array_equal(views.numpy(), reference)

    packed = str(cutouts["folder"] / "packed.parquet")
    run_tool("gal-pack", cutouts["path"], "--crop", str(SIZE), "-o", packed, check=True)
    with open_table(packed) as table:
        np.testing.assert_array_equal(images_of(table.read_all()), reference)


def test_gal_embed_input_is_the_training_preprocessing_of_the_training_crop(cutouts):
    """With a fitted arcsinh preprocessing: gal-embed's input equals training's monitor views (preprocess.apply_numpy
    of training's centre crop) exactly, the same elementwise float32 formula on the same pixels."""
    from galtools.preprocess import Preprocess
    from galtools.train.data import CutoutData, centre_crop

    data = CutoutData([cutouts["path"]])
    raw = data.read(np.arange(data.num_rows))
    preprocess = Preprocess.fit(centre_crop(raw, SIZE), BANDS)
    embedded = embedded_pixels(cutouts, preprocess.to_json(), "arcsinh")
    np.testing.assert_array_equal(embedded, preprocess.apply_numpy(centre_crop(raw, SIZE)))
    assert not np.array_equal(embedded, centre_crop(raw, SIZE))   # the preprocessing did change the pixels


def test_a_crop_larger_than_the_images_names_the_option():
    from galtools.errors import BadData
    from galtools.preprocess import centre_crop

    with pytest.raises(BadData) as caught:
        centre_crop(np.zeros((2, 3, 13, 12), np.float32), 16, "--crop")
    assert caught.value.one_line() == "cannot crop 13x12 images to 16 (use --crop 12 or less)"
