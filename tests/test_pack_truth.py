"""What gal-pack writes stays true, and bad inputs are named for what they are: pixel scales and fluxes after crop and
resize (per object where stamps differ, from the HDU actually read), unnamed bands never matched by position,
control characters escaped in messages, empty or mislabelled files, signed HDF5 pixels, partition columns that
contradict their folder, missing parts, and the examples a new user copies.  Real processes on files the tests
write, checked against references computed here."""
from __future__ import annotations

import os
import shlex

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import shell, write_table
from conftest import assert_clean_error as error
from test_own_data import (MODEL_PIXSCALE, MODEL_UNIT, embeddings_of, h5py, info, model, ok,  # noqa: F401
                           run, torch_embeddings)


def images_of(table: pa.Table) -> np.ndarray:
    from galtools.io import images_of as read

    return read(table)


def cutout_file(path, images, bands="g,r,z", **metadata) -> str:
    from galtools.io import tensor_column

    columns = {"object_id": pa.array(np.arange(len(images), dtype=np.int64))}
    columns.update({k: pa.array(v) for k, v in metadata.pop("columns", {}).items()})
    columns["image"] = tensor_column(np.asarray(images, np.float32))
    return write_table(pa.table(columns), str(path), bands=bands, **metadata)


def block(images: np.ndarray, k: int, how) -> np.ndarray:
    """The reference resample by an integer factor: ``how`` (sum or mean) over k x k blocks, in float64."""
    n, b, h, w = images.shape
    return how(images.astype(np.float64).reshape(n, b, h // k, k, w // k, k), axis=(3, 5))


def scale_of(path) -> float:
    return float(info(path)["image"]["pixscale_arcsec"])


# ------------------------------------------------------------------------------ pixel scale and flux after resize

def test_resize_grows_the_pixel_scale_keeps_the_flux_and_strict_embed_refuses_the_old_scale(model, tmp_path):
    images = np.random.default_rng(11).gamma(2.0, 1.0, (12, 3, 32, 32)).astype(np.float32)
    source = cutout_file(tmp_path / "big.parquet", images, **{"galtools.pixscale_arcsec": repr(MODEL_PIXSCALE),
                                                              "galtools.flux_unit": MODEL_UNIT})
    half = str(tmp_path / "half.parquet")
    ok(run("gal-pack", source, "--resize", "16", "-o", half))
    summary = info(half)
    assert float(summary["image"]["pixscale_arcsec"]) == pytest.approx(2 * MODEL_PIXSCALE, rel=1e-12)
    assert summary["image"]["flux_unit"] == MODEL_UNIT       # a pixel still holds the flux on it: summed
    np.testing.assert_allclose(images_of(pq.read_table(half)), block(images, 2, np.sum), rtol=1e-5)

    cropped = str(tmp_path / "cropped.parquet")                # a crop keeps the scale
    ok(run("gal-pack", source, "--crop", "20", "-o", cropped))
    assert scale_of(cropped) == pytest.approx(MODEL_PIXSCALE, rel=1e-12)
    both = str(tmp_path / "both.parquet")                      # 20 pixels of 0.262 resampled to 10
    ok(run("gal-pack", source, "--crop", "20", "--resize", "10", "-o", both))
    assert scale_of(both) == pytest.approx(2 * MODEL_PIXSCALE, rel=1e-12)

    # the model was trained at 0.262"/px: --strict refuses the resized table and takes the original
    error(run("gal-embed", half, "--model", model[0], "--strict", "-o", str(tmp_path / "e1.parquet")), 65,
          "0.524 arcsec/pixel", "0.262 arcsec/pixel")
    assert not os.path.exists(tmp_path / "e1.parquet")
    ok(run("gal-embed", source, "--model", model[0], "--strict", "-o", str(tmp_path / "e2.parquet")))

    # a --pixscale that contradicts what gal-pack derives is refused, one that agrees is taken
    error(run("gal-pack", source, "--resize", "16", "--pixscale", str(MODEL_PIXSCALE), "-o",
              str(tmp_path / "wrong.parquet")), 2, "--pixscale 0.262", "0.524")
    ok(run("gal-pack", source, "--resize", "16", "--pixscale", "0.524", "-o", str(tmp_path / "right.parquet")))
    # the input's own scale, where its metadata is wrong or missing, is --stamp-pixscale
    ok(run("gal-pack", source, "--resize", "16", "--stamp-pixscale", "0.5", "-o", str(tmp_path / "own.parquet")))
    assert scale_of(str(tmp_path / "own.parquet")) == pytest.approx(1.0, rel=1e-12)


def test_resize_scales_each_objects_own_scale_and_averages_display_values(tmp_path):
    images = np.random.default_rng(12).uniform(0, 1, (4, 3, 24, 24)).astype(np.float32)
    own = [0.2, 0.25, 0.3, 0.396]
    source = cutout_file(tmp_path / "pictures.parquet", images, bands="red,green,blue",
                         columns={"pixscale_arcsec": own}, **{"galtools.flux_unit": "8-bit scaled to [0,1]"})
    out = str(tmp_path / "small.parquet")
    ok(run("gal-pack", source, "--resize", "8", "-o", out))
    table = pq.read_table(out)
    assert table.column("pixscale_arcsec").to_pylist() == pytest.approx([3 * s for s in own], rel=1e-12)
    np.testing.assert_allclose(images_of(table), block(images, 3, np.mean), rtol=1e-5)   # display values: a mean
    assert 0 <= images_of(table).min() and images_of(table).max() <= 1


# ------------------------------------------------------------------------ stamps chosen by --hdu-column

def _multi_hdu_stamps(folder, sizes_by_file, scale=0.03, empty_primary=True):
    """FITS files of one galaxy per image HDU, sizes differing; COSMOS's real galaxy images start in the primary
    HDU (``empty_primary=False``)."""
    import fitsio

    rng = np.random.default_rng(13)
    for name, sizes in sizes_by_file.items():
        with fitsio.FITS(str(folder / name), "rw", clobber=True) as fits:
            if empty_primary:
                fits.write(None)
            for size in sizes:
                fits.write(rng.gamma(2.0, 1.0, (size, size)).astype(np.float32),
                           header=[{"name": "PIXSCALE", "value": scale}])


def test_hdu_column_takes_each_stamps_size_and_scale_from_the_hdu_read(tmp_path):
    _multi_hdu_stamps(tmp_path, {"a.fits": [16, 32], "b.fits": [16, 48]})
    (tmp_path / "cat.csv").write_text("id,file,hdu\n1,a.fits,1\n2,a.fits,2\n3,b.fits,1\n4,b.fits,2\n")
    out = str(tmp_path / "out.parquet")
    ok(run("gal-pack", str(tmp_path / "cat.csv"), "--hdu-column", "hdu", "--resize", "8", "-o", out))
    table = pq.read_table(out)
    assert table.column("object_id").to_pylist() == [1, 2, 3, 4]
    assert table.column("pixscale_arcsec").to_pylist() == pytest.approx([0.06, 0.12, 0.06, 0.18], rel=1e-9)
    error(run("gal-pack", str(tmp_path / "cat.csv"), "--hdu-column", "hdu", "--resize", "8", "--pixscale", "0.06",
              "-o", str(tmp_path / "one.parquet")), 2, "--pixscale 0.06 gives one pixel scale", "pixscale_arcsec")
    # without --resize the sizes differ: the message names both stamps, each with its HDU
    err = error(run("gal-pack", str(tmp_path / "cat.csv"), "--hdu-column", "hdu", "-o", str(tmp_path / "x.parquet")),
                65, "a.fits[2] is 32x32 pixels", "unlike")
    assert "a.fits[1]" in err, err


def test_the_cosmos_example_of_the_help_runs_and_its_band_map_embeds(model, tmp_path):
    import fitsio

    from galtools.cli.pack import EXAMPLE

    _multi_hdu_stamps(tmp_path, {"real_galaxy_images_23.5_n1.fits": [20, 40, 30],
                                 "real_galaxy_images_23.5_n2.fits": [60, 20]}, empty_primary=False)
    rows = [(1001, "real_galaxy_images_23.5_n1.fits", 0), (1002, "real_galaxy_images_23.5_n1.fits", 1),
            (1003, "real_galaxy_images_23.5_n1.fits", 2), (1004, "real_galaxy_images_23.5_n2.fits", 0),
            (1005, "real_galaxy_images_23.5_n2.fits", 1)]
    sizes = [20, 40, 30, 60, 20]
    catalogue = np.zeros(len(rows), dtype=[("IDENT", "i8"), ("GAL_FILENAME", "S40"), ("GAL_HDU", "i4"),
                                           ("PIXEL_SCALE", "f8"), ("MAG", "f8")])
    catalogue["IDENT"] = [r[0] for r in rows]
    catalogue["GAL_FILENAME"] = [r[1] for r in rows]
    catalogue["GAL_HDU"] = [r[2] for r in rows]            # the HDU in the file, 0 the primary
    catalogue["PIXEL_SCALE"] = 0.03
    catalogue["MAG"] = np.linspace(20, 23, len(rows))
    fitsio.write(str(tmp_path / "real_galaxy_catalog_23.5.fits"), catalogue, clobber=True)

    text = EXAMPLE.replace("\\\n", " ")
    line = next(line for line in text.splitlines() if "real_galaxy_catalog" in line)
    result = shell(line, cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    out = shlex.split(line)[shlex.split(line).index("-o") + 1]
    with fitsio.FITS(str(tmp_path / out)) as fits:
        assert fits[0].read_header()["BANDS"].strip() == "F814W"
        catalog = fits["CATALOG"].read()
        assert fits["CUTOUTS"].get_dims() == [5, 1, 64, 64]
    assert catalog["object_id"].tolist() == [r[0] for r in rows]
    np.testing.assert_allclose(catalog["pixscale_arcsec"], [0.03 * s / 64 for s in sizes], rtol=1e-9)
    # the README's way of putting a one-band survey through a three-band encoder, on this table
    embedded = str(tmp_path / "hst-emb.parquet")
    ok(run("gal-embed", str(tmp_path / out), "--model", model[0], "--band-map", "g=F814W,r=F814W,z=F814W",
           "-o", embedded))
    assert embeddings_of(embedded)[0] == [r[0] for r in rows]


# ------------------------------------------------------------------------------- unnamed bands are not guessed

def test_unnamed_planes_are_refused_by_a_model_until_named(model, tmp_path):
    images = np.random.default_rng(14).normal(0, 0.1, (20, 3, 24, 24)).astype(np.float32)
    g10 = str(tmp_path / "unnamed.h5")
    with h5py.File(g10, "w") as f:
        f.create_dataset("images", data=images)
        f.create_dataset("object_id", data=np.arange(20))
    out = str(tmp_path / "emb.parquet")
    error(run("gal-embed", g10, "--model", model[0], "-o", out), 65, "without band names", "g,r,z", "--bands")
    assert not os.path.exists(out)
    ok(run("gal-embed", g10, "--bands", "z,r,g", "--model", model[0], "-o", out))   # named: the z plane feeds z
    ids, vectors = embeddings_of(out)
    assert ids == list(range(20))
    np.testing.assert_allclose(vectors, torch_embeddings(model, images, (2, 1, 0)), rtol=1e-4, atol=1e-4)

    table = cutout_file(tmp_path / "unnamed.parquet", images, bands="")        # any table: the same
    error(run("gal-embed", table, "--model", model[0], "-o", str(tmp_path / "e2.parquet")), 65, "without band names")
    named = str(tmp_path / "named.parquet")
    ok(run("gal-pack", table, "--bands", "g,r,z", "-o", named))
    assert info(named)["image"]["bands"] == ["g", "r", "z"]
    ok(run("gal-embed", named, "--model", model[0], "-o", str(tmp_path / "e3.parquet")))
    np.testing.assert_allclose(embeddings_of(str(tmp_path / "e3.parquet"))[1], torch_embeddings(model, images),
                               rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------ messages a terminal can show

def test_messages_escape_control_characters_from_inputs(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.png")
    evil = "\x1b]0;pwned\x07\x1b[2J\x9b1m"
    (tmp_path / "cat.csv").write_text(f"id,file\n1,{evil}.png\n2,ok.png\n", encoding="utf-8")
    result = run("gal-pack", str(tmp_path / "cat.csv"), "-o", str(tmp_path / "o.parquet"))
    err = error(result, 66, r"\x1b]0;pwned\x07\x1b[2J\x9b1m.png")
    assert not any(ord(c) < 32 or 0x7f <= ord(c) < 0xa0 for c in err.strip()), repr(err)
    traced = run("gal-pack", str(tmp_path / "cat.csv"), "-v", "-o", str(tmp_path / "o.parquet")).stderr.decode()
    assert "Traceback" in traced and "\x1b" not in traced and r"\x1b]0;pwned" in traced, repr(traced)
    (tmp_path / "ids.csv").write_text(f"id,file\n{evil},gone.png\nfine,ok.png\n", encoding="utf-8")
    result = ok(run("gal-pack", str(tmp_path / "ids.csv"), "--skip-bad", "-o", str(tmp_path / "o.parquet")))
    err = result.stderr.decode()
    assert r"skipped object \x1b]0;pwned" in err and "\x1b" not in err and "\x07" not in err, repr(err)
    err = error(run("gal-pack", str(tmp_path / "cat.csv"), "--crop", evil, "-o", str(tmp_path / "p.parquet")), 2)
    assert "\x1b" not in err and r"\x1b" in err, repr(err)


def test_empty_or_mislabelled_table_files_are_named_for_what_they_are(tmp_path):
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    err = error(run("gal-pack", str(empty), "-o", str(tmp_path / "o.parquet")), 65, "empty", "not a Parquet table")
    assert "CSV" not in err
    noise = tmp_path / "noise.fits"
    noise.write_bytes(np.random.default_rng(15).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    err = error(run("gal-pack", str(noise), "-o", str(tmp_path / "o.parquet")), 65, "not a FITS file")
    assert "CSV" not in err
    error(run("gal-info", str(noise)), 65, "not a FITS file")


def test_gal_info_on_a_stamp_points_to_gal_pack(tmp_path):
    import fitsio

    fitsio.write(str(tmp_path / "stamp.fits"), np.zeros((20, 20), np.float32), clobber=True)
    error(run("gal-info", str(tmp_path / "stamp.fits")), 65, "stamp", "gal-pack")


def test_pictures_band_names_and_ids_are_said(tmp_path):
    from PIL import Image

    folder = tmp_path / "pictures"
    folder.mkdir()
    for object_id in (7, 8):
        Image.fromarray(np.full((8, 8, 3), object_id, np.uint8)).save(folder / f"{object_id}.png")
    out = str(tmp_path / "p.parquet")
    err = ok(run("gal-pack", str(folder), "-o", out)).stderr.decode()
    assert "bands red,green,blue" in err and "--bands" in err and "object_id: the file names" in err, err
    text = ok(run("gal-info", out)).stdout.decode()
    assert "colour planes of 8-bit pictures, not filters" in text and "gal-pack --bands" in text, text


# ------------------------------------------------------------------------------------------------- HDF5 integers

@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint8, np.uint16])
def test_hdf5_8_and_16_bit_pixels_signed_or_not_map_to_0_1(dtype, tmp_path):
    limits = np.iinfo(dtype)
    raw = np.random.default_rng(16).integers(limits.min, limits.max, (5, 2, 6, 6), endpoint=True).astype(dtype)
    raw[0, 0, 0, :2] = [limits.min, limits.max]
    path = str(tmp_path / "ints.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=raw)
        f.attrs["bands"] = "g,r"
    out = str(tmp_path / "ints.parquet")
    ok(run("gal-pack", path, "-o", out))
    expected = (raw.astype(np.float64) - limits.min) / (float(limits.max) - limits.min)
    got = images_of(pq.read_table(out))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert got[0, 0, 0, 0] == 0 and got[0, 0, 0, 1] == 1
    assert info(out)["image"]["flux_unit"] == f"{8 * np.dtype(dtype).itemsize}-bit scaled to [0,1]"


# -------------------------------------------------------------------------------- partitions and numbered parts

def test_a_partition_column_contradicting_its_folder_is_refused(tmp_path):
    images = np.zeros((3, 1, 4, 4), np.float32)
    agree = tmp_path / "agree" / "Norder=0" / "Npix=5"
    agree.mkdir(parents=True)
    cutout_file(agree / "part.parquet", images, bands="r", columns={"Npix": [5, 5, 5]})
    assert info(str(tmp_path / "agree"))["rows"] == 3
    clash = tmp_path / "clash" / "Norder=0" / "Npix=5"
    clash.mkdir(parents=True)
    cutout_file(clash / "part.parquet", images, bands="r", columns={"Npix": [5, 7, 5]})
    error(run("gal-pack", str(tmp_path / "clash"), "-o", str(tmp_path / "o.parquet")), 65, "column Npix holds 7",
          "folder Npix=5")
    assert not os.path.exists(tmp_path / "o.parquet")
    ok(run("gal-pack", str(tmp_path / "clash"), "--drop-partition-columns", "-o", str(tmp_path / "o.parquet")))
    assert "Npix" not in pq.read_table(str(tmp_path / "o.parquet")).column_names


def test_a_missing_numbered_part_or_listed_partition_is_refused(tmp_path):
    images = np.zeros((2, 1, 4, 4), np.float32)
    parts = tmp_path / "emb"
    parts.mkdir()
    for index in (0, 2):
        cutout_file(parts / f"part-{index}-of-3.parquet", images, bands="r")
    error(run("gal-info", str(parts)), 65, "1 of 3 parts missing", "part-1-of-3.parquet")
    error(run("gal-info", str(parts / "part-*.parquet")), 65, "part-1-of-3.parquet")
    cutout_file(parts / "part-1-of-3.parquet", images, bands="r")
    assert info(str(parts))["rows"] == 6

    hats = tmp_path / "catalog"
    for npix in (3, 12):
        folder = hats / "dataset" / "Norder=1" / "Dir=0"
        folder.mkdir(parents=True, exist_ok=True)
        cutout_file(folder / f"Npix={npix}.parquet", images, bands="r")
    (hats / "partition_info.csv").write_text("Norder,Npix\n1,3\n1,12\n1,40\n")
    error(run("gal-info", str(hats)), 65, "1 of the 3 partitions", "Norder=1/Npix=40")
    (hats / "partition_info.csv").write_text("Norder,Npix\n1,3\n1,12\n")
    assert info(str(hats))["rows"] == 4


def test_templated_parts_make_their_folder(tmp_path):
    source = cutout_file(tmp_path / "in.parquet", np.zeros((4, 1, 4, 4), np.float32), bands="r")
    for index in range(2):
        ok(run("gal-pack", source, "--shard", f"{index}/2", "-o", str(tmp_path / "parts" / "part-{shard}.parquet")))
    assert sorted(os.listdir(tmp_path / "parts")) == ["part-0-of-2.parquet", "part-1-of-2.parquet"]
    assert info(str(tmp_path / "parts"))["rows"] == 4
    error(run("gal-pack", source, "-o", str(tmp_path / "nowhere" / "out.parquet")), 74, "does not exist")
