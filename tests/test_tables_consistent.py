"""Tables that never contradict themselves or pick data in silence: bands against image planes, multi-extension
FITS stamps, labels outside the photo-z bins, encoders whose sha256 does not depend on the run folder, and the
units, history and plain-text formats that other astronomers' tools read."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import assert_clean_error as error_line
from conftest import make_cutouts, run_tool, write_table
from galtools.io import images_of, open_table, tensor_column


# -------------------------------------------------------------------------------------- bands and image planes

def test_bands_that_contradict_the_image_planes_are_refused(tmp_path):
    table = make_cutouts(n=5)   # 3 planes
    bad = str(tmp_path / "bad.parquet")
    pq.write_table(table.replace_schema_metadata({"galtools.bands": "u,g,r,i,z"}), bad)   # written by another tool
    result = run_tool("gal-pack", bad, "-o", tmp_path / "out.fits")
    line = error_line(result, 65)
    assert "3 plane(s) but the metadata names 5 band(s) (u,g,r,i,z)" in line and "--bands" in line
    assert sorted(os.listdir(tmp_path)) == ["bad.parquet"]
    result = run_tool("gal-pack", bad, "--bands", "g,r,i", "-o", tmp_path / "out.fits")   # refused as input too
    assert result.returncode == 65


def test_repeated_band_names_are_refused(tmp_path):
    from PIL import Image

    stamps = tmp_path / "stamps"
    stamps.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(stamps / f"{i}.png")
    result = run_tool("gal-pack", stamps, "--bands", "i,i,i", "-o", tmp_path / "out.parquet")
    assert "band names repeat (i in i,i,i)" in error_line(result, 65)
    result = run_tool("gal-pack", stamps, "--bands", "i,r,g", "-o", tmp_path / "out.parquet", check=True)
    assert open_table(str(tmp_path / "out.parquet")).bands == ["i", "r", "g"]


def test_images_without_a_band_axis_are_bad_data_not_an_internal_error(tmp_path):
    flat = np.zeros((4, 8, 8), np.float32)
    column = pa.FixedShapeTensorArray.from_numpy_ndarray(flat)
    path = str(tmp_path / "flat.parquet")
    pq.write_table(pa.table({"object_id": pa.array(np.arange(4)), "image": column}), path)
    for tool, args in (("gal-info", [path]), ("gal-pack", [path, "-o", tmp_path / "o.fits"])):
        line = error_line(run_tool(tool, *args), 65)
        assert "images are 8 x 8 tensors, not bands x height x width" in line, line


# ------------------------------------------------------------------------------------ multi-extension stamps

def _mef_stamps(folder, n: int = 4):
    """Stamps with two image extensions each (SCI, then WHT), as survey archives and GalSim's RealGalaxy files
    ship them, and a catalogue naming each row's HDU."""
    import fitsio

    rows = []
    for i in range(n):
        path = folder / f"stamp{i}.fits"
        with fitsio.FITS(str(path), "rw", clobber=True) as fits:
            fits.write(None)
            fits.write(np.full((10, 10), 100.0 + i, np.float32), extname="SCI")
            fits.write(np.full((10, 10), -1.0, np.float32), extname="WHT")
        rows.append((i, path.name))
    return rows


def test_several_image_hdus_and_no_choice_is_an_error(tmp_path):
    rows = _mef_stamps(tmp_path)
    (tmp_path / "cat.csv").write_text("id,file\n" + "".join(f"{i},{name}\n" for i, name in rows))
    line = error_line(run_tool("gal-pack", tmp_path / "cat.csv", "-o", tmp_path / "o.fits"), 65)
    assert "holds 2 images (HDUs 1 (SCI), 2 (WHT)) and none was chosen" in line and "--hdu-column" in line
    assert not (tmp_path / "o.fits").exists()


