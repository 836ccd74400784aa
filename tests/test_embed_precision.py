"""gal-embed --precision int8 | bf16 | auto: each lower precision used only after a parity check against fp32.

The check passes on a trained encoder (gal-train --arch tiny, a few steps) and refuses a model built so that int8
destroys it: one channel of its first layer is 10^4 times the others and a later layer ignores it, so int8's
per-tensor activation grid, stretched by that channel, rounds away everything the embedding is made of.  The figures
gal-embed records are checked against an independent computation on its fp32 and int8 output files.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, write_table
from test_embed import assert_error, cutout_table, embed, embeddings, export_contract_model, galaxy_cutouts, read

N_ROWS = 300


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    images = galaxy_cutouts(N_ROWS, 5, 48, 48, seed=7)
    return write_table(cutout_table(images=images), str(tmp_path_factory.mktemp("data") / "cutouts.parquet"),
                       bands="u,g,r,i,z")


def _metadata(path) -> dict:
    return {k.decode(): v.decode() for k, v in read(str(path)).schema.metadata.items()}


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _overlap_brute_force(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """kNN overlap@k by plain loops: for each row, its k most cosine-similar other rows under a and under b."""
    def neighbours(e, i):
        scores = [(-float(np.dot(e[i], e[j]) / np.linalg.norm(e[i]) / np.linalg.norm(e[j])), j)
                  for j in range(len(e)) if j != i]
        return {j for _, j in sorted(scores)[:k]}
    return sum(len(neighbours(a, i) & neighbours(b, i)) for i in range(len(a))) / (k * len(a))


def test_parity_figures_match_a_brute_force_computation():
    from galtools.embed.precision import parity

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(60, 12))
    for noise, expect_pass in ((1e-3, True), (0.5, False)):
        candidate = reference + noise * rng.normal(size=reference.shape)
        result = parity("int8", reference, candidate)
        assert result.rows == 60 and result.k == 10
        assert result.overlap == pytest.approx(_overlap_brute_force(reference, candidate), abs=1e-12)
        assert result.cosine_min == pytest.approx(_cosines(reference, candidate).min(), abs=1e-12)
        assert result.passed is expect_pass


def test_int8_passes_on_a_trained_encoder_and_is_cached(trained_run, table, tmp_path):
    model = str(trained_run / "encoder.onnx")
    env = {"GALTOOLS_CACHE_DIR": str(tmp_path / "cache")}
    fp32, int8 = tmp_path / "fp32.parquet", tmp_path / "int8.parquet"
    assert embed(table, "--model", model, "-o", fp32, env_extra=env).returncode == 0
    first = embed(table, "--model", model, "-o", int8, "--precision", "int8", env_extra=env)
    err = first.stderr.decode()
    assert first.returncode == 0, err
    assert "kNN overlap@10" in err.splitlines()[-1]          # the parity figures are printed with the result

    meta = _metadata(int8)
    assert meta["galtools.embed.precision"] == "int8"
    recorded = json.loads(meta["galtools.embed.parity"])
    assert recorded["rows"] == 256 and recorded["k"] == 10
    a, b = embeddings(read(str(fp32))), embeddings(read(str(int8)))
    cosine = _cosines(a, b)
    assert cosine.min() >= 0.99                             # every row of the table, not only the checked sample
    assert np.abs(a - b).max() > 1e-4                       # int8 really ran
    assert recorded["cosine_min"] == pytest.approx(cosine[:256].min(), abs=1e-3)
    overlap = _overlap_brute_force(a[:256], b[:256])
    assert overlap >= 0.9
    assert recorded["overlap"] == pytest.approx(overlap, abs=0.02)   # batch shapes differ: floats may differ

    import onnx

    quantized = [p for p in (tmp_path / "cache" / "onnx").iterdir()
                 if ".int8-" in p.name and ".opt-" not in p.name and p.suffix == ".onnx"]
    assert len(quantized) == 1
    assert "QuantizeLinear" in {node.op_type for node in onnx.load(str(quantized[0])).graph.node}
    stamp = quantized[0].stat().st_mtime_ns
    again = embed(table, "--model", model, "-o", tmp_path / "again.parquet", "--precision", "int8", "-v",
                  env_extra=env)
    assert again.returncode == 0 and "using the cached int8 model" in again.stderr.decode()
    assert re.search(r"first batch written [\d.]+ s after the process started \(CPU [\d.]+ s\)",
                     again.stderr.decode())
    assert quantized[0].stat().st_mtime_ns == stamp
    np.testing.assert_allclose(embeddings(read(str(tmp_path / "again.parquet"))), b, rtol=0, atol=1e-4)


def test_int8_never_imports_torch(trained_run, table, tmp_path):
    code = f"""
