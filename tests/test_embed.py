"""gal-embed as users run it: real processes, real files and pipes, checked against the torch encoder.

The encoder is a small ResNet (galtools.models 'tiny') with random weights and non-trivial batch-norm statistics,
exported to the encoder.onnx contract (input 'image', output 'embedding', dynamic batch, galtools.* metadata with a
fitted Preprocess).  The reference embeds the same cutouts the way training sees them: bands picked by name, the
centre crop of galtools.augment (an empty augmentation spec), Preprocess.apply_torch, the torch module in eval mode.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from conftest import assert_clean_error as assert_error
from conftest import ROOT, galaxy_cutouts, run_tool, table_of_cutouts, write_table

TABLE_BANDS = ["y", "z", "i", "r", "g", "u"]    # more bands than the model, in another order
MODEL_BANDS = ["u", "g", "r", "i", "z"]
MODEL_SIZE = 32
HEIGHT, WIDTH = 41, 38                           # odd and even margins: the crop's rounding matters
N_ROWS = 150


# ------------------------------------------------------------------------------------------------ fixtures

def cutout_table(n: int = N_ROWS, seed: int = 0, images=None) -> pa.Table:
    images = galaxy_cutouts(n, len(TABLE_BANDS), HEIGHT, WIDTH, seed) if images is None else images
    return table_of_cutouts(images, seed)

def _randomise_batchnorm(module, seed: int) -> None:
    import torch

    generator = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            c = layer.num_features
            layer.running_mean.copy_(0.2 * torch.randn(c, generator=generator))
            layer.running_var.copy_(0.5 + torch.rand(c, generator=generator))
            layer.weight.data.copy_(0.5 + torch.rand(c, generator=generator))
            layer.bias.data.copy_(0.1 * torch.randn(c, generator=generator))


def export_contract_model(path: str, backbone, preprocess, input_size: int, metadata_extra=None,
                          input_name="image", output_name="embedding") -> None:
    """Export ``backbone.forward_features`` to the encoder.onnx contract (ONNX Runtime parity is checked in tests)."""
    import warnings

    import onnx
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, image):
            return self.inner.forward_features(image)

    module = Wrapped(backbone).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(2, backbone.in_chans, input_size, input_size),), path,
                          input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}}, dynamo=False)
    model = onnx.load(path)
    props = {"galtools.bands": ",".join(preprocess.bands), "galtools.input_size": str(input_size),
             "galtools.preprocess": preprocess.to_json(), "galtools.embedding_dim": str(backbone.num_features),
             "galtools.arch": "tiny", "galtools.version": "test", "galtools.train_config": "{}",
             "galtools.augment": ""}
    props.update(metadata_extra or {})
    onnx.helper.set_model_props(model, {k: v for k, v in props.items() if v is not None})
    onnx.save(model, path)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(path, torch backbone in eval mode, Preprocess) of a tiny exported encoder."""
    import torch

    from galtools.models import build_encoder
    from galtools.preprocess import Preprocess

    torch.manual_seed(0)
    backbone = build_encoder("tiny", len(MODEL_BANDS))
    with torch.no_grad():
        _randomise_batchnorm(backbone, 1)
    backbone.eval()
    sample = galaxy_cutouts(64, len(MODEL_BANDS), MODEL_SIZE, MODEL_SIZE, seed=99)
    preprocess = Preprocess.fit(sample, MODEL_BANDS)
    path = str(tmp_path_factory.mktemp("model") / "encoder.onnx")
    export_contract_model(path, backbone, preprocess, MODEL_SIZE)
    return path, backbone, preprocess


@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    table = cutout_table()
    path = str(tmp_path_factory.mktemp("data") / "cutouts.fits")
    write_table(table, path, bands=",".join(TABLE_BANDS))
    return path, table