@pytest.mark.parametrize("how", ["column", "number", "name"])
def test_the_chosen_hdu_is_packed(tmp_path, how):
    rows = _mef_stamps(tmp_path)
    if how == "column":   # GalSim's RealGalaxyCatalog: GAL_FILENAME + GAL_HDU
        text = "IDENT,GAL_FILENAME,GAL_HDU\n" + "".join(f"{i},{name},1\n" for i, name in rows)
        args = ["--file-column", "GAL_FILENAME", "--hdu-column", "GAL_HDU", "--id-column", "IDENT"]
    else:
        spec = "1" if how == "number" else "sci"
        text = "id,file\n" + "".join(f"{i},{name}[{spec}]\n" for i, name in rows)
        args = []
    (tmp_path / "cat.csv").write_text(text)
    run_tool("gal-pack", tmp_path / "cat.csv", *args, "-o", tmp_path / "o.parquet", check=True)
    with open_table(str(tmp_path / "o.parquet")) as table:
        packed = table.read_all()
    assert packed.column("object_id").to_pylist() == [0, 1, 2, 3]
    assert "GAL_HDU" not in packed.column_names
    images = images_of(packed)
    assert [float(images[i].min()) for i in range(4)] == [100.0, 101.0, 102.0, 103.0]   # SCI, never WHT
    assert [float(images[i].max()) for i in range(4)] == [100.0, 101.0, 102.0, 103.0]


def test_the_hdu_column_can_pick_another_extension_per_row(tmp_path):
    rows = _mef_stamps(tmp_path, n=2)
    (tmp_path / "cat.csv").write_text("id,file,hdu\n0,stamp0.fits,SCI\n1,stamp1.fits,2\n")
    run_tool("gal-pack", tmp_path / "cat.csv", "--hdu-column", "hdu", "-o", tmp_path / "o.parquet", check=True)
    images = images_of(open_table(str(tmp_path / "o.parquet")).read_all())
    assert float(images[0].mean()) == 100.0 and float(images[1].mean()) == -1.0
    (tmp_path / "cat.csv").write_text("id,file,hdu\n0,stamp0.fits,7\n")
    line = error_line(run_tool("gal-pack", tmp_path / "cat.csv", "--hdu-column", "hdu", "-o", tmp_path / "x.fits"), 65)
    assert "has no HDU 7" in line


def test_skip_bad_leaves_out_stamps_smaller_than_the_crop(tmp_path):
    import fitsio

    for i, size in enumerate((12, 12, 6, 12)):
        fitsio.write(str(tmp_path / f"s{i}.fits"), np.full((size, size), float(i), np.float32), clobber=True)
    (tmp_path / "cat.csv").write_text("id,file\n" + "".join(f"{i},s{i}.fits\n" for i in range(4)))
    result = run_tool("gal-pack", tmp_path / "cat.csv", "--crop", "10", "-o", tmp_path / "o.parquet")
    assert "6x6 pixels, smaller than --crop 10" in error_line(result, 65)
    result = run_tool("gal-pack", tmp_path / "cat.csv", "--crop", "10", "--skip-bad", "-o", tmp_path / "o.parquet",
                      check=True)
    assert "skipped object 2" in result.stderr.decode()
    table = open_table(str(tmp_path / "o.parquet")).read_all()
    assert table.column("object_id").to_pylist() == [0, 1, 3] and images_of(table).shape == (3, 1, 10, 10)


# ---------------------------------------------------------------------------------------- photo-z label range

