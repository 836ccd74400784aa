"""galtools.heads: the head file, the early-stopping rule (patience or cap), the apply loop, the label curve; and
galtools.device. Checked against constructed cases and independent numpy references."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from conftest import embedding_table, run_tool, tool_env, write_table
from galtools.errors import BadData, DeviceUnavailable, UsageProblem
from galtools.io import open_table

DIM = 6
ENCODER = "ab" * 32


def two_layers(seed: int = 0):
    from galtools.heads import StackedLinear

    rng = np.random.default_rng(seed)
    return StackedLinear([rng.normal(size=(DIM, 5)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)],
                         [rng.normal(size=5).astype(np.float32), rng.normal(size=3).astype(np.float32)])


# ------------------------------------------------------------------------------------------------------ the file

def test_head_file_round_trip_keeps_layers_task_info_and_arrays_exactly(tmp_path):
    from galtools.heads import load_head, save_head

    linear = two_layers()
    path = str(tmp_path / "m.model")
    extra = {"reference_ids": np.array(["a", "bc"]), "calibration": np.linspace(0, 1, 7)}
    save_head(path, extra, tool="gal-classify", kind="classify-mlp", embedding_dim=DIM, model_sha256=ENCODER,
              linear=linear, task={"labels": {"classes": ["x", "y", "z"]}}, info={"seed": 5, "n_train": 40})
    with np.load(path, allow_pickle=False) as data:       # any numpy reads it, without pickle
        meta = json.loads(str(data["__galtools__"]))
        assert sorted(data.files) == ["__galtools__", "b0", "b1", "calibration", "reference_ids", "w0", "w1"]
    assert meta["format"] == "galtools.head/2" and meta["layers"] == 2
    assert meta["task"] == {"labels": {"classes": ["x", "y", "z"]}} and meta["seed"] == 5
    head = load_head(path, "gal-classify")
    back = head.linear(3)
    for a, b in zip(linear.weights + linear.biases, back.weights + back.biases):
        assert np.array_equal(a, b)
    assert head.task == {"labels": {"classes": ["x", "y", "z"]}}
    assert head.info == {"seed": 5, "n_train": 40}
    assert head["reference_ids"].tolist() == ["a", "bc"] and np.array_equal(head["calibration"], extra["calibration"])
    with pytest.raises(BadData, match="3 outputs for 4 classes"):
        head.linear(4, "classes")
    x = np.random.default_rng(1).normal(size=(9, DIM))
    hidden = np.maximum(x @ linear.weights[0].astype(np.float64) + linear.biases[0], 0)
    logits = hidden @ linear.weights[1].astype(np.float64) + linear.biases[1]
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    assert np.allclose(back.probabilities(x), expected, atol=1e-5)


def test_head_file_refuses_pickle_reserved_names_and_overwriting(tmp_path):
    from galtools.heads import save_head

    path = str(tmp_path / "m.model")
    common = dict(tool="gal-ood", kind="ood-knn", embedding_dim=DIM, model_sha256=None)
    with pytest.raises(ValueError, match="pickle"):
        save_head(path, {"ids": np.array([object()], dtype=object)}, **common)
    with pytest.raises(ValueError, match="reserved"):
        save_head(path, {"w0": np.zeros(2)}, linear=two_layers(), **common)
    with pytest.raises(ValueError, match="reserved"):
        save_head(path, {}, info={"task": 1}, **common)
    save_head(path, {"x": np.zeros(2)}, **common)
    from galtools.errors import GalError

    with pytest.raises(GalError, match="already exists") as refused:
        save_head(path, {"x": np.zeros(2)}, **common)
    assert "--overwrite" in refused.value.one_line()


def test_a_model_file_of_the_first_format_still_predicts(tmp_path):
    """Files written before the task keys moved under 'task' (format galtools.head/1) are read as they were."""
    linear = two_layers(3)
    meta = {"format": "galtools.head/1", "tool": "gal-photoz", "version": "0.1.0", "kind": "photoz-mlp",
            "embedding_dim": DIM, "model_sha256": ENCODER, "created": "2026-01-01T00:00:00Z", "n_bins": 3,
            "zmax": 0.3, "layers": 2, "seed": 7, "settings": {"seed": 7}}
    path = tmp_path / "old.model"
    with open(path, "wb") as stream:
        np.savez(stream, **linear.arrays(), __galtools__=np.array(json.dumps(meta)))
    x = np.random.default_rng(2).normal(size=(20, DIM)).astype(np.float32)
    emb = write_table(embedding_table(x), str(tmp_path / "emb.parquet"), **{"galtools.model_sha256": ENCODER})
    out = tmp_path / "pred.parquet"
    run_tool("gal-photoz", "predict", emb, "--model", path, "-o", out, check=True)
    with open_table(str(out)) as table:
        z_phot = table.read_all().column("z_phot").to_numpy()
    hidden = np.maximum(x.astype(np.float64) @ linear.weights[0] + linear.biases[0], 0)
    logits = hidden @ linear.weights[1] + linear.biases[1]
    pdf = np.exp(logits - logits.max(axis=1, keepdims=True))
    pdf /= pdf.sum(axis=1, keepdims=True)
    assert np.allclose(z_phot, pdf @ np.array([0.05, 0.15, 0.25]), atol=1e-5)


# ------------------------------------------------------------------------------------------ the stopping rule

class _Optimiser:
    def __init__(self):
        self.param_groups = [{"lr": 1.0}, {"lr": 0.1}]


def test_early_stopping_stops_by_patience_and_cuts_the_rate_on_plateaus():
    from galtools.heads.train import EarlyStopping

    optimiser = _Optimiser()
    stopping = EarlyStopping(patience=3, max_checks=100, optimiser=optimiser)
    improved = [stopping.update(loss) for loss in (1.0, 0.9, 0.95, 0.95, 0.95)]
    assert improved == [True, True, False, False, False]
    assert stopping.done and stopping.stopped == "patience" and stopping.checks == 5
    record = stopping.record()
    assert record["best_check"] == 2 and record["best_val_loss"] == 0.9 and record["lr_cuts"] == 1
    assert [g["lr"] for g in optimiser.param_groups] == pytest.approx([0.2, 0.02])    # cut once, after 2 checks
    barely = EarlyStopping(patience=1, max_checks=100)
    barely.update(1.0)
    assert not barely.update(1.0 - 0.5e-4) and barely.stopped == "patience"          # below MIN_DELTA: no gain


def test_early_stopping_at_the_cap_says_so():
    from galtools.heads.train import EarlyStopping

    stopping = EarlyStopping(patience=2, max_checks=4)
    for loss in (4.0, 3.0, 2.0):
        stopping.update(loss)
        assert not stopping.done
    stopping.update(1.0)
    assert stopping.stopped == "cap" and stopping.record()["stopped_early"] is False
    late = EarlyStopping(patience=2, max_checks=3)          # patience runs out on the last allowed check
    for loss in (1.0, 2.0, 2.0):
        late.update(loss)
    assert late.stopped == "patience"


def _rows(n=400, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    return x, y


def test_train_head_reports_patience_or_cap_on_constructed_runs():
    from galtools.heads.rows import InMemoryRows
    from galtools.heads.train import TrainSettings, train_head

    x, y = _rows()
    # a learning rate too small to move anything: the first check is the best, patience ends the run exactly
    frozen = TrainSettings(lr=1e-30, patience=3, max_epochs=50, batch_size=100)
    _, record = train_head(InMemoryRows(x[:300], y[:300]), x[300:], y[300:], DIM, 3, frozen)
    assert record["stopped"] == "patience" and record["checks"] == 4 and record["best_check"] == 1
    # fewer checks than the patience: the run can only end at its cap, within --max-epochs passes
    capped = TrainSettings(patience=10, max_epochs=30, batch_size=100)
    linear, record = train_head(InMemoryRows(x[:300], y[:300]), x[300:], y[300:], DIM, 3, capped)
    assert record["stopped"] == "cap" and record["checks"] == 3   # 90 steps at most, 25 steps per check
    assert record["epochs"] == pytest.approx(3 * 25 / 3) and record["epochs"] <= 30   # 3 steps per pass
    assert record["val_loss"][-1] < record["val_loss"][0] and linear.n_outputs == 3


def test_fit_command_records_how_the_run_stopped(tmp_path):
    x, y = _rows(600, seed=3)
    z = 0.05 + 0.1 * y + 0.01 * np.random.default_rng(4).random(len(y))
    emb = write_table(embedding_table(x, z_spec=z), str(tmp_path / "emb.parquet"),
                      **{"galtools.model_sha256": ENCODER})
    result = run_tool("gal-photoz", "fit", emb, "--bins", "6", "--zmax", "0.3", "--max-epochs", "2",
                      "--patience", "5", "-o", tmp_path / "m.model", check=True)
    assert "stopped by its epoch cap (raise --max-epochs)" in result.stderr.decode()
    with np.load(tmp_path / "m.model", allow_pickle=False) as data:
        meta = json.loads(str(data["__galtools__"]))
    # two steps per pass: two epochs are four steps, one check (not two checks of 25 steps, 25 epochs)
    assert meta["training"]["stopped"] == "cap" and meta["training"]["checks"] == 1
    assert meta["training"]["epochs"] == 2 and meta["training"]["steps_per_check"] == 4
    assert meta["task"] == {"n_bins": 6, "zmax": 0.3}


# ------------------------------------------------------------------------------------------------ the apply loop

def _logit_task(linear, keep_embedding=True, unit=False):
    from galtools.heads.apply import Task

    return Task(lambda batch, x: {"logit0": pa.array(linear.logits(x)[:, 0], pa.float32())}, ("logit0",),
                keep_embedding=keep_embedding, unit=unit)


def _head(tmp_path, linear, sha=ENCODER):
    from galtools.heads import load_head, save_head

    path = str(tmp_path / "h.model")
    save_head(path, {}, tool="gal-classify", kind="classify-mlp", embedding_dim=DIM, model_sha256=sha,
              linear=linear, overwrite=True)
    return load_head(path, "gal-classify")


def _apply_to_file(path, head, task, out, metadata=None):
    """The apply loop as a command runs it: the input opened, the output opened with its metadata, a sink."""
    from galtools.heads.apply import apply_to, output_metadata
    from galtools.io import open_output

    with open_table(path) as table, open_output(out, metadata=output_metadata(table, metadata)) as sink:
        return apply_to(table, path, head, task, sink)


def test_apply_loop_carries_columns_and_matches_numpy(tmp_path):
    from galtools.heads.apply import apply_table
    from galtools.io.sink import CollectingSink

    linear = two_layers(5)
    x = np.random.default_rng(6).normal(size=(2500, DIM)).astype(np.float32)
    table = embedding_table(x, mag=np.arange(len(x), dtype=np.float64))
    table = table.append_column("image", pa.array([b"x"] * len(x)))          # never carried
    emb = write_table(table, str(tmp_path / "emb.parquet"), **{"galtools.model_sha256": ENCODER})
    out = str(tmp_path / "out.parquet")
    rows = _apply_to_file(emb, _head(tmp_path, linear), _logit_task(linear, keep_embedding=False), out,
                          {"galtools.test": "yes"})
    assert rows == len(x)
    collected = CollectingSink()                        # any sink: the same rows in memory
    assert apply_table(emb, _head(tmp_path, linear), _logit_task(linear, keep_embedding=False), collected) == len(x)
    with open_table(out) as result:
        got = result.read_all()
        assert result.metadata["galtools.test"] == "yes" and result.metadata["galtools.model_sha256"] == ENCODER
    assert got.column_names == ["object_id", "mag", "logit0"]
    assert got.column("object_id").to_pylist() == list(range(1000, 1000 + len(x)))
    hidden = np.maximum(x.astype(np.float64) @ linear.weights[0] + linear.biases[0], 0)
    expected = hidden @ linear.weights[1][:, 0] + linear.biases[1][0]
    assert np.allclose(got.column("logit0").to_numpy(), expected, rtol=1e-4, atol=1e-4)
    assert collected.table().equals(got)


def test_apply_loop_checks_embeddings_itself(tmp_path):
    from galtools.heads.apply import apply_table

    linear = two_layers()
    head = _head(tmp_path, linear)
    x = np.random.default_rng(0).normal(size=(30, DIM)).astype(np.float32)
    x[17, 2] = np.nan
    bad = write_table(embedding_table(x), str(tmp_path / "nan.parquet"), **{"galtools.model_sha256": ENCODER})
    with pytest.raises(BadData, match="object_id 1017"):
        _apply_to_file(bad, head, _logit_task(linear), str(tmp_path / "o.parquet"))
    x[17] = 0.0
    zero = write_table(embedding_table(x), str(tmp_path / "zero.parquet"), **{"galtools.model_sha256": ENCODER})
    with pytest.raises(BadData, match="all zeros .*object_id 1017"):
        apply_table(zero, head, _logit_task(linear, unit=True), None)
    other = write_table(embedding_table(x), str(tmp_path / "other.parquet"), **{"galtools.model_sha256": "ef" * 32})
    with pytest.raises(BadData, match="another encoder"):
        apply_table(other, head, _logit_task(linear), None)
    wide = write_table(embedding_table(np.ones((3, DIM + 1))), str(tmp_path / "wide.parquet"))
    with pytest.raises(BadData, match="7-d embeddings"):
        apply_table(wide, head, _logit_task(linear), None)
    assert not (tmp_path / "o.parquet").exists()


def test_apply_loop_on_an_empty_table_writes_the_schema(tmp_path):
    linear = two_layers()
    empty = write_table(embedding_table(np.zeros((0, DIM))), str(tmp_path / "empty.parquet"))
    out = str(tmp_path / "out.arrow")
    assert _apply_to_file(empty, _head(tmp_path, linear), _logit_task(linear), out) == 0
    with open_table(out) as result:
        assert result.schema.names == ["object_id", "embedding", "logit0"] and result.read_all().num_rows == 0


# ------------------------------------------------------------------------------------------------- the curve

def test_curve_rows_say_how_each_arm_stopped_and_use_one_split():
    from galtools.heads.curve import Arm, format_curve, make_split, run_curve

    split = make_split(200, [0.1, 0.5], 0.25, 3, 4, "classes", "more rows")
    assert len(split.test) == 50 and [count for _, count in split.sizes] == [15, 75]
    seen = []

    def trained(train, test):
        seen.append((train.tolist(), test.tolist()))
        return np.zeros(len(test)), {"stopped": "cap" if len(train) < 50 else "patience", "epochs": 12.5}

    rows = run_curve(split, [Arm("floor", lambda train, test: (np.ones(len(test)), None), baseline=True),
                             Arm("probe", trained)],
                     lambda predicted, test: {"n": len(test), "mean": float(np.mean(predicted))})
    assert [(r["method"], r["n_labels"], r["stopped"]) for r in rows] == [
        ("floor", 15, ""), ("probe", 15, "cap"), ("floor", 75, ""), ("probe", 75, "patience")]
    assert set(seen[0][0]) < set(seen[1][0]) and not set(seen[1][0]) & set(seen[1][1])   # nested, disjoint
    text = format_curve(rows, [("mean", "mean", ".3f")])
    assert text.splitlines()[2].split() == ["probe", "0.1", "15", "50", "0.000", "12.5", "cap"]


def test_photoz_curve_table_has_the_stopped_column(tmp_path):
    x, y = _rows(800, seed=8)
    z = 0.05 + 0.1 * y
    emb = write_table(embedding_table(x, z_spec=z), str(tmp_path / "emb.parquet"))
    result = run_tool("gal-photoz", "curve", emb, "--bins", "6", "--zmax", "0.3", "--fractions", "0.5,1",
                      "--max-epochs", "2", "--patience", "4", "--json", check=True)
    rows = json.loads(result.stdout)["rows"]
    assert {(r["method"], r["stopped"]) for r in rows} == {("median", ""), ("linear", "cap")}


# ------------------------------------------------------------------------------------------------------ devices

@pytest.mark.parametrize("text, kind, index", [("auto", "auto", None), ("CPU", "cpu", None), ("cuda", "cuda", None),
                                               ("cuda:2", "cuda", 2), ("gpu:1", "cuda", 1)])
def test_device_parse(text, kind, index):
    from galtools.device import parse_device

    spec = parse_device(text)
    assert (spec.kind, spec.index) == (kind, index)


@pytest.mark.parametrize("text", ["tpu", "cuda:x", "cpu:0", "tensorrt", ""])
def test_device_parse_refuses(text):
    from galtools.device import parse_device

    with pytest.raises(UsageProblem):
        parse_device(text)


def test_torch_device_without_a_gpu():
    import torch

    from galtools.device import torch_device

    assert torch_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        pytest.skip("a GPU is usable here: the refusal cannot be shown")
    assert torch_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceUnavailable):
        torch_device("cuda:0")


def test_parsing_a_device_imports_no_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from galtools.device import parse_device, cuda_available\n"
            "from galtools.search.exact import choose_backend\n"
            "assert parse_device('cuda:1').index == 1 and choose_backend('cpu', 1e12) == ('numpy', 'cpu')\n"
            "assert choose_backend('auto', 1.0) == ('numpy', 'cpu')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, env=tool_env())
    assert result.returncode == 0, result.stderr.decode()


# ------------------------------------------------------------------------------------------ baseline features

class _Source:
    """What a gal-train checkpoint says about its encoder, for a tiny random network."""

    def __init__(self, crop: int = 12):
        from galtools.preprocess import Preprocess

        self.crop = crop
        self.preprocess_json = Preprocess(("g", "r", "i"), (0.5, 1.0, 2.0), (0.1, 0.0, -0.1), (1.5, 1.0, 0.5)).to_json()

    def build(self, pretrained: bool):
        from galtools.models import build_encoder

        assert not pretrained
        return build_encoder("tiny", 3)


def test_pixel_pca_features_are_sklearns_pca_of_the_preprocessed_centre_crop():
    from sklearn.decomposition import PCA

    from galtools.heads.baselines import pixel_pca_features
    from galtools.preprocess import Preprocess

    source = _Source()
    images = np.random.default_rng(9).gamma(2.0, 1.0, size=(60, 3, 16, 16)).astype(np.float32)
    got = pixel_pca_features(images, source, 5)
    crop = images[:, :, 2:14, 2:14]
    pixels = Preprocess.from_json(source.preprocess_json).apply_numpy(crop).reshape(60, -1).astype(np.float64)
    want = PCA(n_components=5, svd_solver="full").fit_transform(pixels)
    assert got.shape == (60, 5)
    signs = np.sign(np.sum(got * want, axis=0))                  # each axis is defined up to its sign
    assert np.allclose(got * signs, want, atol=1e-3 * np.abs(want).max())
    assert pixel_pca_features(images[:4], source, 50).shape == (4, 3)     # at most n - 1 components


def test_random_encoder_features_depend_on_the_seed_only():
    from galtools.heads.baselines import random_encoder_features

    images = np.random.default_rng(2).normal(size=(10, 3, 16, 16)).astype(np.float32)
    a = random_encoder_features(images, _Source(), seed=1)
    b = random_encoder_features(images, _Source(), seed=1)
    c = random_encoder_features(images, _Source(), seed=2)
    assert a.shape[0] == 10 and np.all(np.isfinite(a))
    assert np.allclose(a, b, atol=1e-6) and not np.allclose(a, c, atol=1e-3)


# ------------------------------------------------------------------------------ curves with the baseline arms

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, trained_run):
    """What the curves' arms need: gal-sim cutouts (u,g,r,i,z, as conftest's trained_run), that shared two-step
    gal-train run (read only), and the cutouts' embeddings by its encoder."""
    folder = tmp_path_factory.mktemp("arms")
    run_tool("gal-sim", "-n", "160", "--seed", "3", "-q", "-o", folder / "sim.parquet", check=True)
    os.symlink(trained_run, folder / "run")
    run_tool("gal-embed", folder / "sim.parquet", "--model", folder / "run" / "encoder.onnx", "--device", "cpu",
             "-q", "-o", folder / "emb.parquet", check=True)
    return folder


