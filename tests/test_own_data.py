"""Bringing your own data: HDF5 cutout files, HATS / partitioned Parquet folders, and the band, pixel-scale and flux
unit checks where a table meets a model.  Real processes on files the tests write, checked against those files."""
from __future__ import annotations

import json
import os
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import assert_clean_error as error
from conftest import ROOT, built_once, run_tool, write_table

h5py = pytest.importorskip("h5py")

SIZE = 24          # cutout size in the files
MODEL_SIZE = 16    # the encoder's input (gal-embed centre-crops)
MODEL_BANDS = ["g", "r", "z"]
MODEL_PIXSCALE = 0.262
MODEL_UNIT = "nanomaggies"


def run(tool, *args):
    return run_tool(tool, *args, env=dict(os.environ, PYTHONPATH=ROOT))


def ok(result):
    assert result.returncode == 0, result.stderr.decode()
    return result


def info(path, *args) -> dict:
    return json.loads(ok(run("gal-info", path, "--json", *args)).stdout)


def images_of(table: pa.Table) -> np.ndarray:
    from galtools.io import images_of as read

    return read(table)


# --------------------------------------------------------------------------------------------------- model

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny random encoder exported by galtools, trained (so its metadata says) at 0.262"/px on nanomaggies: the
    file is exported once for the whole test run (test_pack_truth uses it too; read only), the torch backbone and
    the preprocessing are made here again from the same seeds (the tests compare the two)."""
    import torch

    from galtools.models import build_encoder
    from galtools.preprocess import Preprocess
    from galtools.train.export import encoder_metadata, export_encoder

    torch.manual_seed(0)
    backbone = build_encoder("tiny", len(MODEL_BANDS)).eval()
    rng = np.random.default_rng(5)
    preprocess = Preprocess.fit(rng.normal(0, 0.1, (32, 3, MODEL_SIZE, MODEL_SIZE)).astype(np.float32), MODEL_BANDS)

    def export(folder):
        metadata = encoder_metadata(MODEL_BANDS, MODEL_SIZE, preprocess.to_json(), backbone.num_features, "tiny", "{}",
                                    "")
        metadata.update({"galtools.pixscale_arcsec": repr(MODEL_PIXSCALE), "galtools.flux_unit": MODEL_UNIT})
        export_encoder(backbone, str(folder / "encoder.onnx"), metadata, MODEL_SIZE)

    path = str(built_once(tmp_path_factory, "own-data-model", export) / "encoder.onnx")
    return path, backbone, preprocess


def torch_embeddings(model, images_nbhw: np.ndarray, band_index=(0, 1, 2)) -> np.ndarray:
    """The reference: the model's planes, the centre crop, Preprocess.apply_torch, the torch backbone."""
    import torch

    _, backbone, preprocess = model
    top = (images_nbhw.shape[-1] - MODEL_SIZE) // 2
    crop = images_nbhw[:, list(band_index), top:top + MODEL_SIZE, top:top + MODEL_SIZE]
    with torch.no_grad():
        return backbone.forward_features(preprocess.apply_torch(torch.from_numpy(np.ascontiguousarray(crop)))).numpy()


def embeddings_of(path: str) -> tuple[list, np.ndarray]:
    table = pq.read_table(path)
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    return table.column("object_id").to_pylist(), vectors


# ---------------------------------------------------------------------------------------------------- HDF5