def test_labels_far_above_zmax_are_refused_unless_clipped(tmp_path):
    rng = np.random.default_rng(5)
    n = 600
    z = rng.uniform(0.01, 0.6, n)              # a sample reaching z = 0.6 against the default --zmax 0.4
    x = np.column_stack([z * 10, rng.standard_normal((n, 7))]).astype(np.float32)
    from galtools.io import vector_column

    emb = write_table(pa.table({"object_id": pa.array(np.arange(n)), "z_spec": pa.array(z),
                                "embedding": vector_column(x)}), str(tmp_path / "emb.parquet"))
    above = int((z >= 0.4).sum())
    result = run_tool("gal-photoz", "fit", emb, "-o", tmp_path / "m.model", "--max-epochs", "2")
    line = error_line(result, 65)
    assert f"{above} of {n} labels" in line and "--zmax 0.4" in line and "--zmax 0.6 covers them" in line, line
    assert "--clip-labels" in line and not (tmp_path / "m.model").exists()
    run_tool("gal-photoz", "fit", emb, "-o", tmp_path / "m.model", "--max-epochs", "2", "--zmax", "0.6", check=True)
    # metrics against --truth would count a repeated object twice: a table with repeated ids is refused there
    doubled = str(tmp_path / "doubled.parquet")
    table = open_table(emb).read_all()
    write_table(pa.concat_tables([table, table.slice(0, 5)]), doubled)
    line = error_line(run_tool("gal-photoz", "predict", doubled, "--model", tmp_path / "m.model", "--truth", "z_spec",
                               "-o", tmp_path / "p.parquet"), 65)
    assert "5 object_id(s) appear more than once (first: 0, 1, 2 ...)" in line
    result = run_tool("gal-photoz", "fit", emb, "-o", tmp_path / "c.model", "--max-epochs", "2", "--clip-labels",
                      check=True)
    assert f"{above} label(s) with z_spec >= 0.4 were put in the last bin" in result.stderr.decode()


# ------------------------------------------------------------------------------------------ encoder identity

@pytest.mark.slow
def test_the_same_training_in_two_folders_gives_the_same_encoder_sha256(tmp_path):
    """The run folder and where the data lies are not part of the model: the tools compare encoders by the
    sha256 of encoder.onnx, and two identical trainings must be recognised as one encoder."""
    pytest.importorskip("torch")
    from test_train import write_galaxies
    from test_train_cli import FAST, gal_train

    first, second = tmp_path / "a", tmp_path / "elsewhere" / "b"
    second.parent.mkdir()
    data = [write_galaxies(folder / "cutouts.fits", 48, size=20) for folder in (tmp_path, tmp_path / "elsewhere")]
    for cutouts, run in zip(data, (first, second)):
        result = gal_train(cutouts, "--out", run, *FAST, "--steps", "2", "--seed", "1")
        assert result.returncode == 0, result.stderr.decode()
        # the note on a short run suggests something possible (it once said "--key-momentum -0.5 or less")
        assert "give --steps 3000 or more, or --key-momentum 0" in result.stderr.decode()
        assert "--key-momentum -" not in result.stderr.decode()
    digests = [hashlib.sha256((run / "encoder.onnx").read_bytes()).hexdigest() for run in (first, second)]
    assert digests[0] == digests[1]
    from galtools.train.export import read_metadata

    config = json.loads(read_metadata(str(first / "encoder.onnx"))["galtools.train_config"])
    assert "out" not in config and config["inputs"] == ["cutouts.fits"] and config["seed"] == 1


# ------------------------------------------------------------------------------- what other tools read from us

def _catalogue_with_units(n: int = 6) -> pa.Table:
    rng = np.random.default_rng(1)
    return pa.table({"object_id": pa.array(np.arange(n)), "ra": pa.array(rng.uniform(0, 360, n)),
                     "dec": pa.array(rng.uniform(-10, 10, n)), "mag_r": pa.array(rng.uniform(14, 18, n)),
                     "half_light_arcsec": pa.array(rng.uniform(0.5, 3, n)), "label": pa.array(["a"] * n),
                     "image": tensor_column(rng.normal(size=(n, 3, 8, 8)))})