import sys
from galtools.cli.embed import cli
cli.main(args=[{table!r}, '--model', {str(trained_run / 'encoder.onnx')!r}, '-o', {str(tmp_path / 'o.parquet')!r}, '-q',
               '--precision', 'int8'], standalone_mode=False)
print('torch' in sys.modules, 'onnxruntime' in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=ROOT, GALTOOLS_CACHE_DIR=str(tmp_path / "cache")))
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().split() == ["False", "True"]


@pytest.fixture(scope="module")
def fragile_model(tmp_path_factory):
    """An encoder whose embedding lives in activations 10^4 times smaller than one channel it ignores."""
    import torch

    from galtools.preprocess import Preprocess

    class Fragile(torch.nn.Module):
        in_chans, num_features = 5, 16

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.first = torch.nn.Conv2d(5, 17, 3, padding=1)
            self.second = torch.nn.Conv2d(17, 16, 1)
            with torch.no_grad():
                self.first.weight[16] *= 1e4
                self.first.bias[16] = 1e4
                self.second.weight[:, 16] = 0

        def forward_features(self, x):
            return torch.relu(self.second(torch.relu(self.first(x)))).mean(dim=(2, 3))

    sample = galaxy_cutouts(64, 5, 32, 32, seed=99)
    preprocess = Preprocess.fit(sample, ["u", "g", "r", "i", "z"])
    path = str(tmp_path_factory.mktemp("fragile") / "encoder.onnx")
    export_contract_model(path, Fragile().eval(), preprocess, 32)
    return path