@pytest.fixture(scope="module")
def galaxy10(tmp_path_factory):
    """A Galaxy10-DECaLS-like file: channel-last uint8 images, labels, coordinates, a vector and a string column."""
    rng = np.random.default_rng(1)
    n = 300
    images = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    columns = {"ans": rng.integers(0, 10, n).astype(np.uint8), "ra": rng.uniform(0, 360, n),
               "dec": rng.uniform(-10, 30, n), "redshift": rng.uniform(0, 0.3, n).astype(np.float32),
               "flux": rng.normal(size=(n, 4)).astype(np.float32),
               "name": np.array([f"J{i:05d}".encode() for i in range(n)])}
    path = str(tmp_path_factory.mktemp("g10") / "Galaxy10_DECals.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images, chunks=(32, SIZE, SIZE, 3), compression="gzip")
        for key, values in columns.items():
            f.create_dataset(key, data=values)
        f.attrs["bands"] = "g,r,z"
        f.attrs["pixscale"] = MODEL_PIXSCALE
    return path, images, columns


def test_hdf5_channel_last_uint8_reads_as_a_table_everywhere(galaxy10, model, tmp_path):
    path, images, columns = galaxy10
    expected = np.moveaxis(images, -1, 1).astype(np.float32) / np.float32(255)

    summary = info(path)
    assert summary["format"] == "hdf5" and summary["rows"] == 300
    types = {c["name"]: c["type"] for c in summary["columns"]}
    assert types["image"] == "tensor<float>[3x24x24]" and types["object_id"] == "int64"
    assert types["ans"] == "uint8" and types["ra"] == "double" and types["name"] == "string"
    assert types["flux"].startswith("fixed_size_list<item: float>[4]")
    assert summary["image"]["bands"] == ["g", "r", "z"]
    assert summary["image"]["pixscale_arcsec"] == str(MODEL_PIXSCALE)
    assert summary["image"]["flux_unit"] == "8-bit scaled to [0,1]"

    packed = str(tmp_path / "g10.parquet")
    ok(run("gal-pack", path, "-o", packed))
    table = pq.read_table(packed)
    assert table.column("object_id").to_pylist() == list(range(300))      # no id dataset: the row number
    np.testing.assert_array_equal(images_of(table), expected)
    np.testing.assert_array_equal(table.column("ans").to_numpy(), columns["ans"])
    np.testing.assert_array_equal(table.column("ra").to_numpy(), columns["ra"])
    np.testing.assert_array_equal(np.stack(table.column("flux").to_numpy(zero_copy_only=False)), columns["flux"])
    assert table.column("name").to_pylist()[:2] == ["J00000", "J00001"]

    embedded = str(tmp_path / "emb.parquet")
    result = ok(run("gal-embed", path, "--model", model[0], "-b", "64", "-o", embedded))
    assert "arcsec" not in result.stderr.decode()            # same bands, same scale: nothing to say
    ids, vectors = embeddings_of(embedded)
    assert ids == list(range(300))
    np.testing.assert_allclose(vectors, torch_embeddings(model, expected), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def float_cube(tmp_path_factory):
    """Channel-first float32, gzip-compressed, an unusual image name, ids in 'objid', lzf-compressed redshifts."""
    rng = np.random.default_rng(2)
    n = 130
    images = rng.normal(0, 1, (n, 3, SIZE, SIZE)).astype(np.float32)
    objid = rng.permutation(10**6)[:n].astype(np.int64)
    path = str(tmp_path_factory.mktemp("cube") / "legacy.hdf5")
    with h5py.File(path, "w") as f:
        f.create_dataset("stamps", data=images, chunks=(16, 3, SIZE, SIZE), compression="gzip", compression_opts=4)
        f.create_dataset("objid", data=objid)
        f.create_dataset("meta/redshift", data=rng.uniform(0, 1, n), compression="lzf")
    return path, images, objid


def test_hdf5_channel_first_float_gzip_with_keys_and_bands(float_cube, model, tmp_path):
    path, images, objid = float_cube
    error(run("gal-info", path), 65, "no image dataset", "stamps (130, 3, 24, 24)", "--image-key")

    keys = ["--image-key", "stamps", "--id-column", "objid", "--bands", "r,g,z"]
    summary = info(path, *keys)
    assert summary["rows"] == 130 and summary["image"]["bands"] == ["r", "g", "z"]
    assert [c["name"] for c in summary["columns"]] == ["object_id", "meta.redshift", "image"]

    packed = str(tmp_path / "legacy.fits")
    ok(run("gal-pack", path, *keys, "-o", packed))
    from galtools.io import open_table

    with open_table(packed) as table:
        assert table.bands == ["r", "g", "z"]
        data = table.read_all()
    assert data.column("object_id").to_pylist() == objid.tolist()
    np.testing.assert_array_equal(images_of(data), images)

    embedded = str(tmp_path / "emb.parquet")
    ok(run("gal-embed", path, *keys, "--model", model[0], "-b", "50", "-o", embedded))
    ids, vectors = embeddings_of(embedded)
    assert ids == objid.tolist()
    # the model wants g,r,z: planes 1, 0, 2 of this r,g,z file
    np.testing.assert_allclose(vectors, torch_embeddings(model, images, (1, 0, 2)), rtol=1e-4, atol=1e-4)


def test_hdf5_user_block_and_stdin(tmp_path):
    images = np.arange(2 * 1 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    path = str(tmp_path / "with_block.h5")
    with h5py.File(path, "w", userblock_size=1024) as f:
        f.create_dataset("cutouts", data=images)
    with open(path, "r+b") as handle:
        handle.write(b"a user block written by another program\n")
    summary = info(path)
    assert summary["format"] == "hdf5" and summary["image"]["shape"] == [1, 8, 8]
    plain = str(tmp_path / "plain.h5")
    with h5py.File(plain, "w") as f:
        f.create_dataset("cutouts", data=images)
    with open(plain, "rb") as handle:
        piped = run_tool("gal-info", "-", "--json", input=handle.read(), env=dict(os.environ, PYTHONPATH=ROOT))
    assert json.loads(ok(piped).stdout)["rows"] == 2


def test_hdf5_without_images_or_with_unequal_lengths_is_65_naming_them(tmp_path):
    no_images = str(tmp_path / "catalogue.h5")
    with h5py.File(no_images, "w") as f:
        f.create_dataset("ra", data=np.zeros(5))
        f.create_dataset("dec", data=np.zeros(5))
    error(run("gal-info", no_images), 65, "no image dataset", "ra (5,)", "dec (5,)")
    uneven = str(tmp_path / "uneven.h5")
    with h5py.File(uneven, "w") as f:
        f.create_dataset("images", data=np.zeros((5, 2, 8, 8), np.float32))
        f.create_dataset("redshift", data=np.zeros(4))
    error(run("gal-pack", uneven, "-o", str(tmp_path / "x.parquet")), 65, "images has 5 rows", "redshift has 4")
    assert not os.path.exists(tmp_path / "x.parquet")
    error(run("gal-info", uneven, "--image-key", "nope"), 65, "no dataset 'nope'")


class _SliceRecorder:
    """Stands in for the h5py image dataset and records which rows each read asks for."""

    def __init__(self, dataset):
        self.dataset, self.requests = dataset, []

    def __getitem__(self, key):
        self.requests.append(key)
        return self.dataset[key]

    def __getattr__(self, name):
        return getattr(self.dataset, name)


def test_hdf5_is_read_in_row_slices_with_bounded_memory(tmp_path):
    from galtools.io import images_of as read, open_table

    n, size = 2000, 32
    path = str(tmp_path / "big.h5")
    rng = np.random.default_rng(3)
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("images", shape=(n, 3, size, size), dtype=np.float32, chunks=(50, 3, size, size))
        for lo in range(0, n, 500):
            dataset[lo:lo + 500] = rng.normal(size=(500, 3, size, size)).astype(np.float32)
        reference_sum = float(np.sum(dataset[:, 0, 0, 0], dtype=np.float64))
    file_bytes = n * 3 * size * size * 4                       # 24.6 MB of pixels
    with open_table(path) as table:
        recorder = _SliceRecorder(table.parts[0]._image)
        table.parts[0]._image = recorder
        tracemalloc.start()
        total, first_pixels = 0, 0.0
        for batch in table.iter_batches(batch_size=100):
            images = read(batch)
            total += len(images)
            first_pixels += float(np.sum(images[:, 0, 0, 0], dtype=np.float64))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert total == n and first_pixels == pytest.approx(reference_sum, rel=1e-9)
    assert all(isinstance(k, slice) and k.stop - k.start <= 100 for k in recorder.requests), recorder.requests[:3]
    assert len(recorder.requests) == n // 100
    assert peak < file_bytes / 4, (peak, file_bytes)


# ---------------------------------------------------------------------------------------------------- HATS

def _cutout_part(ids, seed):
    from galtools.io import tensor_column

    rng = np.random.default_rng(seed)
    return pa.table({"object_id": pa.array(np.asarray(ids, np.int64)), "ra": pa.array(rng.uniform(0, 360, len(ids))),
                     "image": tensor_column(rng.normal(size=(len(ids), 3, SIZE, SIZE)).astype(np.float32))})


@pytest.fixture(scope="module")
def hats(tmp_path_factory):
    """A HATS-layout catalogue: Norder=K/Dir=D/Npix=N.parquet under dataset/, with the files HATS keeps beside."""
    root = tmp_path_factory.mktemp("hats") / "catalog"
    pixels = [(1, 0, 100, range(0, 7)), (0, 0, 3, range(100, 110)), (1, 0, 40, range(200, 205)),
              (1, 0, 12, range(300, 312))]
    parts = {}
    for order, folder, npix, ids in pixels:
        target = root / "dataset" / f"Norder={order}" / f"Dir={folder}"
        target.mkdir(parents=True, exist_ok=True)
        parts[(order, npix)] = _cutout_part(list(ids), npix)
        write_table(parts[(order, npix)], str(target / f"Npix={npix}.parquet"), bands="g,r,z",
                    **{"galtools.pixscale_arcsec": repr(MODEL_PIXSCALE)})
    pq.write_table(pa.table({"x": [1]}), str(root / "dataset" / "_common_metadata"))
    (root / "properties").write_text("obs_collection=test\nhats_order=1\n")
    (root / "partition_info.csv").write_text("Norder,Npix\n0,3\n1,12\n1,40\n1,100\n")
    (root / "point_map.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 2850)
    order = [(0, 3), (1, 12), (1, 40), (1, 100)]       # partition order, numbers as numbers (100 after 40)
    return str(root), [parts[key] for key in order], order


def test_hats_catalogue_reads_as_one_table(hats, model, tmp_path):
    root, parts, order = hats
    expected_ids = [i for part in parts for i in part.column("object_id").to_pylist()]
    summary = info(root)
    assert summary["rows"] == len(expected_ids) and summary["parts"] == 4
    assert [c["name"] for c in summary["columns"]][-3:] == ["Norder", "Dir", "Npix"]

    packed = str(tmp_path / "all.parquet")
    ok(run("gal-pack", root, "-o", packed))
    table = pq.read_table(packed)
    assert table.column("object_id").to_pylist() == expected_ids
    np.testing.assert_array_equal(images_of(table), np.concatenate([images_of(p) for p in parts]))
    npix = [n for (_, n), part in zip(order, parts) for _ in range(part.num_rows)]
    assert table.column("Npix").to_pylist() == npix and table.column("Npix").type == pa.int64()

    dropped = str(tmp_path / "dropped.parquet")
    ok(run("gal-pack", root, "--drop-partition-columns", "-o", dropped))
    assert pq.read_table(dropped).column_names == ["object_id", "ra", "image"]


def test_hats_shards_are_whole_partitions(hats, model, tmp_path):
    root, parts, order = hats
    outputs = []
    for index in range(4):
        out = str(tmp_path / f"emb-{index}.parquet")
        ok(run("gal-embed", root, "--model", model[0], "--shard", f"{index}/4", "-o", out))
        outputs.append(out)
    for out, part, (_, npix) in zip(outputs, parts, order):
        ids, vectors = embeddings_of(out)
        assert ids == part.column("object_id").to_pylist()
        assert set(pq.read_table(out).column("Npix").to_pylist()) == {npix}
        np.testing.assert_allclose(vectors, torch_embeddings(model, images_of(part)), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------- scale, unit, bands

def _table_file(tmp_path, name, bands="g,r,z", planes=3, n=20, **meta):
    from galtools.io import tensor_column

    rng = np.random.default_rng(len(name))
    images = rng.normal(0, 1, (n, planes, SIZE, SIZE)).astype(np.float32)
    table = pa.table({"object_id": pa.array(np.arange(n, dtype=np.int64)), "image": tensor_column(images)})
    extra = {f"galtools.{k}": v for k, v in meta.items() if not k.startswith("col_")}
    if "col_pixscale" in meta:
        table = table.append_column("pixscale_arcsec", pa.array(meta["col_pixscale"]))
    return write_table(table, str(tmp_path / name), bands=bands, **extra), images


def test_pixel_scale_more_than_10_percent_off_warns_and_strict_refuses(model, tmp_path):
    hst, _ = _table_file(tmp_path, "hst.parquet", pixscale_arcsec="0.03")
    out = str(tmp_path / "o1.parquet")
    result = ok(run("gal-embed", hst, "--model", model[0], "-o", out))
    err = result.stderr.decode()
    assert "0.03 arcsec/pixel" in err and "0.262 arcsec/pixel" in err
    assert os.path.exists(out)
    error(run("gal-embed", hst, "--model", model[0], "--strict", "-o", str(tmp_path / "o2.parquet")), 65,
          "0.03 arcsec/pixel", "trained at 0.262 arcsec/pixel")
    assert not os.path.exists(tmp_path / "o2.parquet")
    close, _ = _table_file(tmp_path, "close.parquet", pixscale_arcsec="0.28")   # 7% off: fine
    result = ok(run("gal-embed", close, "--model", model[0], "--strict", "-o", str(tmp_path / "o3.parquet")))
    assert "arcsec" not in result.stderr.decode()


def test_flux_unit_mismatch_warns_and_strict_refuses(model, tmp_path):
    counts, _ = _table_file(tmp_path, "counts.parquet", flux_unit="ADU")
    result = ok(run("gal-embed", counts, "--model", model[0], "-o", str(tmp_path / "o1.parquet")))
    assert "'ADU'" in result.stderr.decode() and f"'{MODEL_UNIT}'" in result.stderr.decode()
    error(run("gal-embed", counts, "--model", model[0], "--strict", "-o", str(tmp_path / "o2.parquet")), 65,
          "'ADU'", f"'{MODEL_UNIT}'")
    same, _ = _table_file(tmp_path, "same.parquet", flux_unit="Nanomaggies")
    ok(run("gal-embed", same, "--model", model[0], "--strict", "-o", str(tmp_path / "o3.parquet")))


def test_per_object_pixel_scales_are_checked(model, tmp_path):
    scales = [MODEL_PIXSCALE] * 20
    scales[7] = 0.524
    mixed, _ = _table_file(tmp_path, "mixed.parquet", col_pixscale=scales)
    error(run("gal-embed", mixed, "--model", model[0], "--strict", "-o", str(tmp_path / "o.parquet")), 65,
          "1 object(s)", "object_id 7 at 0.524")
    result = ok(run("gal-embed", mixed, "--model", model[0], "-o", str(tmp_path / "o.parquet")))
    assert "object_id 7" in result.stderr.decode()


def test_missing_band_is_an_error_and_band_map_feeds_it_on_purpose(model, tmp_path):
    one_band, images = _table_file(tmp_path, "f814w.parquet", bands="F814W", planes=1)
    error(run("gal-embed", one_band, "--model", model[0], "-o", str(tmp_path / "o.parquet")), 65,
          "has bands F814W", "missing g,r,z", "--band-map")
    error(run("gal-embed", one_band, "--model", model[0], "--band-map", "g=F814W,u=F814W",
              "-o", str(tmp_path / "o.parquet")), 2, "band(s) u", "g,r,z")
    error(run("gal-embed", one_band, "--model", model[0], "--band-map", "g=F606W,r=F814W,z=F814W",
              "-o", str(tmp_path / "o.parquet")), 65, "missing F606W")
    out = str(tmp_path / "mapped.parquet")
    ok(run("gal-embed", one_band, "--model", model[0], "--band-map", "g=F814W,r=F814W,z=F814W", "-o", out))
    ids, vectors = embeddings_of(out)
    np.testing.assert_allclose(vectors, torch_embeddings(model, images, (0, 0, 0)), rtol=1e-4, atol=1e-4)
    from galtools.io import history_of

    metadata = {k.decode(): v.decode() for k, v in pq.read_schema(out).metadata.items()}
    assert metadata["galtools.embed.band_map"] == "g=F814W,r=F814W,z=F814W"
    last = history_of(metadata)[-1]
    assert last["tool"] == "gal-embed" and "--band-map" in last["argv"]


# ------------------------------------------------------------------------- gal-pack --resize of mixed sizes

def test_resizing_stamps_of_several_sizes_records_each_objects_pixel_scale(tmp_path):
    import fitsio
    from PIL import Image

    folder = tmp_path / "stamps"
    folder.mkdir()
    rng = np.random.default_rng(4)
    headers = {101: (32, {"CDELT1": -0.262 / 3600, "CDELT2": 0.262 / 3600}),
               102: (64, {"CD1_1": -0.262 / 3600, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 0.262 / 3600}),
               103: (48, {"PIXSCALE": 0.262})}
    for object_id, (size, header) in headers.items():
        fitsio.write(str(folder / f"{object_id}.fits"), rng.normal(size=(size, size)).astype(np.float32),
                     header=header)
    out = str(tmp_path / "mixed.parquet")
    ok(run("gal-pack", str(folder), "--resize", "16", "-o", out))
    table = pq.read_table(out)
    scales = dict(zip(table.column("object_id").to_pylist(), table.column("pixscale_arcsec").to_pylist()))
    assert scales == pytest.approx({101: 0.262 * 2, 102: 0.262 * 4, 103: 0.262 * 3}, rel=1e-9)
    assert "galtools.pixscale_arcsec" not in {k.decode() for k in pq.read_schema(out).metadata}

    error(run("gal-pack", str(folder), "--resize", "16", "--pixscale", "0.5", "-o", str(tmp_path / "one.parquet")),
          2, "--pixscale 0.5 gives one pixel scale", "32x32", "64x64", "pixscale_arcsec column")
    assert not os.path.exists(tmp_path / "one.parquet")

    pictures = tmp_path / "pictures"
    pictures.mkdir()
    rows = ["object_id,file,scale"]
    for object_id, size, scale in ((1, 20, 0.4), (2, 40, 0.2), (3, 40, 0.25)):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(pictures / f"{object_id}.png")
        rows.append(f"{object_id},{object_id}.png,{scale}")
    (pictures / "catalogue.csv").write_text("\n".join(rows) + "\n")
    out = str(tmp_path / "png.parquet")
    ok(run("gal-pack", str(pictures / "catalogue.csv"), "--resize", "10", "--stamp-pixscale", "scale", "-o", out))
    assert pq.read_table(out).column("pixscale_arcsec").to_pylist() == pytest.approx([0.8, 0.8, 1.0], rel=1e-9)
    same = str(tmp_path / "same.parquet")     # one size: the scale stays one metadata value, as before
    ok(run("gal-pack", str(folder), "--crop", "32", "--resize", "16", "--pixscale", "0.524",
           "-o", same))
    assert "pixscale_arcsec" not in pq.read_table(same).column_names


def test_photoz_predict_on_cutouts_checks_the_scale_too(model, tmp_path):
    rng = np.random.default_rng(8)
    labelled, _ = _table_file(tmp_path, "labelled.parquet", n=120, pixscale_arcsec=str(MODEL_PIXSCALE))
    emb = str(tmp_path / "emb.parquet")
    ok(run("gal-embed", labelled, "--model", model[0], "-o", emb))
    table = pq.read_table(emb)
    table = table.append_column("z_spec", pa.array(rng.uniform(0.05, 0.35, table.num_rows)))
    pq.write_table(table, emb)
    photoz = str(tmp_path / "pz.model")
    ok(run("gal-photoz", "fit", emb, "--z-column", "z_spec", "--bins", "20", "-o", photoz, "--seed", "1"))
    hst, _ = _table_file(tmp_path, "hst.parquet", pixscale_arcsec="0.03")
    result = ok(run("gal-photoz", "predict", hst, "--model", photoz, "--encoder", model[0],
                    "-o", str(tmp_path / "p1.parquet")))
    assert "0.03 arcsec/pixel" in result.stderr.decode() and "0.262 arcsec/pixel" in result.stderr.decode()
    assert pq.read_table(str(tmp_path / "p1.parquet")).num_rows == 20
    error(run("gal-photoz", "predict", hst, "--model", photoz, "--encoder", model[0], "--strict",
              "-o", str(tmp_path / "p2.parquet")), 65, "0.03 arcsec/pixel", "0.262 arcsec/pixel")
    assert not os.path.exists(tmp_path / "p2.parquet")


def test_hdf5_plugin_filters_when_hdf5plugin_is_installed(tmp_path):
    hdf5plugin = pytest.importorskip("hdf5plugin", reason="hdf5plugin (optional) is not installed")
    images = np.random.default_rng(9).normal(size=(40, 2, 12, 12)).astype(np.float32)
    path = str(tmp_path / "zstd.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images, chunks=(8, 2, 12, 12), **hdf5plugin.Zstd())
        f.attrs["bands"] = ["r", "i"]
    out = str(tmp_path / "zstd.parquet")
    ok(run("gal-pack", path, "-o", out))
    np.testing.assert_array_equal(images_of(pq.read_table(out)), images)

    blocker = tmp_path / "blocked"                     # the same file where hdf5plugin is not installed
    blocker.mkdir()
    (blocker / "hdf5plugin.py").write_text("raise ImportError('not installed')\n")
    result = run_tool("gal-pack", path, "-o", str(tmp_path / "x.parquet"),
                      env=dict(os.environ, PYTHONPATH=f"{blocker}{os.pathsep}{ROOT}"))
    err = result.stderr.decode()
    assert result.returncode == 65 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert "error: " in last and "cannot read rows 0-" in last and "pip install hdf5plugin" in last, err
