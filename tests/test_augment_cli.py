"""gal-augment as a user runs it: real processes, files, pipes into gal-info, a montage PNG."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from conftest import run_tool
from galtools.io import images_of, open_output, open_table, tensor_column

torch = pytest.importorskip("torch")

BANDS = ["u", "g", "r", "i", "z"]
PIXSCALE = 0.396
AUGMENT = f"{shlex.quote(sys.executable)} -m galtools.cli.augment"
INFO = f"{shlex.quote(sys.executable)} -m galtools.cli.info"
SPEC = "rotate,jitter:max_shift=5,psf,redden:ebv_max=0.3,noise"


def galaxy_cutouts(n=12, size=72, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    images = []
    for angle in rng.uniform(0, np.pi, n):
        along, across = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
        blob = np.exp(-0.5 * ((along / 6) ** 2 + (across / 2.5) ** 2))
        images.append(np.stack([blob * f for f in (0.3, 1.0, 1.6, 2.0, 2.3)]))
    images = np.stack(images) + rng.normal(0, 0.02, size=(n, 5, size, size))
    return pa.table({
        "object_id": pa.array(np.arange(500, 500 + n, dtype=np.int64)),
        "ra": pa.array(rng.uniform(0, 360, n)),
        "morph_class": pa.array([["elliptical", "disk", "edge-on"][i % 3] for i in range(n)]),
        "ebv": pa.array(rng.uniform(0, 0.1, n)),
        **{f"psf_fwhm_{b}": pa.array(rng.uniform(1.0, 1.4, n)) for b in BANDS},
        "image": tensor_column(images.astype(np.float32)),
    })


def write_cutouts(path, table, **meta):
    metadata = {"galtools.bands": ",".join(BANDS), "galtools.pixscale_arcsec": str(PIXSCALE), **meta}
    with open_output(str(path), metadata=metadata, tool="test") as out:
        out.write(table)
    return str(path)


@pytest.fixture(scope="module")
def cutouts(tmp_path_factory):
    table = galaxy_cutouts()
    return write_cutouts(tmp_path_factory.mktemp("aug") / "cutouts.parquet", table), table


def read(path):
    with open_table(str(path)) as table:
        return table.read_all(), table.metadata


@pytest.mark.slow
def test_views_table_holds_every_object_view_and_carried_column(cutouts, tmp_path):
    path, source = cutouts
    out = tmp_path / "views.parquet"
    result = run_tool("gal-augment", path, "--views", 3, "--ops", SPEC, "--seed", 7, "-o", out)
    assert result.returncode == 0, result.stderr.decode()
    views, metadata = read(out)
    n = source.num_rows
    assert views.num_rows == 3 * n
    assert views.column_names[:3] == ["object_id", "view", "image"]
    assert views.column("object_id").to_pylist() == [i for i in source.column("object_id").to_pylist() for _ in range(3)]
    assert views.column("view").to_pylist() == [0, 1, 2] * n
    assert views.column("morph_class").to_pylist() == [c for c in source.column("morph_class").to_pylist() for _ in range(3)]
    images = images_of(views)
    assert images.shape == (3 * n, 5, 64, 64) and np.isfinite(images).all()

    from galtools.augment import AugmentPipeline

    pipe = AugmentPipeline.from_spec(SPEC, out_size=64, bands=BANDS, pixscale=PIXSCALE)
    assert metadata["galtools.augment"] == pipe.spec
    assert metadata["galtools.bands"] == "u,g,r,i,z"
    assert '"gal-augment"' in metadata["galtools.history"]
    # the tool's views are the library's views for (seed, object_id, view)
    psf = np.stack([source.column(f"psf_fwhm_{b}").to_numpy() for b in BANDS], axis=1)
    expected = pipe(torch.from_numpy(images_of(source).copy()), source.column("object_id").to_numpy(), view=2,
                    seed=7, psf_fwhm=psf).numpy()
    # equal to float32 rounding: the tool runs other batch shapes through the PSF convolution than this call
    np.testing.assert_allclose(images[2::3], expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    # views differ from each other
    assert not np.allclose(images[0::3], images[1::3])


def invoke(*args):
    """In-process run (click's CliRunner) for the many cases that need no separate process."""
    from conftest import cli_runner

    from galtools.cli.augment import cli

    return cli_runner().invoke(cli, [str(a) for a in args])


@pytest.mark.slow
def test_batch_size_and_shards_do_not_change_the_views(cutouts, tmp_path):
    path, _ = cutouts
    whole = tmp_path / "whole.arrow"
    assert run_tool("gal-augment", path, "--views", 2, "--ops", SPEC, "-o", whole).returncode == 0
    small = tmp_path / "small.arrow"
    assert invoke(path, "--views", 2, "--ops", SPEC, "--batch-size", 5, "-o", small).exit_code == 0
    parts = []
    for i in range(2):
        part = tmp_path / f"part{i}.arrow"
        result = invoke(path, "--views", 2, "--ops", SPEC, "--shard", f"{i}/2", "-o", part)
        assert result.exit_code == 0, result.stderr
        parts.append(read(part)[0])
    reference = read(whole)[0]
    # ids exactly; pixels to float32 rounding (the PSF convolution's kernel depends on the batch shape)
    tolerance = 1e-5 * np.abs(images_of(reference)).max()
    np.testing.assert_allclose(images_of(read(small)[0]), images_of(reference), rtol=0, atol=tolerance)
    joined = pa.concat_tables(parts)
    assert joined.column("object_id").to_pylist() == reference.column("object_id").to_pylist()
    assert joined.column("view").to_pylist() == reference.column("view").to_pylist()
    np.testing.assert_allclose(images_of(joined), images_of(reference), rtol=0, atol=tolerance)


@pytest.mark.slow
def test_a_real_pipe_into_gal_info(cutouts):
    path, source = cutouts
    command = f"cat {shlex.quote(path)} | {AUGMENT} - --views 2 --ops {shlex.quote(SPEC)} --seed 3 | {INFO} -"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    assert f"{2 * source.num_rows} rows" in text
    assert "5 x 64 x 64" in text and "galtools.augment" in text and "gal-augment" in text


@pytest.mark.slow
def test_stdout_stream_reads_back(cutouts):
    path, source = cutouts
    result = run_tool("gal-augment", path, "--views", 1, "--ops", "rotate:step=90", "--size", 72)
    assert result.returncode == 0, result.stderr.decode()
    views = pa.ipc.open_stream(pa.py_buffer(result.stdout)).read_all()
    originals = images_of(source)
    for row, image in enumerate(images_of(views)):   # quarter turns of the full cutout: exact copies
        assert any(np.array_equal(image, np.rot90(originals[row], k, axes=(-2, -1))) for k in range(4))


@pytest.mark.slow
def test_montage_shows_objects_by_row_and_views_by_column(cutouts, tmp_path):
    from PIL import Image

    from galtools.viz import save_montage

    path, _ = cutouts
    png = tmp_path / "aug.png"
    result = run_tool("gal-augment", path, "--views", 3, "--ops", SPEC, "--montage", png, "--montage-rows", 4,
                      "-o", tmp_path / "v.parquet")
    assert result.returncode == 0, result.stderr.decode()
    picture = Image.open(png)
    picture.load()
    assert picture.format == "PNG"
    # the same grid drawn directly: 4 objects x (input + 3 views), same captions and row titles
    reference = tmp_path / "reference.png"
    blank = np.zeros((64, 64, 3), np.uint8)
    save_montage([[blank] * 4] * 4, str(reference), captions=[["input", "view 0", "view 1", "view 2"]] * 4,
                 row_titles=[str(i) for i in range(500, 504)], title="t")
    assert picture.size == Image.open(reference).size
    assert np.asarray(picture.convert("L")).std() > 10   # galaxies were drawn, not an empty canvas


def test_list_ops_and_help_are_fast_and_torch_free():
    result = run_tool("gal-augment", "--list-ops")
    assert result.returncode == 0
    text = result.stdout.decode()
    for name in ("rotate:", "flip:", "scale:", "jitter:", "noise:", "redden:", "deredden:", "psf:"):
        assert name in text
    code = "import sys, galtools.cli.augment; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    from galtools.augment.spec import DEFAULT_SPEC

    helped = " ".join(run_tool("gal-augment", "--help", check=True).stdout.decode().split())
    assert f"[default: {DEFAULT_SPEC}]" in helped     # the help shows the augmentations' one default


def test_montage_only_from_a_terminal(cutouts, tmp_path):
    """From a terminal without -o, only the montage is made (no binary to the terminal)."""
    path, _ = cutouts
    png = tmp_path / "only.png"
    command = f"{AUGMENT} {shlex.quote(path)} --views 2 --montage {shlex.quote(str(png))} --montage-rows 2"
    result = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True, timeout=300,
                            cwd=tmp_path)
    if result.returncode == 127 or b"not found" in result.stderr:
        pytest.skip("script(1) is not available to fake a terminal")
    assert result.returncode == 0, result.stdout.decode(errors="replace")
    assert png.exists() and sorted(os.listdir(tmp_path)) == ["only.png"]