def test_astropy_reads_units_from_our_fits_and_parquet(tmp_path):
    from astropy.io import fits
    from astropy.table import Table

    source = write_table(_catalogue_with_units(), str(tmp_path / "src.parquet"), **{"galtools.flux_unit": "nanomaggy",
                                                                                     "galtools.pixscale_arcsec": "0.396"})
    run_tool("gal-pack", source, "-o", tmp_path / "c.fits", check=True)
    catalog = Table.read(str(tmp_path / "c.fits"), hdu="CATALOG")
    assert str(catalog["ra"].unit) == "deg" and str(catalog["dec"].unit) == "deg"
    assert str(catalog["mag_r"].unit) == "mag" and str(catalog["half_light_arcsec"].unit) == "arcsec"
    assert catalog["object_id"].unit is None and catalog["label"].unit is None
    with fits.open(tmp_path / "c.fits") as hdul:
        cube = hdul["CUTOUTS"].header
        assert cube["BUNIT"] == "nanomaggy" and cube["BANDS"] == "g,r,i" and cube["PIXSCALE"] == pytest.approx(0.396)
    plain = tmp_path / "plain.parquet"   # astropy reads Parquet without image columns
    write_table(_catalogue_with_units().drop_columns(["image"]), str(plain))
    try:
        import pandas  # noqa: F401  (astropy's Parquet reader needs it)
    except ImportError:   # without pandas: the header astropy would read, read by astropy's own parser
        from astropy.table.meta import get_header_from_yaml

        yaml_text = pq.read_schema(str(plain)).metadata[b"table_meta_yaml"].decode()
        units = {c["name"]: c.get("unit") for c in get_header_from_yaml(yaml_text.splitlines())["datatype"]}
        assert units == {"object_id": None, "ra": "deg", "dec": "deg", "mag_r": "mag", "half_light_arcsec": "arcsec",
                         "label": None}
    else:
        table = Table.read(str(plain))
        assert str(table["ra"].unit) == "deg" and str(table["mag_r"].unit) == "mag" and table["label"].unit is None
    field = pq.read_schema(str(plain)).field("dec")
    assert field.metadata[b"unit"] == b"deg"
    # and our own reader neither chokes on nor carries astropy's copy forward
    with open_table(str(plain)) as back:
        assert "table_meta_yaml" not in back.metadata


def test_fits_history_is_one_readable_command_line_per_run(tmp_path, cutouts):
    from astropy.io import fits

    path, _ = cutouts
    args = ["cutouts.fits", "--crop", "8", "--bands", "g,r,i", "--pixscale", "0.396", "--fill-nan", "0", "-j", "1",
            "-o", "a-rather-long-output-name-so-that-the-line-wraps.fits"]
    run_tool("gal-pack", *args, cwd=tmp_path, check=True)
    with fits.open(tmp_path / args[-1]) as hdul:
        cards = [str(h) for h in hdul[0].header["HISTORY"]]
    assert all(len(card) <= 72 for card in cards)
    runs = [i for i, card in enumerate(cards) if not card.startswith("  ")]
    assert [cards[i].split()[0] for i in runs] == ["test", "gal-pack"]
    assert len(cards) - runs[1] >= 2                      # the second run wrapped onto a continuation card
    words = " ".join(c.strip() for c in cards[runs[1]:]).split()
    assert words[0] == "gal-pack" and words[3:] == args   # version, time, then the command line, whole words
    assert "{" not in " ".join(cards)
    with open_table(str(tmp_path / args[-1])) as table:    # the JSON history still reaches programs
        assert [h["tool"] for h in table.history] == ["test", "gal-pack"]
        assert table.history[-1]["argv"] == args


@pytest.mark.parametrize("how", ["extension", "format"])
def test_plain_tables_as_csv_and_tsv(tmp_path, how):
    """gal-knn's neighbour table, a plain table, as CSV and TSV that the csv module reads back."""
    import csv

    from galtools.io import vector_column

    rng = np.random.default_rng(2)
    n = 12
    emb = write_table(pa.table({"object_id": pa.array(np.arange(100, 100 + n)), "ra": pa.array(rng.uniform(0, 9, n)),
                                "embedding": vector_column(rng.normal(size=(n, 4)))}), str(tmp_path / "e.parquet"))
    run_tool("gal-knn", emb, "--all", "-k", "2", "-o", tmp_path / "n.parquet", check=True)
    reference = open_table(str(tmp_path / "n.parquet")).read_all()
    for fmt, delimiter in (("csv", ","), ("tsv", "\t")):
        out = tmp_path / (f"n.{fmt}" if how == "extension" else f"n-{fmt}.txt")
        args = [] if how == "extension" else ["--format", fmt]
        run_tool("gal-knn", emb, "--all", "-k", "2", "-o", out, *args, check=True)
        with open(out, newline="") as handle:
            rows = list(csv.reader(handle, delimiter=delimiter))
        assert rows[0] == reference.column_names
        for i, name in enumerate(reference.column_names):
            expected = reference.column(name).to_pylist()
            if isinstance(expected[0], float):
                assert np.allclose([float(r[i]) for r in rows[1:]], expected, rtol=1e-6, atol=1e-7)
            else:
                assert [r[i] for r in rows[1:]] == [str(v) for v in expected]