def test_int8_is_refused_where_it_fails_and_auto_falls_back_to_fp32(fragile_model, table, tmp_path):
    env = {"GALTOOLS_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "int8.parquet"
    refused = embed(table, "--model", fragile_model, "-o", out, "--precision", "int8", "-q", env_extra=env)
    err = assert_error(refused, 65, "parity", "cosine min", "kNN overlap@10", "--precision fp32")
    assert "cutouts.parquet" in err
    assert not out.exists()

    fp32, auto = tmp_path / "fp32.parquet", tmp_path / "auto.parquet"
    assert embed(table, "--model", fragile_model, "-o", fp32, env_extra=env).returncode == 0
    result = embed(table, "--model", fragile_model, "-o", auto, "--precision", "auto", env_extra=env)
    assert result.returncode == 0, result.stderr.decode()
    meta = _metadata(auto)
    assert meta["galtools.embed.precision"] == "fp32" and meta["galtools.embed.precision_requested"] == "auto"
    measured = json.loads(meta["galtools.embed.auto"])
    assert measured["precision"] == "fp32" and measured["parity"]["int8"]["cosine_min"] < 0.99
    np.testing.assert_allclose(embeddings(read(str(auto))), embeddings(read(str(fp32))), rtol=0, atol=1e-5)
    # the choice is cached per model and machine: the next run does not measure again
    again = embed(table, "--model", fragile_model, "-o", tmp_path / "again.parquet", "--precision", "auto", "-v",
                  env_extra=env)
    assert again.returncode == 0 and "as measured before" in again.stderr.decode()
    assert json.loads(_metadata(tmp_path / "again.parquet")["galtools.embed.auto"])["cached"] is True


def test_auto_takes_the_fastest_precision_that_passes(trained_run, table, tmp_path):
    out = tmp_path / "auto.parquet"
    result = embed(table, "--model", str(trained_run / "encoder.onnx"), "-o", out, "--precision", "auto",
                   env_extra={"GALTOOLS_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr.decode()
    meta = _metadata(out)
    measured = json.loads(meta["galtools.embed.auto"])
    passing = ["fp32"] + [p for p, figures in measured["parity"].items()
                          if figures["cosine_min"] >= 0.99 and figures["overlap"] >= 0.9]
    rates = measured["images_per_second"]
    assert meta["galtools.embed.precision"] == max(passing, key=lambda p: rates[p]) == measured["precision"]
    assert measured["cpu"] and measured["threads"] >= 1


def test_bf16_runs_only_where_the_cpu_and_onnxruntime_have_it(trained_run, table, tmp_path):
    from galtools.embed.precision import bf16_support

    usable, why = bf16_support()
    out = tmp_path / "bf16.parquet"
    result = embed(table, "--model", str(trained_run / "encoder.onnx"), "-o", out, "--precision", "bf16")
    if not usable:
        assert_error(result, 69, "bf16", why.split(",")[0])
        assert not out.exists()
        return
    assert result.returncode == 0, result.stderr.decode()
    recorded = json.loads(_metadata(out)["galtools.embed.parity"])
    assert recorded["precision"] == "bf16" and recorded["cosine_min"] >= 0.99 and recorded["overlap"] >= 0.9


def test_lower_precisions_are_for_cpus(table, trained_run, tmp_path):
    out = tmp_path / "o.parquet"
    assert_error(embed(table, "--model", str(trained_run / "encoder.onnx"), "-o", out, "--device", "cuda",
                       "--precision", "int8"), 2, "int8", "--device cpu")


def test_a_damaged_optimised_graph_is_made_again(trained_run, table, tmp_path):
    model = str(trained_run / "encoder.onnx")
    cache = tmp_path / "cache"
    env = {"GALTOOLS_CACHE_DIR": str(cache)}
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    assert embed(table, "--model", model, "-o", first, env_extra=env).returncode == 0
    optimised = [p for p in (cache / "onnx").iterdir() if ".opt-" in p.name and p.suffix == ".onnx"]
    assert len(optimised) == 1
    optimised[0].write_bytes(b"not a model")
    result = embed(table, "--model", model, "-o", second, env_extra=env)
    assert result.returncode == 0, result.stderr.decode()
    assert "is not the file its record describes" in result.stderr.decode()
    assert optimised[0].stat().st_size > 1000
    np.testing.assert_allclose(embeddings(read(str(second))), embeddings(read(str(first))), rtol=0, atol=1e-5)


def test_cpu_description_reads_model_and_vector_extensions(tmp_path):
    from galtools.embed.precision import bf16_support, cpu_description, int8_tag

    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu sse avx2 fma avx512f avx512_vnni amx_int8\n"
                   "processor\t: 1\nmodel name\t: Some Xeon\nflags\t\t: fpu sse avx2\n")
    cpu = cpu_description(str(x86))
    assert cpu["model"] == "Some Xeon" and cpu["flags"] == ["avx2", "fma", "avx512f", "avx512_vnni", "amx_int8"]
    arm = {"model": "Neoverse-V2", "arch": "aarch64", "flags": ["asimd", "bf16", "i8mm"]}
    assert bf16_support(arm) == (True, "")
    assert not bf16_support(dict(arm, flags=["asimd"]))[0]
    assert not bf16_support(dict(cpu, arch="x86_64"))[0]
    assert int8_tag(dict(cpu, arch="x86_64")) == "int8-v1"
    assert int8_tag({"model": "old", "arch": "x86_64", "flags": ["avx2", "fma"]}) == "int8-v1-r7"
    # an fp32 run on a CPU with int8 dot products ends with a hint about --precision auto; without them, none
    from galtools.embed.precision import int8_hint

    assert "amx_int8" in int8_hint(dict(cpu, arch="x86_64")) and "--precision auto" in int8_hint(cpu)
    assert int8_hint({"model": "old", "arch": "x86_64", "flags": ["avx2", "fma"]}) is None
    assert "i8mm" in int8_hint(arm)


# ------------------------------------------------------------------------------------- the cache keyed by content

def test_int8_is_the_same_whatever_ran_before_and_records_its_calibration(trained_run, table, tmp_path):
    """Table B embedded in int8 after table A (whose calibration is cached) equals table B in a fresh cache; the
    output names the calibration sample, whose checksum is recomputed here from B's first cutouts."""
    import hashlib

    from galtools.embed.model import file_sha256
    from galtools.preprocess import Preprocess
    from galtools.train.export import read_metadata

    model = str(trained_run / "encoder.onnx")
    other = write_table(cutout_table(images=galaxy_cutouts(N_ROWS, 5, 48, 48, seed=8)),
                        str(tmp_path / "other.parquet"), bands="u,g,r,i,z")
    shared, fresh = {"GALTOOLS_CACHE_DIR": str(tmp_path / "shared")}, {"GALTOOLS_CACHE_DIR": str(tmp_path / "fresh")}
    a, b_after_a, b_fresh = (tmp_path / f"{n}.parquet" for n in ("a", "b_after_a", "b_fresh"))
    for source, out, env in ((table, a, shared), (other, b_after_a, shared), (other, b_fresh, fresh)):
        result = embed(source, "--model", model, "-o", out, "--precision", "int8", "-q", env_extra=env)
        assert result.returncode == 0, result.stderr.decode()
    # exact by construction: the same int8 graph run on the same cutouts in the same batches on this CPU (a cache
    # history that changed the calibration changed embeddings by up to 0.09)
    np.testing.assert_array_equal(embeddings(read(str(b_after_a))), embeddings(read(str(b_fresh))))
    recorded = {n: json.loads(_metadata(p)["galtools.embed.calibration"]) for n, p in
                (("a", a), ("b_after_a", b_after_a), ("b_fresh", b_fresh))}
    assert recorded["b_after_a"] == recorded["b_fresh"] and recorded["a"]["sha256"] != recorded["b_fresh"]["sha256"]

    metadata = read_metadata(model)                          # the calibration sample, recomputed
    preprocess = Preprocess.from_json(metadata["galtools.preprocess"])
    size = int(metadata["galtools.input_size"])
    from galtools.io import images_of

    images = images_of(read(other))[:256, :, 8:8 + size, 8:8 + size]
    sample = np.ascontiguousarray(preprocess.apply_numpy(images)[::2], dtype=np.float32)
    digest = hashlib.sha256(f"float32{list(sample.shape)}".encode())
    digest.update(sample.tobytes())
    assert recorded["b_fresh"] == {"rule": "every other cutout of the first 256 of the input, preprocessed",
                                   "rows": 128, "sha256": digest.hexdigest()}
    assert _metadata(b_fresh)["galtools.model_sha256"] == file_sha256(model)


def _only(folder, *fragments):
    found = [p for p in folder.iterdir() if p.suffix == ".onnx" and all(f in p.name for f in fragments)]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def swapped_cache(trained_run, fragile_model, table, tmp_path_factory):
    """A cache in which another model's optimised fp32 graph (with its record) and another model's fp16 conversion
    (without) lie under this model's names; the embeddings of both models from it and of this one from a fresh
    cache. Made once for the module: each test works on a copy (``_cache_with_swapped_graphs``)."""
    import shutil

    from galtools.embed.model import file_sha256

    tmp_path = tmp_path_factory.mktemp("swapped")
    model = str(trained_run / "encoder.onnx")
    mine, theirs = file_sha256(model), file_sha256(fragile_model)
    cache = tmp_path / "cache"
    env, fresh = {"GALTOOLS_CACHE_DIR": str(cache)}, {"GALTOOLS_CACHE_DIR": str(tmp_path / "fresh")}
    reference = {}
    for precision in ("fp32", "fp16"):
        for who, env_now in ((model, env), (fragile_model, env), (model, fresh)):
            out = tmp_path / f"{precision}-{len(reference)}.parquet"
            result = embed(table, "--model", who, "-o", out, "--precision", precision, "-q", env_extra=env_now)
            assert result.returncode == 0, result.stderr.decode()
            reference[(precision, who, env_now is fresh)] = embeddings(read(str(out)))
    onnx_dir = cache / "onnx"
    swapped = {"fp32": (_only(onnx_dir, theirs, ".fp32.opt-"), _only(onnx_dir, mine, ".fp32.opt-"), True),
               "fp16": (_only(onnx_dir, theirs, ".fp16-v1.onnx"), _only(onnx_dir, mine, ".fp16-v1.onnx"), False)}
    for source, target, with_record in swapped.values():
        shutil.copyfile(source, target)
        if with_record and os.path.exists(str(source) + ".json"):
            shutil.copyfile(str(source) + ".json", str(target) + ".json")
    return model, mine, cache, reference, {p: target.name for p, (_, target, _) in swapped.items()}


def _cache_with_swapped_graphs(swapped_cache, tmp_path):
    """A copy of the module's swapped cache in the test's own folder (tmp_path/cache), with the environment that
    points gal-embed to it, and the paths of the two swapped graphs in it."""
    import shutil

    model, mine, cache, reference, names = swapped_cache
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    return model, mine, {"GALTOOLS_CACHE_DIR": str(copy)}, reference, {p: copy / "onnx" / n for p, n in names.items()}


def _assert_this_models(out, model, mine, reference, precision, other):
    """``out`` holds this model's embeddings (as from an empty cache), not the other model's."""
    got = embeddings(read(str(out)))
    np.testing.assert_allclose(got, reference[(precision, model, True)], rtol=0, atol=1e-5)
    assert np.abs(reference[(precision, other, False)].mean() - got.mean()) > 1e-3   # the other really differs
    assert _metadata(out)["galtools.model_sha256"] == mine


def test_a_cached_graph_copied_under_another_models_key_is_not_used(swapped_cache, fragile_model, table, tmp_path):
    """Another model's optimised graph (with its record) and another model's fp16 conversion (without) put under
    this model's names: neither runs; the embeddings are this model's, as from an empty cache."""
    model, mine, env, reference, targets = _cache_with_swapped_graphs(swapped_cache, tmp_path)
    for precision, target in targets.items():
        out = tmp_path / f"after-{precision}.parquet"
        result = embed(table, "--model", model, "-o", out, "--precision", precision, env_extra=env)
        err = result.stderr.decode()
        assert result.returncode == 0, err
        _assert_this_models(out, model, mine, reference, precision, fragile_model)
        assert f"model {target}" in err and "not used" in err
        # made again and recorded: the next run uses it without a word
        again = embed(table, "--model", model, "-o", tmp_path / f"again-{precision}.parquet", "--precision",
                      precision, env_extra=env)
        assert again.returncode == 0 and "not used" not in again.stderr.decode()


READ_ONLY_SHIM = """
import errno, os, tempfile
_mkstemp, _folder = tempfile.mkstemp, os.environ["GALTOOLS_TEST_READ_ONLY"]
def mkstemp(*args, dir=None, **kwargs):   # every file galtools writes in its cache starts as such a temporary
    if dir is not None and os.path.abspath(dir).startswith(_folder):
        raise PermissionError(errno.EACCES, "Permission denied", dir)
    return _mkstemp(*args, dir=dir, **kwargs)
tempfile.mkstemp = mkstemp
_open = os.open
def open_(path, flags, *args, **kwargs):   # ...or as an unnamed file (O_TMPFILE) made in the folder itself
    if flags & getattr(os, "O_TMPFILE", 0) == getattr(os, "O_TMPFILE", -1) and \
            os.path.abspath(path).startswith(_folder):
        raise PermissionError(errno.EACCES, "Permission denied", path)
    return _open(path, flags, *args, **kwargs)
os.open = open_
"""


def test_a_read_only_cache_holding_another_models_graphs_changes_nothing(swapped_cache, fragile_model, table,
                                                                          tmp_path):
    """The same swapped cache, read-only (its folder's mode, and for root, who writes regardless, a shim that
    refuses to create files in it): the files cannot be replaced, and still never run."""
    model, mine, env, reference, targets = _cache_with_swapped_graphs(swapped_cache, tmp_path)
    onnx_dir = tmp_path / "cache" / "onnx"
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(READ_ONLY_SHIM)
    env = dict(env, PYTHONPATH=f"{shim}{os.pathsep}{ROOT}", GALTOOLS_TEST_READ_ONLY=str(onnx_dir))
    before = {p.name: p.read_bytes() for p in onnx_dir.iterdir()}
    os.chmod(onnx_dir, 0o555)
    try:
        for precision in targets:
            out = tmp_path / f"read-only-{precision}.parquet"
            result = embed(table, "--model", model, "-o", out, "--precision", precision, env_extra=env)
            err = result.stderr.decode()
            assert result.returncode == 0, err
            assert "not used" in err
            _assert_this_models(out, model, mine, reference, precision, fragile_model)
    finally:
        os.chmod(onnx_dir, 0o755)
    assert {p.name: p.read_bytes() for p in onnx_dir.iterdir()} == before