@pytest.mark.slow
def test_deredden_reads_the_ebv_column(cutouts, tmp_path):
    path, source = cutouts
    out = tmp_path / "dered.parquet"
    assert run_tool("gal-augment", path, "--views", 1, "--ops", "deredden", "--size", 72, "-o", out).returncode == 0
    ratio = images_of(read(out)[0]).astype(np.float64) / images_of(source)
    expected = 10 ** (0.4 * np.array([4.239, 3.303, 2.285, 1.698, 1.263])[None, :] * source.column("ebv").to_numpy()[:, None])
    np.testing.assert_allclose(np.median(ratio, axis=(2, 3)), expected, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.slow
def test_bad_data_as_a_real_process_leaves_no_output(cutouts, tmp_path):
    path, source = cutouts
    nan_images = images_of(source).copy()
    nan_images[3, 1, 10, 10] = np.nan
    bad = source.set_column(source.schema.get_field_index("image"), "image", tensor_column(nan_images))
    bad_path = write_cutouts(tmp_path / "nan.parquet", bad)
    result = run_tool("gal-augment", bad_path, "--batch-size", 2, "-o", tmp_path / "nan-out.parquet")
    text = result.stderr.decode().strip()
    assert result.returncode == 65 and text.startswith("gal-augment: error:") and "object_id 503" in text
    assert "Traceback" not in text and "\n" not in text
    assert sorted(os.listdir(tmp_path)) == ["nan.parquet"]   # no half-written output, no temporary left
    missing = run_tool("gal-augment", tmp_path / "missing.fits", "-o", tmp_path / "x.parquet")
    assert missing.returncode == 66


@pytest.mark.parametrize("case, code, fragment", [
    ("unknown-op", 2, "unknown augmentation 'blur'"),
    ("no-psf-columns", 2, "psf_fwhm_u"),
    ("no-ebv-column", 2, "'EBV'"),
    ("no-object-id", 65, "no object_id column"),
    ("too-small", 65, "smaller than the output size 128"),
    ("missing-folder", 74, "does not exist"),
    ("exists", 1, "--overwrite"),
    ("png-exists", 1, "--overwrite"),
    ("bad-device", 69, "--device cpu"),
])
def test_bad_input_is_one_line_and_a_documented_code(cutouts, tmp_path, case, code, fragment):
    path, source = cutouts
    out = tmp_path / "x.parquet"
    no_psf = lambda: write_cutouts(tmp_path / "nopsf.parquet",  # noqa: E731
                                   source.drop_columns([f"psf_fwhm_{b}" for b in BANDS]))
    if case == "bad-device" and torch.cuda.is_available():
        pytest.skip("a GPU is available here")
    args = {
        "unknown-op": [path, "--ops", "rotate,blur", "-o", out],
        "no-psf-columns": lambda: [no_psf(), "--ops", "psf", "-o", out],
        "no-ebv-column": [path, "--ops", "deredden", "--ebv-column", "EBV", "-o", out],
        "no-object-id": lambda: [write_cutouts(tmp_path / "noid.parquet", source.drop_columns(["object_id"])),
                                 "-o", out],
        "too-small": [path, "--size", 128, "-o", out],
        "missing-folder": [path, "-o", tmp_path / "nowhere" / "x.parquet"],
        "exists": lambda: [path, "-o", _existing(tmp_path / "exists.parquet")],
        "png-exists": lambda: [path, "-o", out, "--montage", _existing(tmp_path / "m.png")],
        "bad-device": [path, "--device", "cuda", "-o", out],
    }[case]
    result = invoke(*(args() if callable(args) else args))
    assert result.exit_code == code, result.stderr
    line = result.stderr.strip()
    assert line.startswith("gal-augment: error:") and "\n" not in line and fragment in line
    assert not out.exists()
    for kept in ("exists.parquet", "m.png"):
        if (tmp_path / kept).exists():
            assert (tmp_path / kept).read_bytes() == b"keep me"


def _existing(path):
    path.write_bytes(b"keep me")
    return path


def test_psf_without_columns_works_with_fwhm_in_and_overwrite_replaces(cutouts, tmp_path):
    path, source = cutouts
    no_psf = write_cutouts(tmp_path / "nopsf.parquet", source.drop_columns([f"psf_fwhm_{b}" for b in BANDS]))
    out = _existing(tmp_path / "out.parquet")
    result = invoke(no_psf, "--ops", "psf:fwhm_in=1.2", "-o", out, "--overwrite")
    assert result.exit_code == 0, result.stderr
    views, metadata = read(out)
    assert views.num_rows == 2 * source.num_rows and "fwhm_in=1.2" in metadata["galtools.augment"]