def torch_reference(backbone, preprocess, table: pa.Table) -> np.ndarray:
    """The training-side path: bands by name, galtools.augment's centre crop, apply_torch, the torch encoder."""
    import torch

    from galtools.augment import AugmentPipeline
    from galtools.io import images_of

    raw = images_of(table)[:, [TABLE_BANDS.index(b) for b in MODEL_BANDS]]
    crop = AugmentPipeline.from_spec("", out_size=MODEL_SIZE, bands=MODEL_BANDS)
    views = crop(torch.from_numpy(np.ascontiguousarray(raw)), table.column("object_id").to_numpy(), view=0, seed=0)
    with torch.no_grad():
        return backbone.forward_features(preprocess.apply_torch(views)).numpy()


def read(path: str) -> pa.Table:
    from galtools.io import open_table

    with open_table(path) as t:   # with the galtools metadata, whatever the format
        return t.read_all().replace_schema_metadata(t.metadata)


def embeddings(table: pa.Table) -> np.ndarray:
    from galtools.io import vectors_of

    return vectors_of(table)


def embed(*args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.update(env_extra or {})
    return run_tool("gal-embed", *args, env=env)


# ------------------------------------------------------------------------------------------------ parity

@pytest.fixture(scope="module")
def fp32_run(model, table_file, tmp_path_factory):
    """gal-embed's default run on the test table (batches of 64: the last one ragged), read back."""
    model_path, _, _ = model
    path, _ = table_file
    out = tmp_path_factory.mktemp("fp32") / "emb.parquet"
    result = embed(path, "--model", model_path, "-o", out, "--batch-size", "64")
    assert result.returncode == 0, result.stderr.decode()
    return read(str(out))


def test_fp32_matches_the_torch_encoder_and_carries_columns(model, table_file, fp32_run):
    model_path, backbone, preprocess = model
    path, table = table_file
    got = fp32_run
    assert got.column_names == ["object_id", "ra", "label", "embedding"]
    assert got.schema.field("embedding").type == pa.list_(pa.float32(), backbone.num_features)
    for name in ("object_id", "ra", "label"):
        assert got.column(name).to_pylist() == table.column(name).to_pylist()
    expected = torch_reference(backbone, preprocess, table)
    assert np.abs(embeddings(got) - expected).max() <= 1e-4
    assert np.abs(expected).max() > 0.1          # the comparison is not between near-zero vectors

    metadata = got.schema.metadata
    with open(model_path, "rb") as handle:
        assert metadata[b"galtools.model_sha256"].decode() == hashlib.sha256(handle.read()).hexdigest()
    assert metadata[b"galtools.embed.input"].decode() == path
    assert metadata[b"galtools.embed.provider"] == b"CPUExecutionProvider"
    history = json.loads(metadata[b"galtools.history"])
    assert [h["tool"] for h in history] == ["test", "gal-embed"]


def test_batches_and_formats_do_not_change_the_result(model, table_file, fp32_run, tmp_path):
    """Batches of 7 and of all rows at once, Arrow and FITS outputs: the numbers of the batches of 64."""
    model_path, _, _ = model
    path, _ = table_file
    a, b = tmp_path / "a.arrow", tmp_path / "b.fits"
    assert embed(path, "--model", model_path, "-o", a, "-b", "7").returncode == 0
    assert embed(path, "--model", model_path, "-o", b, "-b", "1000").returncode == 0
    for other in (a, b):
        np.testing.assert_allclose(embeddings(read(str(other))), embeddings(fp32_run), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_fp16_cosine_to_fp32_and_the_conversion_is_cached(model, table_file, fp32_run, tmp_path):
    import onnx

    model_path, _, _ = model
    path, _ = table_file
    cache = tmp_path / "cache"
    env = {"GALTOOLS_CACHE_DIR": str(cache)}
    fp16 = tmp_path / "fp16.parquet"
    first = embed(path, "--model", model_path, "-o", fp16, "--precision", "fp16", env_extra=env)
    assert first.returncode == 0, first.stderr.decode()

    a, b = embeddings(fp32_run), embeddings(read(str(fp16)))
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.999
    assert np.abs(a - b).max() > 0          # fp16 really ran: not the fp32 graph under another name

    with open(model_path, "rb") as handle:
        sha = hashlib.sha256(handle.read()).hexdigest()
    cached = [p for p in (cache / "onnx").iterdir()   # not the CPU's optimised graph, nor the records
              if ".opt-" not in p.name and p.suffix == ".onnx"]
    assert len(cached) == 1 and cached[0].name.startswith(sha)
    converted = onnx.load(str(cached[0]))
    assert {i.data_type for i in converted.graph.initializer if len(i.dims) == 4} == {onnx.TensorProto.FLOAT16}
    assert converted.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert converted.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT

    stamp = cached[0].stat().st_mtime_ns
    again = embed(path, "--model", model_path, "-o", tmp_path / "again.parquet", "--precision", "fp16", "-v",
                  env_extra=env)
    assert again.returncode == 0
    assert "using the cached fp16 model" in again.stderr.decode()
    assert cached[0].stat().st_mtime_ns == stamp
    assert np.array_equal(embeddings(read(str(tmp_path / "again.parquet"))), b)


def test_float16_storage(model, table_file, fp32_run, tmp_path):
    model_path, _, _ = model
    path, _ = table_file
    out16 = tmp_path / "e16.parquet"
    # the batches of fp32_run, so the float32 values before the cast are the same computation
    assert embed(path, "--model", model_path, "-o", out16, "--dtype", "float16", "--batch-size", "64").returncode == 0
    table16 = read(str(out16))
    assert table16.schema.field("embedding").type.value_type == pa.float16()
    stored = np.asarray(table16.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False))
    assert np.array_equal(stored, embeddings(fp32_run).reshape(-1).astype(np.float16))
    refused = embed(path, "--model", model_path, "-o", tmp_path / "e16.fits", "--dtype", "float16")
    assert_error(refused, 2, "float16")


# ------------------------------------------------------------------------------------------------ scale-out

def _gal_embed_on_path(folder) -> dict:
    """An environment whose PATH has a gal-embed that runs this checkout (before the console script is installed)."""
    shim = folder / "gal-embed"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m galtools.cli.embed "$@"\n')
    shim.chmod(0o755)
    return dict(os.environ, PYTHONPATH=ROOT, PATH=f"{folder}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.slow
def test_slurm_array_parts_concatenate_to_the_unsharded_output(model, table_file, fp32_run, tmp_path):
    """examples/slurm-embed.sh as three array tasks (ids 1..3), then examples/check-embed-parts.py."""
    model_path, _, _ = model
    path, _ = table_file
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    env = _gal_embed_on_path(bin_folder)
    parts = tmp_path / "parts"
    script = os.path.join(ROOT, "examples", "slurm-embed.sh")
    for task in (1, 2, 3):
        task_env = dict(env, SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_COUNT="3",
                        PRECISION="fp32", BATCH="64")
        result = subprocess.run(["bash", script, path, model_path, str(parts)], env=task_env, capture_output=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr.decode()
    assert sorted(os.listdir(parts)) == ["part-0-of-3.parquet", "part-1-of-3.parquet", "part-2-of-3.parquet"]
    merged_path = tmp_path / "merged.parquet"
    check = [sys.executable, os.path.join(ROOT, "examples", "check-embed-parts.py"), path, str(parts)]
    result = subprocess.run(check + ["--merge", str(merged_path)], env=env, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    assert "every input row exactly once" in result.stderr.decode()

    for merged in (read(str(parts)), read(str(merged_path))):
        assert merged.column("object_id").to_pylist() == fp32_run.column("object_id").to_pylist()
        assert merged.column("label").to_pylist() == fp32_run.column("label").to_pylist()
        # the parts run other batch shapes (ONNX Runtime picks kernels by shape): equal to float32 rounding
        np.testing.assert_allclose(embeddings(merged), embeddings(fp32_run), rtol=0, atol=1e-5)

    # a rerun skips finished parts; a lost part is named by the check
    again = subprocess.run(["bash", script, path, model_path, str(parts)], capture_output=True, timeout=300,
                           env=dict(env, SLURM_ARRAY_TASK_ID="2", SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_COUNT="3"))
    assert again.returncode == 0 and b"skipping" in again.stdout
    os.unlink(parts / "part-1-of-3.parquet")
    lost = subprocess.run(check, env=env, capture_output=True, timeout=300)
    assert lost.returncode == 65 and b"shard(s) 1" in lost.stderr


def test_an_empty_shard_writes_an_empty_table(model, tmp_path):
    model_path, _, _ = model
    small = write_table(cutout_table(n=2), str(tmp_path / "two.parquet"), bands=",".join(TABLE_BANDS))
    out = tmp_path / "empty.parquet"
    result = embed(small, "--model", model_path, "-o", out, "--shard", "0/4")
    assert result.returncode == 0, result.stderr.decode()
    table = read(str(out))
    assert table.num_rows == 0 and table.column_names == ["object_id", "ra", "label", "embedding"]


def test_real_pipe_into_and_out_of_gal_embed(model, table_file, fp32_run, tmp_path):
    model_path, _, _ = model
    path, _ = table_file
    python = sys.executable
    pipe = (f"'{python}' -m galtools.cli.pack '{path}' -o - | '{python}' -m galtools.cli.embed - --model '{model_path}'"
            f" -b 50 | tee '{tmp_path}/piped.arrows' | '{python}' -m galtools.cli.info --json -")
    result = subprocess.run(["bash", "-o", "pipefail", "-c", pipe], capture_output=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr.decode()
    info = json.loads(result.stdout)
    assert info["rows"] == N_ROWS
    piped = read(str(tmp_path / "piped.arrows"))
    assert piped.schema.metadata[b"galtools.embed.input"] == b"stdin"
    np.testing.assert_allclose(embeddings(piped), embeddings(fp32_run), rtol=0, atol=1e-5)


def test_head_closing_the_pipe_is_quiet(model, table_file):
    model_path, _, _ = model
    path, _ = table_file
    pipe = f"'{sys.executable}' -m galtools.cli.embed '{path}' --model '{model_path}' -b 8 | head -c 100 > /dev/null"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", pipe], capture_output=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""


# ------------------------------------------------------------------------------------------------ errors

@pytest.mark.slow
def test_missing_and_corrupt_models(table_file, tmp_path, model):
    path, _ = table_file
    assert_error(embed(path, "--model", tmp_path / "nope.onnx", "-o", tmp_path / "o.parquet"), 66, "nope.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(os.urandom(4096))
    assert_error(embed(path, "--model", garbage, "-o", tmp_path / "o.parquet"), 65, "cannot be loaded")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(open(model[0], "rb").read()[:20000])
    assert_error(embed(path, "--model", truncated, "-o", tmp_path / "o.parquet"), 65)
    assert_error(embed(path, "--model", truncated, "-o", tmp_path / "o.parquet", "--precision", "fp16",
                       env_extra={"GALTOOLS_CACHE_DIR": str(tmp_path / "c")}), 65)
    assert not os.path.exists(tmp_path / "o.parquet")


def _altered_model(source: str, target, rename_input=None, drop_key=None, set_props=None) -> str:
    import onnx

    model = onnx.load(source)
    if rename_input:
        old = model.graph.input[0].name
        model.graph.input[0].name = rename_input
        for node in model.graph.node:
            node.input[:] = [rename_input if name == old else name for name in node.input]
    props = {p.key: p.value for p in model.metadata_props if p.key != drop_key}
    props.update(set_props or {})
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(target))
    return str(target)


def test_a_model_that_breaks_the_contract(model, tmp_path, table_file):
    path, _ = table_file
    out = tmp_path / "o.parquet"
    wrong_name = _altered_model(model[0], tmp_path / "wrong-name.onnx", rename_input="x")
    assert_error(embed(path, "--model", wrong_name, "-o", out), 65, "'image'", "gal-train")
    no_meta = _altered_model(model[0], tmp_path / "no-meta.onnx", drop_key="galtools.preprocess")
    assert_error(embed(path, "--model", no_meta, "-o", out), 65, "galtools.preprocess")
    wrong_size = _altered_model(model[0], tmp_path / "wrong-size.onnx", set_props={"galtools.input_size": "36"})
    assert_error(embed(path, "--model", wrong_size, "-o", out), 65, "36", "32")
    assert not out.exists()


def test_band_and_size_mismatches_name_both_sides(model, tmp_path):
    model_path, _, _ = model
    gri = write_table(cutout_table(images=galaxy_cutouts(10, 3, 40, 40)), str(tmp_path / "gri.fits"), bands="g,r,i")
    err = assert_error(embed(gri, "--model", model_path, "-o", tmp_path / "o.parquet"), 65)
    assert "g,r,i" in err and "u,g,r,i,z" in err
    small = write_table(cutout_table(images=galaxy_cutouts(10, 6, 24, 24)), str(tmp_path / "small.fits"),
                        bands=",".join(TABLE_BANDS))
    err = assert_error(embed(small, "--model", model_path, "-o", tmp_path / "o.parquet"), 65)
    assert "24x24" in err and "32x32" in err
    unnamed = write_table(cutout_table(images=galaxy_cutouts(10, 3, 40, 40)), str(tmp_path / "unnamed.parquet"),
                          bands="")
    assert_error(embed(unnamed, "--model", model_path, "-o", tmp_path / "o.parquet"), 65, "3-band", "u,g,r,i,z")
    assert not os.path.exists(tmp_path / "o.parquet")


def test_nan_pixels_are_refused_and_nothing_is_written(model, tmp_path):
    model_path, _, _ = model
    images = galaxy_cutouts(40, 6, HEIGHT, WIDTH)
    images[37, 2, 20, 20] = np.nan               # in the last batch: earlier batches were already written
    bad = write_table(cutout_table(n=40, images=images), str(tmp_path / "nan.parquet"), bands=",".join(TABLE_BANDS))
    out = tmp_path / "o.parquet"
    err = assert_error(embed(bad, "--model", model_path, "-o", out, "-b", "16"), 65, "NaN", "--fill-nan")
    assert str(5000 + 40 - 1 - 37) in err     # object ids count down from 5039
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".o.parquet")]


def test_missing_input_and_existing_output(model, table_file, tmp_path):
    model_path, _, _ = model
    path, _ = table_file
    assert_error(embed(tmp_path / "nope.fits", "--model", model_path, "-o", tmp_path / "o.parquet"), 66)
    existing = tmp_path / "exists.parquet"
    existing.write_bytes(b"keep me")
    assert_error(embed(path, "--model", model_path, "-o", existing), 1, "--overwrite")
    assert existing.read_bytes() == b"keep me"


def _gpu_usable() -> bool:
    import onnxruntime as ort

    from galtools.embed.providers import cuda_device_count

    return "CUDAExecutionProvider" in ort.get_available_providers() and cuda_device_count()[0] > 0


def test_cuda_without_a_gpu_exits_69_with_the_reason(model, table_file, tmp_path):
    if _gpu_usable():
        pytest.skip("a GPU is usable here")
    model_path, _, _ = model
    path, _ = table_file
    err = assert_error(embed(path, "--model", model_path, "-o", tmp_path / "o.parquet", "--device", "cuda"), 69,
                       "--device cuda")
    assert "GPU" in err or "CUDA" in err or "libcuda" in err
    assert_error(embed(path, "--model", model_path, "-o", tmp_path / "o.parquet", "--device", "tpu"), 2, "--device")
    # auto quietly uses the CPU and says so in the output's metadata
    out = tmp_path / "auto.parquet"
    assert embed(path, "--model", model_path, "-o", out, "--device", "auto").returncode == 0
    assert read(str(out)).schema.metadata[b"galtools.embed.provider"] == b"CPUExecutionProvider"


@pytest.mark.skipif("not _gpu_usable()")
def test_gpu_matches_cpu(model, table_file, tmp_path):
    model_path, _, _ = model
    path, _ = table_file
    env = {"GALTOOLS_CACHE_DIR": str(tmp_path / "cache")}
    runs = {}
    for name, args in {"cpu": ["--device", "cpu"], "cuda": ["--device", "cuda"],
                       "cuda16": ["--device", "cuda", "--precision", "fp16"]}.items():
        out = tmp_path / f"{name}.parquet"
        result = embed(path, "--model", model_path, "-o", out, "-b", "64", *args, env_extra=env)
        assert result.returncode == 0, result.stderr.decode()
        runs[name] = read(str(out))
    assert runs["cuda"].schema.metadata[b"galtools.embed.provider"] == b"CUDAExecutionProvider"
    a, b, c = (embeddings(runs[k]) for k in ("cpu", "cuda", "cuda16"))
    assert np.abs(a - b).max() <= 1e-3       # TF32 may be on for cuDNN convolutions
    cosine = (a * c).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(c, axis=1)
    assert cosine.min() > 0.999


# ------------------------------------------------------------------------------------------------ no torch

def test_gal_embed_never_imports_torch(model, table_file, tmp_path):
    """The embedding node has no training stack: neither the CLI nor an fp16 conversion may import torch."""
    model_path, _, _ = model
    path, _ = table_file
    code = f"""
import sys
from galtools.cli.embed import cli
help_only = 'onnxruntime' in sys.modules or 'pyarrow' in sys.modules
for extra in ([], ['--precision', 'fp16']):
    out = {str(tmp_path)!r} + '/o' + str(len(extra)) + '.parquet'
    cli.main(args=[{path!r}, '--model', {model_path!r}, '-o', out, '-q'] + extra, standalone_mode=False)
print(help_only, 'torch' in sys.modules, 'onnxruntime' in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=ROOT, GALTOOLS_CACHE_DIR=str(tmp_path / "cache")))
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().split() == ["False", "False", "True"]


def test_threads_follow_the_cpu_allocation(model, table_file, tmp_path):
    model_path, _, _ = model
    path, _ = table_file
    result = embed(path, "--model", model_path, "-o", tmp_path / "o.parquet", "-v",
                   env_extra={"SLURM_CPUS_PER_TASK": "1"})
    assert result.returncode == 0
    assert "1 CPU threads" in result.stderr.decode()
    if len(os.sched_getaffinity(0)) > 1 and subprocess.run(["which", "taskset"], capture_output=True).returncode == 0:
        command = ["taskset", "-c", str(min(os.sched_getaffinity(0))), sys.executable, "-m", "galtools.cli.embed",
                   path, "--model", model_path, "-o", str(tmp_path / "t.parquet"), "-v"]
        pinned = subprocess.run(command, capture_output=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
        assert pinned.returncode == 0 and "1 CPU threads" in pinned.stderr.decode()


def test_io_binding_ring_gives_the_same_embeddings(model, table_file, fp32_run, tmp_path):
    """The GPU path's ring of bound input buffers, run on CPU buffers: a buffer reused too early would mix batches."""
    from galtools.embed import EmbedSettings, embed_table, load_encoder
    from galtools.embed.runner import IoBindingRunner
    from galtools.io import open_output, open_table

    model_path, _, _ = model
    path, _ = table_file
    encoder = load_encoder(model_path, EmbedSettings(device="cpu", batch_size=16))
    encoder.runner = IoBindingRunner(encoder.session, 0, (16, 5, MODEL_SIZE, MODEL_SIZE), device_type="cpu")
    out_path = str(tmp_path / "bound.parquet")
    with open_table(path) as table, open_output(out_path, metadata=table.metadata, tool="test") as out:
        stats = embed_table(table, encoder, out, batch_size=16)
    assert stats.rows == N_ROWS
    np.testing.assert_allclose(embeddings(read(out_path)), embeddings(fp32_run), rtol=0, atol=1e-5)
