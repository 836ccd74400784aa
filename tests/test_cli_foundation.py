"""Shared CLI behaviour, gal-info and gal-pack, run as a user would: real processes, pipes and files."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from conftest import SHARED_GZ1, assert_clean_error, make_cutouts, run_tool, shell, write_table
from galtools.io import images_of, open_table, tensor_column


def test_pack_then_info_through_a_real_pipe(tmp_path, cutouts):
    path, table = cutouts
    result = shell(f"gal-pack {path} --crop 8 -o - | gal-info --json -")
    assert result.returncode == 0, result.stderr.decode()
    info = json.loads(result.stdout)
    assert info["rows"] == table.num_rows and info["image"]["shape"] == [3, 8, 8]
    assert info["image"]["bands"] == ["g", "r", "i"]
    assert [h["tool"] for h in info["history"]] == ["test", "gal-pack"]


def test_info_text_names_rows_columns_bands(cutouts):
    path, table = cutouts
    out = run_tool("gal-info", path, check=True).stdout.decode()
    assert out.splitlines()[0] == f"{path}: 20 rows, 5 columns (fits)"
    assert "images: 3 x 16 x 16 (bands g,r,i" in out
    assert "  label      string" in out


def test_info_into_head_exits_quietly(tmp_path):
    wide = pa.table({f"column_{i:05d}": pa.array([1.0]) for i in range(6000)})   # summary larger than a pipe buffer
    path = str(tmp_path / "wide.parquet")
    write_table(wide, path)
    result = shell(f"gal-info {path} | head -1")
    assert result.returncode == 0 and result.stderr == b"", result.stderr.decode()
    assert result.stdout.decode().startswith(f"{path}: 1 rows, 6000 columns")


def test_binary_stream_into_head_exits_quietly(tmp_path):
    path = write_table(make_cutouts(n=400, size=32), str(tmp_path / "big.fits"))
    result = shell(f"gal-pack {path} -o - | head -c 100 > /dev/null")
    assert result.returncode == 0 and result.stderr == b"", (result.returncode, result.stderr.decode())


def test_help_has_an_example_and_imports_neither_torch_nor_data_libraries():
    for tool in ("info", "pack"):
        code = (f"import sys; from galtools.cli.{tool} import main\n"
                "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
                "print(sorted(m for m in ('torch', 'pyarrow', 'numpy', 'onnxruntime', 'rich') if m in sys.modules))")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
        out = result.stdout.decode()
        assert "Example:" in out and f"gal-{tool} " in out.split("Example:")[1]
        assert out.strip().splitlines()[-1] == "[]", out


def test_version_flag():
    assert run_tool("gal-info", "--version", check=True).stdout.decode().strip().startswith("gal-info 0.")


@pytest.mark.parametrize("content,code,word", [
    (b"", 65, "empty"),
    (b"objid,file\n1,a.png\n", 65, "not a FITS file"),
])
def test_info_rejects_empty_and_text_files(tmp_path, content, code, word):
    path = tmp_path / "bad.fits"
    path.write_bytes(content)
    assert_clean_error(run_tool("gal-info", path), code, word)


def test_truncated_fits_is_bad_data_and_nothing_is_written(tmp_path, cutouts):
    path, _ = cutouts
    data = open(path, "rb").read()
    truncated = tmp_path / "cut.fits"
    truncated.write_bytes(data[: len(data) // 2])
    assert_clean_error(run_tool("gal-info", truncated), 65, "truncated")
    assert_clean_error(run_tool("gal-pack", truncated, "-o", tmp_path / "out.parquet"), 65, "truncated")
    assert not (tmp_path / "out.parquet").exists()


def test_parquet_without_image_is_refused_where_images_are_needed(tmp_path):
    path = write_table(pa.table({"object_id": [1, 2], "z": [0.1, 0.2]}), str(tmp_path / "plain.parquet"))
    assert_clean_error(run_tool("gal-info", "--pixels", path), 65, "no 'image' column")
    assert_clean_error(run_tool("gal-pack", path, "-o", tmp_path / "o.fits"), 65, "no file column")
    assert not (tmp_path / "o.fits").exists()


def test_cube_with_nans_is_refused_filled_or_skipped(tmp_path):
    table = make_cutouts(n=6)
    images = images_of(table).copy()
    images[2, 1, 3, 3] = np.nan
    table = table.set_column(table.schema.get_field_index("image"), "image", tensor_column(images))
    path = write_table(table, str(tmp_path / "nan.fits"))
    assert_clean_error(run_tool("gal-info", "--pixels", path), 65, "NaN", "1002")
    assert_clean_error(run_tool("gal-pack", path, "-o", tmp_path / "o.fits"), 65, "NaN", "--fill-nan")
    assert not (tmp_path / "o.fits").exists()
    run_tool("gal-pack", path, "--fill-nan", "0", "-o", tmp_path / "filled.fits", check=True)
    with open_table(str(tmp_path / "filled.fits")) as filled:
        assert images_of(filled.read_all())[2, 1, 3, 3] == 0
    run_tool("gal-pack", path, "--skip-bad", "-o", tmp_path / "skipped.fits", check=True)
    with open_table(str(tmp_path / "skipped.fits")) as skipped:
        assert skipped.read_all().column("object_id").to_pylist() == [1000, 1001, 1003, 1004, 1005]


def _png(path, array):
    from PIL import Image

    Image.fromarray(array).save(path)


def test_mismatched_band_counts_across_stamps(tmp_path):
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    rng = np.random.default_rng(0)
    _png(stamps / "1.png", rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    _png(stamps / "2.png", rng.integers(0, 255, (20, 20), dtype=np.uint8))
    assert_clean_error(run_tool("gal-pack", stamps, "-o", tmp_path / "o.fits"), 65, "2.png has 1 bands", "--skip-bad")
    assert not (tmp_path / "o.fits").exists()
    run_tool("gal-pack", stamps, "--skip-bad", "-o", tmp_path / "o.fits", check=True)
    with open_table(str(tmp_path / "o.fits")) as table:
        assert table.read_all().column("object_id").to_pylist() == [1]


def test_output_in_missing_folder_and_existing_output(tmp_path, cutouts):
    path, _ = cutouts
    assert_clean_error(run_tool("gal-pack", path, "-o", tmp_path / "nope" / "o.fits"), 74, "does not exist", "mkdir")
    existing = tmp_path / "exists.parquet"
    existing.write_bytes(b"precious")
    assert_clean_error(run_tool("gal-pack", path, "-o", existing), 1, "already exists", "--overwrite")
    assert existing.read_bytes() == b"precious"
    run_tool("gal-pack", path, "-o", existing, "--overwrite", check=True)
    assert existing.read_bytes()[:4] == b"PAR1"
    assert sorted(os.listdir(tmp_path)) == ["cutouts.fits", "exists.parquet"]


def test_usage_errors_are_one_line_exit_2(cutouts):
    path, _ = cutouts
    assert_clean_error(run_tool("gal-pack", path, "--crop", "zero"), 2, "--crop", "--help")
    assert_clean_error(run_tool("gal-pack", path, "--shard", "5/2", "-o", "x.fits"), 2, "--shard")


def test_binary_output_to_a_terminal_is_refused(cutouts):
    import pty

    path, _ = cutouts
    leader, follower = pty.openpty()
    result = subprocess.run([sys.executable, "-m", "galtools.cli.pack", path], stdout=follower,
                            stderr=subprocess.PIPE, timeout=60)
    os.close(follower)
    os.close(leader)
    assert result.returncode == 2 and b"refusing to write a binary table to the terminal" in result.stderr


def test_pack_catalogue_with_fits_stamps_per_band_and_area_resize(tmp_path):
    import fitsio

    rng = np.random.default_rng(5)
    planes = {band: rng.uniform(0, 10, (3, 30, 30)).astype(np.float32) for band in "gri"}
    for obj in range(3):
        for band in "gri":
            fitsio.write(str(tmp_path / f"o{obj}_{band}.fits"), planes[band][obj], clobber=True)
    (tmp_path / "cat.csv").write_text("objid,file,z\n" + "".join(f"{10 + i},o{i}_{{band}}.fits,0.{i}\n" for i in range(3)))
    run_tool("gal-pack", tmp_path / "cat.csv", "--bands", "g,r,i", "--crop", "27", "--resize", "10",
             "-o", tmp_path / "out.parquet", check=True)
    with open_table(str(tmp_path / "out.parquet")) as table:
        got = table.read_all()
        assert table.bands == ["g", "r", "i"]
    assert got.column("object_id").to_pylist() == [10, 11, 12] and got.column("z").to_pylist() == [0.0, 0.1, 0.2]
    images = images_of(got)
    for obj in range(3):
        for b, band in enumerate("gri"):
            cropped = planes[band][obj][1:28, 1:28]
            # exact flux-conserving resample: split every pixel into 10x10 sub-pixels holding a hundredth of its
            # flux each, then add up blocks of 27x27 of them (FITS stamps hold flux: --resize sums)
            reference = np.repeat(np.repeat(cropped, 10, 0), 10, 1).reshape(10, 27, 10, 27).sum(axis=(1, 3)) / 100
            assert np.allclose(images[obj, b], reference, rtol=1e-5, atol=1e-5)


def test_missing_stamps_are_listed_and_can_be_skipped(tmp_path):
    _png(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "cat.csv").write_text("id,file\n1,a.png\n2,gone.png\n")
    assert_clean_error(run_tool("gal-pack", tmp_path / "cat.csv", "-o", tmp_path / "o.fits"), 66, "gone.png", "--skip-bad")
    result = run_tool("gal-pack", tmp_path / "cat.csv", "--skip-bad", "-o", tmp_path / "o.fits", check=True)
    assert "skipped object 2: missing file" in result.stderr.decode()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(SHARED_GZ1), reason="../shared/data/gz1-sdss is not here (a user's clone)")
def test_pack_gz1_sdss_makes_1500_rows_of_3x64x64_with_labels(tmp_path):
    out = tmp_path / "gz.fits"
    run_tool("gal-pack", os.path.join(SHARED_GZ1, "labels.csv"), "--crop", "212", "--resize", "64", "-o", out, check=True)
    with open_table(str(out)) as table:
        assert table.num_rows == 1500 and table.image_shape == (3, 64, 64)
        read = table.read_all(columns=["object_id", "gz1_label", "gz1_class"])
    assert read.column("object_id")[0].as_py() == 588017703489700179
    counts = dict(zip(*np.unique(read.column("gz1_label").to_pylist(), return_counts=True)))
    assert counts["elliptical"] == 615 and counts["edge_on"] == 400
    with open_table(str(out)) as table:
        first = images_of(next(table.iter_batches(batch_size=1)))[0]
    assert 0 <= first.min() and first.max() <= 1


def test_man_pages_are_current():
    import importlib.metadata
    import re

    from galtools.cli import manpage

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "constraints.txt")) as handle:
        pinned = re.search(r"^click==(\S+)$", handle.read(), re.MULTILINE).group(1)
    if importlib.metadata.version("click") != pinned:  # click's help layout (e.g. the short help) changes between
        pytest.skip(f"the man pages are made with click {pinned} (constraints.txt), this is click "
                    f"{importlib.metadata.version('click')}")
    assert manpage.main(["--check", os.path.join(root, "man")]) == 0, "man pages are stale: run 'make man'"


# ------------------------------------------------------------------------------------------------ gal-info --system

def _system_report(env_extra: dict | None = None, block_torch: bool = False) -> tuple[dict, str]:
    """gal-info --system --json as a real process: the report, and whether it imported torch."""
    code = ("import sys\n"
            + ("sys.modules['torch'] = None  # as if torch were not installed: importing it fails\n" if block_torch else "")
            + "from galtools.cli.info import main\n"
            "try:\n    main(['--system', '--json'])\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "sys.stderr.write('torch imported: %s' % (sys.modules.get('torch') is not None))\n")
    env = dict(os.environ, **(env_extra or {}))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout), result.stderr.decode()


def test_system_report_names_versions_providers_threads_and_imports_no_torch(tmp_path):
    import importlib.metadata

    import onnxruntime

    report, err = _system_report({"SLURM_CPUS_PER_TASK": "1", "GALTOOLS_CACHE_DIR": str(tmp_path / "cache")})
    assert err.endswith("torch imported: False")
    assert report["galtools"] == __import__("galtools").__version__
    assert report["python"].endswith(".".join(map(str, sys.version_info[:3])))
    for name in ("numpy", "pyarrow", "fitsio", "click"):
        assert report["packages"][name] == importlib.metadata.version(name), name
    assert onnxruntime.__version__ in report["packages"]["onnxruntime"]
    assert report["onnxruntime"]["version"] == onnxruntime.__version__
    assert report["onnxruntime"]["providers"] == onnxruntime.get_available_providers()
    for name, result in report["onnxruntime"]["gpu_sessions"].items():  # offered GPU providers were tried
        assert name in report["onnxruntime"]["providers"] and (result["starts"] or result["reason"])
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    assert report["packages"]["torch"] == report["torch"]["version"] == torch_version
    assert report["cpu"]["threads"] == 1 and report["cpu"]["slurm_cpus_per_task"] == "1"
    assert report["cpu"]["affinity"] == len(os.sched_getaffinity(0))
    assert report["cache_dir"] == str(tmp_path / "cache")
    assert report["warnings"] == []
    text = run_tool("gal-info", "--system", check=True).stdout.decode()
    assert text.startswith(f"galtools {report['galtools']}\n")
    assert f"ONNX Runtime providers: {', '.join(report['onnxruntime']['providers'])}" in text
    assert "CPU threads: " in text and "cache folder: " in text


def test_system_report_without_torch():
    report, err = _system_report(block_torch=True)
    assert err.endswith("torch imported: False")
    assert report["packages"]["torch"] is None and report["torch"] == {"version": None, "cuda": None}
    assert report["onnxruntime"]["providers"]
    text = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torch'] = None\n"
                           "from galtools.cli.info import main; main(['--system'])"], capture_output=True).stdout
    assert b"\ntorch not installed\n" in text


@pytest.mark.slow
def test_system_report_warns_about_two_onnxruntime_distributions(tmp_path):
    """onnxruntime and onnxruntime-gpu share the import name: a second distribution of it is named, with the fix."""
    import onnxruntime

    installed = [line for line in _system_report()[0]["packages"]["onnxruntime"].split(", ")]
    assert len(installed) == 1
    other = "onnxruntime" if installed[0].startswith("onnxruntime-gpu ") else "onnxruntime-gpu"
    dist_info = tmp_path / f"{other.replace('-', '_')}-1.99.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {other}\nVersion: 1.99.0\n")
    (dist_info / "RECORD").write_text("onnxruntime/__init__.py,,\n")
    report, _ = _system_report({"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])})
    assert f"{other} 1.99.0" in report["packages"]["onnxruntime"] and installed[0] in report["packages"]["onnxruntime"]
    assert report["onnxruntime"]["version"] == onnxruntime.__version__   # the one that really imports
    (warning,) = report["warnings"]
    assert "side by side" in warning and "pip uninstall -y" in warning and other in warning


def test_system_takes_no_input():
    assert_clean_error(run_tool("gal-info", "--system", "x.fits"), 2, "--system")
    assert_clean_error(run_tool("gal-info"), 2, "INPUT")