def test_pca_sizes_and_an_arm_chosen_by_its_validation_loss():
    from galtools.heads.baselines import pca_sizes
    from galtools.heads.curve import chosen_by_validation, curve_row

    assert pca_sizes(128) == [8, 16, 32, 64, 128]
    assert pca_sizes(100) == [8, 16, 32, 64, 100] and pca_sizes(5) == [5] and pca_sizes(8) == [8]
    seen = []

    def candidate(k, val_loss):
        def run(train, test):
            seen.append((k, tuple(train), tuple(test)))
            return np.full(len(test), k), {"best_val_loss": val_loss, "stopped": "patience", "epochs": 3}
        return run

    # the lowest validation loss wins whatever the test rows would say; every candidate sees the same rows
    arm = chosen_by_validation("pixels-pca", {8: candidate(8, 0.9), 16: candidate(16, 0.4), 32: candidate(32, 0.6)},
                               "components")
    predictions, record = arm.run(np.array([0, 1, 2]), np.array([5, 6]))
    assert predictions.tolist() == [16, 16] and record["components"] == 16 and record["best_val_loss"] == 0.4
    assert {(t, s) for _, t, s in seen} == {((0, 1, 2), (5, 6))} and [k for k, _, _ in seen] == [8, 16, 32]
    row = curve_row(arm.method, 1.0, 3, {"n": 2, "accuracy": 0.5}, record)
    assert row["components"] == 16 and row["stopped"] == "patience"
    assert "components" not in curve_row("linear", 1.0, 3, {"n": 2, "accuracy": 0.5}, {"stopped": "cap", "epochs": 1})