def test_csv_refuses_image_and_vector_columns_naming_them(tmp_path, cutouts):
    path, _ = cutouts
    line = error_line(run_tool("gal-pack", path, "-o", tmp_path / "c.csv"), 65)
    assert "CSV cannot hold the image or vector column(s) image" in line and ".parquet" in line
    line = error_line(run_tool("gal-pack", path, "-o", tmp_path / "c.txt", "--format", "tsv"), 65)
    assert "TSV cannot hold the image or vector column(s) image" in line and "--drop-vectors" in line
    assert sorted(os.listdir(tmp_path)) == ["cutouts.fits"]


def test_stilts_shows_the_units_of_our_fits_columns(tmp_path):
    """TOPCAT's command-line twin reads the catalogue HDU's units (skipped where STILTS is not installed)."""
    import shutil
    import subprocess

    if shutil.which("stilts") is None:
        pytest.skip("STILTS is not installed (Debian package 'stilts')")
    source = write_table(_catalogue_with_units(), str(tmp_path / "src.parquet"))
    out = tmp_path / "c.fits"
    run_tool("gal-pack", source, "-o", out, check=True)
    result = subprocess.run(["stilts", "tpipe", f"in={out}#2", "omode=meta"], capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    for column, unit in (("ra", "deg"), ("dec", "deg"), ("mag_r", "mag"), ("half_light_arcsec", "arcsec")):
        assert f" {column}(Double)/{unit} " in text + " ", text
    assert "object_id(Long) " in text + " "


# ------------------------------------------------------------------------------------------------ repeated ids

def _embeddings(n: int, first_id: int = 0, seed: int = 0) -> pa.Table:
    from galtools.io import vector_column

    rng = np.random.default_rng(seed)
    return pa.table({"object_id": pa.array(np.arange(first_id, first_id + n)),
                     "embedding": vector_column(rng.normal(size=(n, 8)))})


def test_parts_concatenated_twice_are_refused_where_ids_are_looked_up(tmp_path):
    """A re-run shard left beside the first run: the folder of parts holds each object of that shard twice."""
    parts = tmp_path / "parts"
    parts.mkdir()
    write_table(_embeddings(10, 0), str(parts / "emb-0.parquet"))
    write_table(_embeddings(10, 10, seed=1), str(parts / "emb-1.parquet"))
    write_table(_embeddings(10, 10, seed=1), str(parts / "emb-1-rerun.parquet"))
    for args in (["gal-knn", parts, "--query", "3", "-k", "2"],
                 ["gal-ood", "fit", parts, "-o", tmp_path / "ood.model"]):
        line = error_line(run_tool(*args), 65)
        assert "10 object_id(s) appear more than once (first: 10, 11, 12 ...)" in line, line
        assert "GROUP BY 1 HAVING count(*) > 1" in line
    assert not (tmp_path / "ood.model").exists()
    clean = tmp_path / "clean"
    clean.mkdir()
    for name in ("emb-0.parquet", "emb-1.parquet"):
        os.link(parts / name, clean / name)
    result = run_tool("gal-knn", clean, "--query", "3", "-k", "2", "-o", tmp_path / "n.parquet", check=True)
    assert result.returncode == 0


def test_gal_pack_refuses_repeated_ids_in_a_catalogue_and_a_table(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((8, 8), 50 * i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "cat.csv").write_text("objid,file\n7,0.png\n8,1.png\n7,2.png\n")
    line = error_line(run_tool("gal-pack", tmp_path / "cat.csv", "-o", tmp_path / "o.parquet"), 65)
    assert "1 object_id(s) appear more than once (first: 7)" in line
    table = make_cutouts(n=6)
    doubled = pa.concat_tables([table, table.slice(2, 2)])
    source = str(tmp_path / "doubled.parquet")
    pq.write_table(doubled.replace_schema_metadata({"galtools.bands": "g,r,i"}), source)
    line = error_line(run_tool("gal-pack", source, "-o", tmp_path / "o.fits"), 65)
    assert "2 object_id(s) appear more than once (first: 1002, 1003)" in line
    assert sorted(os.listdir(tmp_path)) == ["0.png", "1.png", "2.png", "cat.csv", "doubled.parquet"]



# ------------------------------------------------------------------------------------ messages that mislead

def test_a_one_row_table_has_no_neighbours_to_offer(tmp_path):
    emb = write_table(_embeddings(1, 42), str(tmp_path / "one.parquet"))
    line = error_line(run_tool("gal-knn", emb, "--query", "42", "-k", "1"), 65)
    assert "holds no object other than the query (1 row(s))" in line and "-k 1 or less" not in line


def test_a_pickled_model_file_is_refused_without_numpy_advice(tmp_path):
    bad = tmp_path / "evil.model"
    with open(bad, "wb") as handle:
        np.savez(handle, __galtools__=np.array([{"format": "x"}], dtype=object))
    result = run_tool("gal-photoz", "predict", tmp_path / "none.parquet", "--model", bad, "-o", tmp_path / "p.parquet")
    line = error_line(result, 65)
    assert "holds pickled Python objects, which galtools never loads" in line and "trust" not in line


def test_brief_cuts_library_text_at_a_word():
    from galtools.errors import brief

    text = "PytorchStreamReader failed reading zip archive: failed finding central directory " * 3
    cut = brief(text, 100)
    assert len(cut) <= 104 and cut.endswith(" ...") and text.startswith(cut[:-4])
    assert text[len(cut) - 4] == " "          # the cut falls between two words
    assert brief("short  text\n", 100) == "short text"


def test_zero_rows_in_empty_table_out_where_that_means_something(tmp_path):
    empty = write_table(make_cutouts(n=4).slice(0, 0), str(tmp_path / "empty.parquet"))
    run_tool("gal-pack", empty, "--crop", "8", "-o", tmp_path / "e.fits", check=True)
    with open_table(str(tmp_path / "e.fits")) as table:
        assert table.num_rows == 0 and table.image_shape == (3, 8, 8)
    (tmp_path / "cat.csv").write_text("id,file\n")
    line = error_line(run_tool("gal-pack", tmp_path / "cat.csv", "-o", tmp_path / "c.fits"), 65)
    assert "nothing to write" in line
    emb = write_table(_embeddings(3).slice(0, 0), str(tmp_path / "emb.parquet"))
    assert error_line(run_tool("gal-knn", emb, "--all", "-k", "1", "-o", tmp_path / "n.parquet"), 65)


def test_shell_completion_is_documented_and_works(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "man", "gal-knn.1")) as handle:
        assert "_GAL_KNN_COMPLETE=bash_source gal\\-knn" in handle.read()
    with open(os.path.join(root, "README.md")) as handle:
        assert "_GAL_PACK_COMPLETE=bash_source gal-pack" in handle.read()
    env = {**os.environ, "_GAL_PACK_COMPLETE": "bash_complete", "COMP_WORDS": "gal-pack --hdu", "COMP_CWORD": "1"}
    result = run_tool("gal-pack", env=env)
    assert result.returncode == 0 and result.stdout.decode().split() == ["plain,--hdu-column"], result
