"""galtools.io: formats, round trips, second-library readers, parts, shards, atomic writes, streaming memory."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest

from conftest import make_cutouts, run_tool, shell, write_table
from galtools.errors import BadData, InputMissing
from galtools.io import Shard, images_of, open_output, open_table, vector_column, vectors_of
from galtools.io.sources import sniff


@pytest.mark.parametrize("suffix", [".fits", ".parquet", ".arrow", ".arrows", ".fits.gz"])
def test_each_format_round_trips_images_columns_and_metadata(tmp_path, suffix):
    table = make_cutouts(n=13)
    path = write_table(table, str(tmp_path / f"t{suffix}"), bands="u,g,r", **{"galtools.flux_unit": "nanomaggy"})
    with open_table(path) as back:
        read = back.read_all()
        assert back.num_rows == 13 and back.bands == ["u", "g", "r"] and back.image_shape == (3, 16, 16)
        assert back.metadata["galtools.flux_unit"] == "nanomaggy"
        assert [h["tool"] for h in back.history] == ["test"]
    assert read.column_names == table.column_names
    assert np.array_equal(images_of(read), images_of(table))   # bit-identical float32
    for name in ("object_id", "ra", "label", "flag"):
        assert read.column(name).to_pylist() == table.column(name).to_pylist()


def test_round_trip_fits_parquet_pipe_fits_keeps_everything(tmp_path):
    table = make_cutouts(n=40, bands=5, size=12)
    first = write_table(table, str(tmp_path / "a.fits"), bands="u,g,r,i,z")
    result = shell(f"gal-pack {first} -o b.parquet && gal-pack b.parquet -o - | gal-pack - -o c.fits", cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    with open_table(str(tmp_path / "c.fits")) as back:
        read = back.read_all()
        assert back.bands == ["u", "g", "r", "i", "z"]
        assert [h["tool"] for h in back.history] == ["test", "gal-pack", "gal-pack", "gal-pack"]
        assert back.history[-1]["argv"] == ["-", "-o", "c.fits"]
    assert np.array_equal(images_of(read), images_of(table))
    assert read.column_names == table.column_names
    assert read.column("label").to_pylist() == table.column("label").to_pylist()


def test_astropy_reads_our_fits_cube_catalogue_and_history(tmp_path):
    from astropy.io import fits

    table = make_cutouts(n=7)
    path = write_table(table, str(tmp_path / "a.fits"))
    with fits.open(path) as hdul:
        cube = hdul["CUTOUTS"].data
        assert cube.shape == (7, 3, 16, 16)
        assert np.array_equal(cube.astype(np.float32), images_of(table))
        catalog = hdul["CATALOG"].data
        assert list(catalog["object_id"]) == table.column("object_id").to_pylist()
        assert [s.strip() for s in catalog["label"]] == table.column("label").to_pylist()
        assert hdul[0].header["BANDS"] == "g,r,i"
        history = [str(h) for h in hdul[0].header["HISTORY"]]
        assert history and history[0].startswith("test ") and "{" not in " ".join(history)   # a command line


def test_duckdb_reads_our_parquet(tmp_path):
    import duckdb

    table = make_cutouts(n=9)
    path = write_table(table, str(tmp_path / "a.parquet"))
    rows = duckdb.sql(f"SELECT object_id, label, ra FROM '{path}' ORDER BY object_id").fetchall()
    assert [r[0] for r in rows] == table.column("object_id").to_pylist()
    assert [r[1] for r in rows] == table.column("label").to_pylist()
    assert np.allclose([r[2] for r in rows], table.column("ra").to_numpy())


def test_astropy_written_bintable_with_tdim_image_column_is_read(tmp_path):
    from astropy.io import fits
    from astropy.table import Table as AstropyTable

    images = np.random.default_rng(3).normal(size=(6, 2, 5, 4)).astype(np.float32)
    table = AstropyTable({"objid": np.arange(6), "IMAGE": images})
    path = str(tmp_path / "tdim.fits")
    table.write(path)
    assert "TDIM" in "".join(fits.getheader(path, 1).tostring().split())
    with open_table(path) as back:
        assert back.image_shape == (2, 5, 4)
        assert np.array_equal(images_of(back.read_all()), images)


def test_embedding_vectors_round_trip_in_fits_and_parquet(tmp_path):
    vectors = np.random.default_rng(1).normal(size=(11, 8)).astype(np.float32)
    table = pa.table({"object_id": pa.array(np.arange(11)), "embedding": vector_column(vectors)})
    for name in ("e.fits", "e.parquet"):
        path = str(tmp_path / name)
        with open_output(path, tool="test") as out:
            out.write(table)
        with open_table(path) as back:
            assert np.array_equal(vectors_of(back.read_all()), vectors)


def test_shards_concatenate_to_the_whole_and_folders_read_as_one_table(tmp_path):
    table = make_cutouts(n=23)
    path = write_table(table, str(tmp_path / "all.parquet"))
    parts = tmp_path / "parts"
    parts.mkdir()
    for i in range(4):
        result = run_tool("gal-pack", path, "--shard", f"{i}/4", "-o", str(parts / "part-{shard}.parquet"))
        assert result.returncode == 0, result.stderr.decode()
    assert sorted(os.listdir(parts)) == [f"part-{i}-of-4.parquet" for i in range(4)]
    with open_table(str(parts)) as whole, open_table(str(parts / "part-*.parquet")) as globbed:
        assert whole.num_rows == globbed.num_rows == 23
        assert whole.read_all().column("object_id").to_pylist() == table.column("object_id").to_pylist()
        assert np.array_equal(images_of(globbed.read_all()), images_of(table))


def test_shard_bounds_cover_every_row_once_and_slurm_default():
    for rows in (0, 1, 7, 100):
        covered = []
        for i in range(6):
            lo, hi = Shard(i, 6).bounds(rows)
            covered.extend(range(lo, hi))
        assert covered == list(range(rows))
    slurm = Shard.from_slurm({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"})
    assert slurm == Shard(2, 4)
    assert Shard.from_slurm({}) is None


def test_sniff_recognises_each_format_by_its_first_bytes():
    assert sniff(b"SIMPLE  =                    T", "x") == "fits"
    assert sniff(b"PAR1\x15\x04", "x") == "parquet"
    assert sniff(b"ARROW1\x00\x00", "x") == "arrow-file"
    assert sniff(b"\xff\xff\xff\xff\x10\x00", "x") == "arrow-stream"
    with pytest.raises(BadData):
        sniff(b"objid,file\n", "x")
    with pytest.raises(BadData):
        sniff(b"", "x")


def test_missing_input_and_empty_glob_are_input_missing(tmp_path):
    with pytest.raises(InputMissing):
        open_table(str(tmp_path / "nope.fits"))
    with pytest.raises(InputMissing):
        open_table(str(tmp_path / "*.parquet"))


def test_failed_write_leaves_no_file(tmp_path):
    table = make_cutouts(n=5)
    target = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError):
        with open_output(str(target), tool="test") as out:
            out.write(table)
            raise RuntimeError("killed halfway")
    assert os.listdir(tmp_path) == []


def _peak_rss_mb(command: list[str]) -> float:
    """Peak resident memory of a child process, in MB (ru_maxrss of the waited-for child)."""
    import subprocess

    script = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
    out = subprocess.run([__import__("sys").executable, "-c", script, *command], capture_output=True, check=True)
    return float(out.stdout.decode())


def _big_fits(path: str, rows: int) -> None:
    import fitsio

    with fitsio.FITS(path, "rw", clobber=True) as fits:
        fits.write(None, header=[{"name": "BANDS", "value": "u,g,r,i,z"}])
        fits.create_image_hdu(dims=[rows, 5, 32, 32], dtype="f4", extname="CUTOUTS")
        block = np.random.default_rng(0).normal(size=(1000, 5, 32, 32)).astype(np.float32)
        for lo in range(0, rows, 1000):
            fits[-1].write(block[: min(1000, rows - lo)], start=[lo, 0, 0, 0])
        fits.write({"object_id": np.arange(rows, dtype=np.int64)}, extname="CATALOG")


@pytest.mark.slow
def test_memory_is_bounded_by_the_batch_not_the_file(tmp_path):
    """gal-info --pixels and a gal-pack conversion stream: 4x more data costs (almost) no more memory."""
    import sys

    small, large = str(tmp_path / "small.fits"), str(tmp_path / "large.fits")
    _big_fits(small, 4000)      # 82 MB
    _big_fits(large, 16000)     # 328 MB
    info = [sys.executable, "-m", "galtools.cli.info", "--pixels"]
    pack = [sys.executable, "-m", "galtools.cli.pack", "-q"]
    peak_small = _peak_rss_mb(info + [small])
    peak_large = _peak_rss_mb(info + [large])
    assert peak_large < 500 and peak_large - peak_small < 100, (peak_small, peak_large)
    peak_small = _peak_rss_mb(pack + [small, "-o", str(tmp_path / "s.arrow")])
    peak_large = _peak_rss_mb(pack + [large, "-o", str(tmp_path / "l.arrow")])
    assert peak_large < 500 and peak_large - peak_small < 100, (peak_small, peak_large)


def test_history_is_json_in_metadata(tmp_path):
    path = write_table(make_cutouts(n=2), str(tmp_path / "h.parquet"))
    with open_table(path) as table:
        entries = json.loads(table.metadata["galtools.history"])
    assert entries[0]["tool"] == "test" and "time" in entries[0] and "version" in entries[0]


@pytest.mark.parametrize("suffix", [".parquet", ".arrow", ".fits"])
def test_an_empty_table_is_written_with_its_columns(tmp_path, suffix):
    from galtools.io import tensor_column

    empty = pa.table({"object_id": pa.array([], pa.int64()), "image": tensor_column(np.zeros((0, 2, 4, 4), np.float32))})
    path = str(tmp_path / f"empty{suffix}")
    with open_output(path, tool="test") as out:
        out.write(empty)
    with open_table(path) as back:
        assert back.num_rows == 0 and back.image_shape == (2, 4, 4)


def test_an_empty_table_of_cutouts_writes_to_fits_and_keeps_its_columns(tmp_path):
    """No rows, but an image column of numpy's tensor type (which carries a permutation pyarrow cannot make an
    empty column of): the FITS file is written, and gal-info reads its columns and image shape back."""
    empty = make_cutouts(4).slice(0, 0)
    path = write_table(empty, str(tmp_path / "empty.fits"))
    result = run_tool("gal-info", path, "--json")
    assert result.returncode == 0, result.stderr.decode()
    info = json.loads(result.stdout)
    assert info["rows"] == 0, info
    with open_table(path) as table:
        assert table.num_rows == 0 and table.image_shape == (3, 16, 16)
        assert table.schema.names == empty.schema.names
