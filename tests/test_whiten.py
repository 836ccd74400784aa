"""gal-train whiten as a user runs it: a real encoder (conftest's trained_run, a gal-train run shared by the whole
test run), real processes and files.

The reference is independent of the command's own fit: numpy's covariance (np.cov) and eigendecomposition of the
unwhitened encoder's gal-embed output, the whitening written out from its formula; and the whitened encoder's
gal-embed output must equal the stored transform applied (numpy, float64) to the unwhitened embeddings.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import run_tool, write_table
from galtools.io import open_table

ROWS = 96            # conftest's trained_run: the cutouts it was trained on
TOLERANCE = 1e-4     # float32 graph (Sub + MatMul) against float64 numpy, relative to 1 + |value|


def vectors(path) -> tuple[list, np.ndarray]:
    table = pq.read_table(path)
    x = np.stack(table.column("embedding").to_pylist()).astype(np.float64)
    return table.column("object_id").to_pylist(), x


@pytest.fixture(scope="module")
def world(tmp_path_factory, trained_run):
    """This module's folder: run, conftest's trained tiny encoder (read only: whiten writes elsewhere); a copy of the
    96 five-band cutouts it was trained on; their embeddings by gal-embed."""
    folder = tmp_path_factory.mktemp("whiten")
    shutil.copyfile(trained_run.parent / "train.parquet", folder / "cutouts.parquet")
    os.symlink(trained_run, folder / "run")
    run_tool("gal-embed", folder / "cutouts.parquet", "--model", folder / "run" / "encoder.onnx", "--device", "cpu",
             "-q", "-o", folder / "raw.parquet", check=True)
    return folder


def test_whitened_encoder_embeds_as_the_stored_transform_and_matches_an_independent_fit(world):
    from galtools.embed.whiten import stored_whitening

    out = world / "w.onnx"
    done = run_tool("gal-train", "whiten", world / "run", world / "cutouts.parquet", "-o", out, "--dim", "20",
                    "--shrink", "0.5", "--device", "cpu", "-q")
    assert done.returncode == 0, done.stderr
    run_tool("gal-embed", world / "cutouts.parquet", "--model", out, "--device", "cpu", "-q", "-o",
             world / "white.parquet", check=True)
    ids_raw, raw = vectors(world / "raw.parquet")
    ids_white, white = vectors(world / "white.parquet")
    assert ids_white == ids_raw and white.shape == (ROWS, 20)

    mean, matrix, provenance = stored_whitening(str(out))
    expected = (raw - mean.astype(np.float64)) @ matrix.astype(np.float64)
    assert np.max(np.abs(white - expected) / (1 + np.abs(expected))) < TOLERANCE

    # independent reference: np.cov + eigh, the formula written out; eigenvectors agree up to sign
    values, vectors_ = np.linalg.eigh(np.cov(raw, rowvar=False))
    values, vectors_ = values[::-1], vectors_[:, ::-1]
    reference = (raw - raw.mean(axis=0)) @ (vectors_[:, :20] / np.sqrt(values[:20] + 0.5 * values.mean()))
    signs = np.sign((reference * white).sum(axis=0))
    assert np.max(np.abs(white - reference * signs) / (1 + np.abs(reference))) < TOLERANCE
    # whitened with shrink s: the covariance of the output is diag(lambda / (lambda + s mean(lambda)))
    assert np.allclose(np.cov(white, rowvar=False), np.diag(values[:20] / (values[:20] + 0.5 * values.mean())),
                       atol=1e-3)
    assert provenance["rows"] == ROWS and provenance["dim"] == 20 and provenance["shrink"] == 0.5
    assert provenance["fitted_on"] == "cutouts.parquet" and provenance["labels"] == "none"
    meta = pq.read_schema(world / "white.parquet").metadata
    assert meta[b"galtools.embedding_dim"] == b"20"


def test_gal_knn_searches_the_whitened_embeddings(world):
    """The whitened embeddings are a table like any other: gal-knn's neighbour is numpy's cosine neighbour."""
    out = world / "w-default.onnx"
    run_tool("gal-train", "whiten", world / "run" / "encoder.onnx", world / "cutouts.parquet", "-o", out,
             "--device", "cpu", "-q", check=True)
    run_tool("gal-embed", world / "cutouts.parquet", "--model", out, "--device", "cpu", "-q", "-o",
             world / "white-all.parquet", check=True)
    ids, white = vectors(world / "white-all.parquet")
    assert white.shape == vectors(world / "raw.parquet")[1].shape       # by default every dimension is kept
    unit = white / np.linalg.norm(white, axis=1, keepdims=True)
    nearest = ids[int(np.argsort(-(unit[1:] @ unit[0]))[0]) + 1]
    done = run_tool("gal-knn", world / "white-all.parquet", "--query", str(ids[0]), "-k", "1", "--format", "csv",
                    "-q", "-o", "-")
    assert done.returncode == 0, done.stderr
    assert str(nearest) in done.stdout.decode()


def test_refusals_are_one_line_with_their_exit_codes(world):
    out = world / "w-refuse.onnx"
    out.write_bytes(b"keep me")
    done = run_tool("gal-train", "whiten", world / "run", world / "cutouts.parquet", "-o", out, "--device", "cpu")
    assert done.returncode == 1 and out.read_bytes() == b"keep me"
    assert done.stderr.decode().count("\n") == 1 and "--overwrite" in done.stderr.decode()

    done = run_tool("gal-train", "whiten", world / "run", world / "cutouts.parquet", "-o", world / "big.onnx",
                    "--dim", "100000", "--device", "cpu")
    assert done.returncode == 2 and not os.path.exists(world / "big.onnx")
    assert done.stderr.decode().startswith("gal-train: error: --dim 100000") and done.stderr.decode().count("\n") == 1

    once = world / "once.onnx"
    run_tool("gal-train", "whiten", world / "run", world / "cutouts.parquet", "-o", once, "--device", "cpu", "-q",
             check=True)
    done = run_tool("gal-train", "whiten", once, world / "cutouts.parquet", "-o", world / "twice.onnx",
                    "--device", "cpu")
    assert done.returncode == 65 and "already whitened" in done.stderr.decode()
    assert not os.path.exists(world / "twice.onnx")

    with open_table(str(world / "cutouts.parquet")) as table:
        write_table(table.read_all().slice(0, 1), str(world / "one.parquet"), bands=",".join(table.bands))
    done = run_tool("gal-train", "whiten", world / "run", world / "one.parquet", "-o", world / "one.onnx",
                    "--device", "cpu")
    assert done.returncode == 65 and "at least 2 cutouts" in done.stderr.decode()
    assert done.stderr.decode().count("\n") == 1 and not os.path.exists(world / "one.onnx")

    # --overwrite replaces, in place, and the result is a whitened encoder again
    done = run_tool("gal-train", "whiten", world / "run", world / "cutouts.parquet", "-o", out, "--device", "cpu",
                    "-q", "--overwrite")
    assert done.returncode == 0, done.stderr
    from galtools.embed.whiten import stored_whitening

    assert stored_whitening(str(out))[2]["encoder_sha256"] == json.loads(
        json.dumps(stored_whitening(str(once))[2]))["encoder_sha256"]


def test_the_fit_keeps_only_sums_and_matches_numpy_whatever_the_batching():
    """Moments over uneven batches of vectors far from the origin: np.cov and np.mean of all rows at once, to 1e-9
    relative (float64); the fitted matrix whitens them to diag(lambda / (lambda + s mean(lambda)))."""
    from galtools.embed.whiten import Moments, fit

    rng = np.random.default_rng(3)
    x = 1e3 + rng.normal(size=(500, 12)) @ rng.normal(size=(12, 12))
    moments = Moments()
    for lo, hi in ((0, 7), (7, 300), (300, 301), (301, 500)):
        moments.add(x[lo:hi])
    mean, covariance = moments.mean_and_covariance()
    assert np.allclose(mean, x.mean(axis=0), rtol=1e-12)
    assert np.allclose(covariance, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)
    fitted = fit(moments, dim=5, shrink=2.0)
    values = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
    assert np.allclose(np.cov(fitted.apply(x), rowvar=False), np.diag(values[:5] / (values[:5] + 2 * values.mean())),
                       atol=1e-9)
