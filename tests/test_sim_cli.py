"""gal-sim as users run it: real processes, real files and pipes, second-library readers."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("galsim")

from conftest import run_tool  # noqa: E402


def _read(path) -> pa.Table:
    from galtools.io import open_table

    with open_table(str(path)) as table:
        return table.read_all()


def _content(table: pa.Table) -> bytes:
    """The table's bytes (Arrow IPC, one chunk) without the metadata, whose history records each
    run's argv and time. Bytes, not Table.equals: stars carry NaN labels, and NaN != NaN."""
    table = table.replace_schema_metadata(None).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


@pytest.mark.slow
def test_writes_an_sdss_cutout_table_that_astropy_reads(tmp_path):
    from astropy.io import fits

    out = tmp_path / "sim.fits"
    run_tool("gal-sim", "-n", 12, "--seed", 4, "-j", 1, "--anomaly-fraction", 0.5, "-o", out, check=True)
    with fits.open(out) as hdus:
        cube = hdus["CUTOUTS"].data
        catalogue = hdus["CATALOG"].data
        assert cube.shape == (12, 5, 64, 64)
        assert np.isfinite(cube).all()
        assert list(catalogue["object_id"]) == list(range(12))
        assert np.all((catalogue["z_true"] >= 0) & (catalogue["z_true"] < 1))
    from galtools.io import open_table

    with open_table(str(out)) as table:
        assert table.bands == ["u", "g", "r", "i", "z"]
        assert float(table.metadata["galtools.pixscale_arcsec"]) == pytest.approx(0.396)
        assert table.metadata["galtools.flux_unit"] == "nanomaggy"
        assert table.metadata["galtools.history"].count("gal-sim") == 1
        names = table.schema.names
    for column in ["z_true", "sed_type", "bulge_frac", "morph_class", "half_light_arcsec", "mag_r", "ebv",
                   "psf_fwhm_u", "psf_fwhm_z", "is_anomaly", "anomaly_kind", "ra", "dec"]:
        assert column in names


@pytest.mark.slow
def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    one, two, other = tmp_path / "one.arrow", tmp_path / "two.arrow", tmp_path / "other.arrow"
    run_tool("gal-sim", "-n", 40, "--seed", 5, "--anomaly-fraction", 0.3, "-j", 1, "-o", one, check=True)
    run_tool("gal-sim", "-n", 40, "--seed", 5, "--anomaly-fraction", 0.3, "-j", 2, "-o", two, check=True)
    run_tool("gal-sim", "-n", 40, "--seed", 6, "--anomaly-fraction", 0.3, "-j", 2, "-o", other, check=True)
    a, b, c = _read(one), _read(two), _read(other)
    assert _content(a) == _content(b)
    from galtools.io import images_of

    assert images_of(a).tobytes() == images_of(b).tobytes()
    assert images_of(a).tobytes() != images_of(c).tobytes()


@pytest.mark.slow
def test_shards_concatenate_to_the_unsharded_output(tmp_path):
    whole = tmp_path / "whole.parquet"
    run_tool("gal-sim", "-n", 25, "--seed", 3, "--anomaly-fraction", 0.2, "-j", 1, "-o", whole, check=True)
    parts = []
    for i in range(3):
        run_tool("gal-sim", "-n", 25, "--seed", 3, "--anomaly-fraction", 0.2, "-j", 2, "--shard", f"{i}/3",
                 "-o", tmp_path / "part-{shard}.parquet", check=True)
    for path in sorted(tmp_path.glob("part-*.parquet")):
        parts.append(_read(path).replace_schema_metadata(None))
    assert [part.num_rows for part in parts] == [8, 8, 9]
    assert _content(pa.concat_tables(parts)) == _content(_read(whole))


def test_streams_into_gal_info_through_a_pipe():
    sim = subprocess.Popen([sys.executable, "-m", "galtools.cli.sim", "-n", "8", "-j", "1"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    info = subprocess.run([sys.executable, "-m", "galtools.cli.info", "-"], stdin=sim.stdout, capture_output=True,
                          timeout=300)
    sim.stdout.close()
    assert sim.wait(timeout=300) == 0, sim.stderr.read().decode()
    assert info.returncode == 0, info.stderr.decode()
    text = info.stdout.decode()
    assert "8 rows" in text and "5 x 64 x 64" in text and "nanomaggy" in text


def test_montage_png_decodes_with_one_cell_per_object(tmp_path):
    from PIL import Image

    png = tmp_path / "sample.png"
    run_tool("gal-sim", "-n", 20, "--size", 96, "-j", 1, "--montage", png, "--montage-count", 12,
             "-o", tmp_path / "s.parquet", check=True)
    with Image.open(png) as picture:
        picture.load()
        assert picture.format == "PNG" and picture.mode == "RGB"
        width, height = picture.size
    cell = 96  # 8 cells per row, 4 pixels apart; 12 objects make 2 rows of pictures with two caption lines
    assert width == 8 * (cell + 4) + 4
    assert 2 * cell < height < 2 * (cell + 3 * 12 + 4) + 40


def test_montage_captions_name_redshift_and_class():
    from galtools.sim.run import montage_caption

    labels = {"z_true": np.array([0.1234]), "morph_class": np.array(["edge_on"]),
              "anomaly_kind": np.array(["lens"]), "mag_r": np.array([17.1])}
    assert montage_caption(labels, 0) == "z=0.123 edge_on\nlens"


@pytest.mark.parametrize("args, code, words", [
    (["-n", "5", "--size", "32"], 2, "32 is not in the range 64<=x<=128"),
    (["-n", "0"], 2, "0 is not in the range x>=1"),
    (["-n", "5", "--anomaly-fraction", "1.5"], 2, "1.5 is not in the range"),
    (["-n", "5", "--shard", "3/3"], 2, "need 0 <= i < n"),
    (["-n", "5", "--seed", "-1"], 2, "--seed -1 is negative"),
    (["-n", "5", "-o", "/nonexistent-folder/x.fits"], 74, "does not exist"),
])
def test_bad_arguments_exit_with_one_line(args, code, words):
    result = run_tool("gal-sim", *args)
    stderr = result.stderr.decode()
    assert result.returncode == code, stderr
    assert words in stderr
    assert stderr.startswith("gal-sim: error:") and stderr.count("\n") == 1
    assert "Traceback" not in stderr


def test_refuses_to_overwrite_without_overwrite(tmp_path):
    out = tmp_path / "a.parquet"
    out.write_bytes(b"keep me")
    result = run_tool("gal-sim", "-n", 3, "-j", 1, "-o", out)
    assert result.returncode == 1 and "already exists" in result.stderr.decode()
    assert out.read_bytes() == b"keep me"
    run_tool("gal-sim", "-n", 3, "-j", 1, "-o", out, "--overwrite", check=True)
    assert _read(out).num_rows == 3


def test_help_has_an_example_and_does_not_import_galsim():
    code = ("import sys; from galtools.cli.sim import main; sys.argv=['gal-sim','--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'galsim' not in sys.modules and 'torch' not in sys.modules, 'heavy import at --help'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    assert b"Example:" in result.stdout and b"gal-sim -n" in result.stdout