ARMS = ("linear", "pixels-pca", "random-encoder", "finetune", "scratch")


@pytest.mark.slow
def test_both_curves_run_every_baseline_arm_by_the_same_rule(tiny_run):
    from galtools.heads.baselines import pca_sizes

    with open_table(str(tiny_run / "emb.parquet")) as table:
        dim = table.read_all().column("embedding").type.list_size
    common = ["--images", tiny_run / "sim.parquet", "--checkpoint", tiny_run / "run" / "last.pt", "--fractions", "1",
              "--max-epochs", "1", "--device", "cpu", "--json"]
    for tool, floor, task in (("gal-classify", "majority", ["--label", "morph_class"]),
                              ("gal-photoz", "median", ["--z-column", "z_true", "--bins", "8", "--zmax", "0.5"])):
        plot = tiny_run / f"{tool}-curve.png"
        result = run_tool(tool, "curve", tiny_run / "emb.parquet", *task, *common, "--plot", plot, check=True)
        rows = json.loads(result.stdout)["rows"]
        # one epoch allowed: every training arm hits its cap, and says so; the floor does not train
        assert {r["method"]: r["stopped"] for r in rows} == {floor: "", **{arm: "cap" for arm in ARMS}}, tool
        assert len(rows) == 1 + len(ARMS) and {r["fraction"] for r in rows} == {1.0}, tool
        assert len({r["n_test"] for r in rows}) == 1 and len({r["n_labels"] for r in rows}) == 1   # one test set
        for row in rows:           # every arm scored, by the task's own metrics
            if tool == "gal-photoz":
                assert np.isfinite(row["sigma_mad"]) and 0 <= row["eta"] <= 100, row
            else:
                assert 0 <= row["accuracy"] <= 1, row
        assert plot.stat().st_size > 0
        # the pixel baseline tried each number of components up to the representation's dimension, and says which
        pca = next(r for r in rows if r["method"] == "pixels-pca")
        assert pca["components"] in pca_sizes(dim), (tool, pca)
        # the networks check as the probe does: once per pass, but at least 25 steps apart, and never past
        # --max-epochs: here a pass is fewer than 25 steps, and one pass is all that is allowed
        for r in (r for r in rows if r["method"] in ("finetune", "scratch")):
            n_train = r["n_labels"] - min(50_000, max(1, round(0.1 * r["n_labels"])))   # the 10% validation rows
            assert math.ceil(n_train / 64) < 25 and r["epochs"] == pytest.approx(1.0, abs=0.01), (tool, r)


@pytest.fixture(scope="module")
def finetuned(tiny_run):
    """gal-photoz fit --finetune from the shared gal-train run, as a user runs it in the run's folder; then predict
    from embeddings of the pre-trained encoder (refused) and straight from cutouts."""
    fit = ["fit", "emb.parquet", "--z-column", "z_true", "--finetune", "--checkpoint", "run/last.pt", "--images",
           "sim.parquet", "--bins", "8", "--zmax", "0.5", "--max-epochs", "1", "--seed", "2", "--device", "cpu", "-q"]
    run_tool("gal-photoz", *fit, "-o", "finetuned.model", cwd=tiny_run, check=True)
    refused = run_tool("gal-photoz", "predict", "emb.parquet", "--model", "finetuned.model", "--truth", "z_true",
                       "-o", "ft-emb-refused.parquet", cwd=tiny_run)
    # predicting straight from cutouts: the model's own encoder embeds them on the way
    run_tool("gal-photoz", "predict", "sim.parquet", "--model", "finetuned.model", "--drop-embedding",
             "-o", "ft-pred.parquet", cwd=tiny_run, check=True)
    return tiny_run, refused


def test_finetuned_model_carries_its_encoder_and_predicts_cutouts(finetuned):
    import hashlib

    import onnxruntime as ort

    from galtools.io import images_of
    from galtools.photoz.bins import RedshiftBins, summarise_pdf
    from galtools.preprocess import Preprocess
    from galtools.train.data import centre_crop

    folder, _ = finetuned
    with np.load(folder / "finetuned.model", allow_pickle=False) as data:
        meta = json.loads(str(data["__galtools__"]))
        onnx_bytes = data["encoder_onnx"].tobytes()
        w0, b0 = data["w0"], data["b0"]
    assert meta["kind"] == "photoz-finetuned" and meta["mode"] == "finetune" and meta["seed"] == 2
    assert meta["model_sha256"] == hashlib.sha256(onnx_bytes).hexdigest()
    assert meta["checkpoint"] == "run/last.pt" and meta["input_size"] == 32
    # an independent path: ONNX Runtime on the centre crop + the stored preprocessing, then the head in numpy
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    preprocess = Preprocess.from_json(session.get_modelmeta().custom_metadata_map["galtools.preprocess"])
    with open_table(str(folder / "sim.parquet")) as table:
        sim, bands = table.read_all(), table.bands
    raw = images_of(sim)[:, [bands.index(b) for b in preprocess.bands]]
    features = session.run(["embedding"], {"image": preprocess.apply_numpy(centre_crop(raw, 32))})[0]
    logits = features @ w0 + b0
    pdf = np.exp(logits - logits.max(axis=1, keepdims=True))
    pdf /= pdf.sum(axis=1, keepdims=True)
    expected = summarise_pdf(pdf, RedshiftBins(8, 0.5).centres)[0]
    with open_table(str(folder / "ft-pred.parquet")) as table:
        predicted, metadata = table.read_all(), table.metadata
    assert predicted.num_rows == sim.num_rows and "embedding" not in predicted.column_names
    assert np.allclose(predicted.column("z_phot").to_numpy(), expected, atol=1e-5)
    assert metadata["galtools.model_sha256"] == meta["model_sha256"]


def test_finetuned_model_refuses_embeddings_of_the_pretrained_encoder(finetuned):
    folder, refused = finetuned
    assert refused.returncode == 65
    assert "embedded by another encoder" in refused.stderr.decode()
    assert not (folder / "ft-emb-refused.parquet").exists()
