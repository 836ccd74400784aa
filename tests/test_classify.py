"""gal-classify: soft-target cross-entropy, hard labels as its one-hot case, fit/predict/eval/curve as real
processes on real files, metrics against scikit-learn, errors with their documented exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from conftest import ROOT, assert_clean_error, run_tool, tool_env

CLASSES = ("edge_on", "elliptical", "spiral")     # sorted: the order gal-classify gives them
DIM = 16


def clustered_embeddings(n: int, seed: int, noise: float = 1.0, spread: float = 2.0):
    """Embeddings around three class centres (the centres fixed, the rows drawn with ``seed``)."""
    centres = np.random.default_rng(99).normal(size=(3, DIM)) * spread
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, n)
    return (centres[truth] + noise * rng.normal(size=(n, DIM))).astype(np.float32), truth


def crowd_votes(truth: np.ndarray, seed: int) -> np.ndarray:
    """Vote counts per class: mostly for the true class, with genuine disagreement (winning fraction 0.4-1)."""
    rng = np.random.default_rng(seed)
    fractions = 0.4 * np.eye(3)[truth] + 0.6 * rng.dirichlet([1.0, 1.0, 1.0], len(truth))
    voters = rng.integers(20, 60, len(truth))[:, None]
    return fractions * voters


def write_embeddings(path, x, truth, votes=None, sha="abc123", extra=None):
    from galtools.io import open_output, vector_column

    columns = {"object_id": pa.array(np.arange(len(x), dtype=np.int64) + 1000),
               "morph": pa.array(np.array(CLASSES, dtype=object)[truth])}
    if votes is not None:
        for i, name in enumerate(CLASSES):
            columns[f"n_{name}"] = pa.array(votes[:, i])
    columns.update(extra or {})
    columns["embedding"] = vector_column(x)
    with open_output(str(path), metadata={"galtools.model_sha256": sha}, tool="test") as out:
        out.write(pa.table(columns))
    return str(path)


def classify(*args, **kw):
    return run_tool("gal-classify", *args, **kw)


SOFT = ",".join(f"{name}=n_{name}" for name in CLASSES)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classify")
    x, truth = clustered_embeddings(600, seed=1)
    votes = crowd_votes(truth, seed=2)
    votes[:25] = np.nan          # no votes at all: skipped by --soft-labels
    votes[25:30] = 0.0           # nobody voted: skipped too
    train = write_embeddings(folder / "train.parquet", x, truth, votes)
    x_test, truth_test = clustered_embeddings(300, seed=3)
    test = write_embeddings(folder / "test.parquet", x_test, truth_test, crowd_votes(truth_test, seed=4))
    x_hard, truth_hard = clustered_embeddings(400, seed=5, noise=2.2)   # overlapping classes: metrics not all 1
    hard = write_embeddings(folder / "hard.parquet", x_hard, truth_hard)
    return {"folder": folder, "train": train, "test": test, "hard": hard, "x": x, "truth": truth, "votes": votes,
            "x_test": x_test, "truth_test": truth_test, "truth_hard": truth_hard}


@pytest.fixture(scope="module")
def models(data):
    folder = data["folder"]
    paths = {"hard": str(folder / "hard.model"), "soft": str(folder / "soft.model")}
    classify("fit", data["train"], "--label", "morph", "-o", paths["hard"], "--seed", "4", check=True)
    classify("fit", data["train"], "--soft-labels", SOFT, "-o", paths["soft"], "--seed", "4", check=True)
    return paths


def load(path):
    from galtools.classify.model import ClassifierModel

    return ClassifierModel.load(path)


def validation_rows(n_labelled, model):
    from galtools.heads.rows import validation_split

    return validation_split(n_labelled, model.info["settings"]["val_fraction"], model.info["seed"])


# ------------------------------------------------------------------------------------------------------ labels

def test_votes_are_renormalised_and_rows_without_votes_skipped():
    from galtools.classify.labels import label_spec, soft_targets, vote_fractions

    batch = pa.RecordBatch.from_pydict({
        "p_el": [6.0, None, 0.0, 0.2, None],
        "p_cw": [2.0, None, 0.0, 0.3, 4.0],
        "p_acw": [2.0, None, 0.0, 0.1, None],
        "p_edge": [10.0, None, 0.0, 0.0, None]})
    spec = label_spec(None, "elliptical=p_el,spiral=p_cw+p_acw,p_edge", None)
    assert spec.classes == ("elliptical", "spiral", "p_edge")
    targets, used = soft_targets(vote_fractions(batch, spec, "t"))
    assert used.tolist() == [True, False, False, True, True]     # all null, and all zero: no votes
    np.testing.assert_allclose(targets, [[0.3, 0.2, 0.5], [1 / 3, 2 / 3, 0.0], [0.0, 1.0, 0.0]])


def test_label_specifications_and_their_mistakes():
    from galtools.classify.labels import class_indices, label_spec, label_strings
    from galtools.errors import UsageProblem

    spec = label_spec("gz1_label", None, "elliptical,spiral=spiral_clockwise+spiral_anticlockwise,edge_on")
    values = label_strings(pa.array(["spiral_anticlockwise", "edge_on", None, "unknown", "elliptical"]))
    assert class_indices(values, spec).tolist() == [1, 2, -1, -1, 0]
    assert label_strings(pa.array([3, None, 10])).tolist() == ["3", None, "10"]
    assert label_strings(pa.array([1.0, float("nan")])).tolist() == ["1", None]
    for args in [("a", "b", None), (None, None, None), ("a", None, "x"), ("a", None, "x,x"), ("a", None, "x=a,y=a"),
                 (None, "p_a", None), ("a", None, "x=,y")]:
        with pytest.raises(UsageProblem):
            label_spec(*args)


# -------------------------------------------------------------------------------------------------- the loss

@pytest.mark.slow
def test_soft_label_loss_is_the_hand_written_soft_target_cross_entropy(data, models):
    model = load(models["soft"])
    used = np.isfinite(data["votes"]).all(axis=1) & (data["votes"].sum(axis=1) > 0)
    targets = data["votes"][used] / data["votes"][used].sum(axis=1, keepdims=True)
    x = data["x"][used]
    assert model.info["n_train"] + model.info["n_val"] == used.sum() == 570
    val = validation_rows(len(x), model)
    q = model.predict_proba(x[val]).astype(np.float64)
    by_hand = -np.mean(np.sum(targets[val] * np.log(q), axis=1))            # -1/N sum_i sum_c t_ic log q_ic
    assert model.info["training"]["best_val_loss"] == pytest.approx(by_hand, abs=2e-4)
    majority_only = -np.mean(np.log(q[np.arange(val.sum()), targets[val].argmax(axis=1)]))
    assert abs(by_hand - majority_only) > 0.05      # the votes' disagreement is in the loss, not just the winner


@pytest.mark.slow
def test_hard_labels_are_the_one_hot_special_case(data, models, tmp_path):
    one_hot = {f"is_{name}": pa.array((data["truth"] == i).astype(np.float64)) for i, name in enumerate(CLASSES)}
    path = write_embeddings(tmp_path / "onehot.parquet", data["x"], data["truth"], extra=one_hot)
    from galtools.classify.fit import ClassifySettings, fit_table
    from galtools.classify.labels import label_spec

    # Few enough checks that each one improves the validation loss by far more than the early-stopping step
    # (1e-4) and than the rounding differences of the two target encodings: both runs make the same decisions.
    # (540 training rows in batches of 512: 2 steps per pass, 25 per check; 75 passes are 6 checks.)
    settings = ClassifySettings(seed=4, max_epochs=75, patience=6)
    soft = fit_table(path, label_spec(None, ",".join(f"{n}=is_{n}" for n in CLASSES), None), settings)
    hard_short = fit_table(path, label_spec("morph", None, None), settings)
    losses = hard_short.info["training"]["val_loss"]
    assert len(losses) >= 3 and (np.diff(losses) < -1e-3).all(), losses
    assert hard_short.classes == soft.classes == CLASSES
    for a, b in zip(hard_short.weights + hard_short.biases, soft.weights + soft.biases):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)   # float32 rounding, accumulated over the steps
    hard = load(models["hard"])     # fitted by the real command with --label morph --seed 4
    assert hard.classes == CLASSES
    val = validation_rows(len(data["x"]), hard)
    q = hard.predict_proba(data["x"][val]).astype(np.float64)
    by_hand = -np.mean(np.log(q[np.arange(val.sum()), data["truth"][val]]))   # -1/N sum_i log q_i,label_i
    assert hard.info["training"]["best_val_loss"] == pytest.approx(by_hand, abs=2e-4)


def test_soft_fit_reaches_the_soft_optimum_not_the_majority_one():
    """Rows that look the same (one group) with varying votes: the cross-entropy optimum predicts the group's mean
    vote fractions, whereas training on the majority vote would predict how often each class wins."""
    from galtools.classify.fit import ClassifySettings, LabelledRows, fit_rows
    from galtools.classify.labels import SOFT, LabelSpec

    rng = np.random.default_rng(0)
    group = np.repeat(np.arange(4), 150)
    x = np.eye(4, dtype=np.float32)[group]
    means = np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.3, 0.2, 0.5], [0.34, 0.33, 0.33]])
    targets = np.array([rng.dirichlet(40 * means[g]) for g in group], dtype=np.float32)
    spec = LabelSpec(SOFT, None, ("a", "b", "c"), {"a": ("a",), "b": ("b",), "c": ("c",)})
    model = fit_rows(LabelledRows(x, targets, spec), ClassifySettings(seed=1))
    predicted = model.predict_proba(np.eye(4, dtype=np.float32))
    observed = np.array([targets[group == g].mean(axis=0) for g in range(4)])
    np.testing.assert_allclose(predicted, observed, atol=0.03)
    wins = np.array([np.bincount(targets[group == g].argmax(axis=1), minlength=3) / 150 for g in range(3)])
    assert np.abs(predicted[:3] - wins).max() > 0.15


def test_mlp_head_learns_and_survives_its_file(data, tmp_path):
    from galtools.classify.fit import ClassifySettings, LabelledRows, fit_rows
    from galtools.classify.labels import HARD, LabelSpec

    spec = LabelSpec(HARD, "morph", CLASSES, {c: (c,) for c in CLASSES})
    model = fit_rows(LabelledRows(data["x"], data["truth"], spec, "abc123"), ClassifySettings(hidden=8, seed=2))
    assert model.kind == "classify-mlp" and [w.shape for w in model.weights] == [(DIM, 8), (8, 3)]
    model.save(str(tmp_path / "mlp.model"))
    again = load(tmp_path / "mlp.model")
    assert again.kind == "classify-mlp" and again.classes == CLASSES and again.model_sha256 == "abc123"
    np.testing.assert_array_equal(again.predict_proba(data["x_test"]), model.predict_proba(data["x_test"]))
    assert (again.predict_proba(data["x_test"]).argmax(axis=1) == data["truth_test"]).mean() > 0.97


# ---------------------------------------------------------------------------------------- predict, eval, curve

def read_json(result):
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


@pytest.mark.slow
def test_separable_classes_are_learnt_and_eval_agrees_with_sklearn(data, models, tmp_path):
    pred = tmp_path / "pred.parquet"
    classify("predict", data["test"], "--model", models["hard"], "-o", pred, check=True)
    table = pq.read_table(pred)
    assert table.column_names[:2] == ["object_id", "morph"] and "embedding" not in table.column_names
    assert table.column_names[-5:] == ["predicted_class", "predicted_prob"] + [f"prob_{c}" for c in CLASSES]
    probabilities = np.stack([table[f"prob_{c}"].to_numpy() for c in CLASSES], axis=1)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    truth, predicted = table["morph"].to_pylist(), table["predicted_class"].to_pylist()
    assert skm.accuracy_score(truth, predicted) > 0.97

    # overlapping classes: predict | eval in a real pipe, every number against scikit-learn
    model_path = models["hard"]
    command = (f"{sys.executable} -m galtools.cli.classify predict {data['hard']} --model {model_path} --keep-embedding"
               f" | tee {tmp_path}/hard-pred.arrows | {sys.executable} -m galtools.cli.classify eval - --json "
               f"--plot {tmp_path}/eval.png")
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, env=tool_env(), cwd=ROOT)
    report = read_json(result)
    import pyarrow.ipc as ipc

    table = ipc.open_stream(open(tmp_path / "hard-pred.arrows", "rb").read()).read_all()
    assert "embedding" in table.column_names
    truth, predicted = table["morph"].to_pylist(), table["predicted_class"].to_pylist()
    probabilities = np.stack([table[f"prob_{c}"].to_numpy() for c in CLASSES], axis=1)
    assert 0.6 < report["accuracy"] < 0.97
    assert report["n"] == 400
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(truth, predicted))
    assert report["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(truth, predicted))
    precision, recall, f1, support = skm.precision_recall_fscore_support(truth, predicted, labels=list(CLASSES),
                                                                        zero_division=np.nan)
    for i, row in enumerate(report["per_class"]):
        assert row["class"] == CLASSES[i] and row["support"] == support[i]
        assert row["precision"] == pytest.approx(precision[i])
        assert row["recall"] == pytest.approx(recall[i])
        assert row["f1"] == pytest.approx(f1[i])
    assert report["confusion_matrix"] == skm.confusion_matrix(truth, predicted, labels=list(CLASSES)).tolist()
    assert report["log_loss"] == pytest.approx(skm.log_loss(truth, probabilities, labels=list(CLASSES)), rel=1e-5)
    confidence = probabilities.max(axis=1)
    correct = np.array(truth) == np.array(predicted)
    frac_correct, mean_confidence = calibration_curve(correct, confidence, n_bins=10, strategy="uniform")
    filled = [row for row in report["calibration"]["bins"] if row["n"]]
    np.testing.assert_allclose([row["accuracy"] for row in filled], frac_correct)
    np.testing.assert_allclose([row["confidence"] for row in filled], mean_confidence, rtol=1e-6)
    ece = sum(row["n"] / 400 * abs(row["accuracy"] - row["confidence"]) for row in filled)
    assert report["calibration"]["ece"] == pytest.approx(ece)

    from PIL import Image

    with Image.open(tmp_path / "eval.png") as picture:
        picture.load()
        assert picture.size[0] > 600 and picture.size[1] > 300


@pytest.mark.slow
def test_soft_model_eval_scores_majority_vote_and_confident_rows(data, models, tmp_path):
    pred = tmp_path / "soft-pred.parquet"
    classify("predict", data["test"], "--model", models["soft"], "-o", pred, check=True)
    report = read_json(classify("eval", pred, "--json", "--confident", "0.7"))
    table = pq.read_table(pred)
    votes = np.stack([table[f"n_{c}"].to_numpy() for c in CLASSES], axis=1)
    fractions = votes / votes.sum(axis=1, keepdims=True)
    majority = np.array(CLASSES)[fractions.argmax(axis=1)]
    predicted = np.array(table["predicted_class"].to_pylist())
    assert report["truth"]["kind"] == "soft" and report["n"] == 300
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(majority, predicted))
    sure = fractions.max(axis=1) > 0.7
    assert 20 < sure.sum() < 300
    assert report["confident"]["n"] == sure.sum()
    assert report["confident"]["accuracy"] == pytest.approx(skm.accuracy_score(majority[sure], predicted[sure]))
    assert report["confident"]["accuracy"] > 0.95
    probabilities = np.stack([table[f"prob_{c}"].to_numpy() for c in CLASSES], axis=1)
    assert report["log_loss"] == pytest.approx(-np.mean(np.sum(fractions * np.log(probabilities), axis=1)), rel=1e-5)
    # the same predictions scored against the hard label column instead
    hard = read_json(classify("eval", pred, "--json", "--label", "morph"))
    assert hard["accuracy"] == pytest.approx(skm.accuracy_score(table["morph"].to_pylist(), predicted))
    text = classify("eval", pred).stdout.decode()
    assert "confident rows (winning vote > 0.8)" in text and "balanced accuracy" in text


@pytest.mark.slow
def test_curve_rises_above_the_majority_baseline(data, tmp_path):
    result = classify("curve", data["train"], "--label", "morph", "--fractions", "0.02,1", "--json",
                      "-o", tmp_path / "curve.parquet", "--plot", tmp_path / "curve.png")
    curve = read_json(result)
    rows = {(row["method"], row["fraction"]): row for row in curve["rows"]}
    n_test = round(0.2 * 600)
    assert rows[("linear", 1.0)]["n_labels"] == 600 - n_test and rows[("linear", 1.0)]["n_test"] == n_test
    assert rows[("linear", 0.02)]["n_labels"] == round(0.02 * (600 - n_test))
    assert rows[("linear", 1.0)]["accuracy"] > 0.95
    assert rows[("majority", 1.0)]["accuracy"] < 0.5 and rows[("majority", 1.0)]["balanced_accuracy"] == 1 / 3
    assert pq.read_table(tmp_path / "curve.parquet").num_rows == 4
    # 0.002 of 480 is 1 label, fewer than the 3 classes: skipped with a warning; nothing usable is an error
    skipped = classify("curve", data["train"], "--label", "morph", "--fractions", "0.002,0.02", "--json")
    assert "fraction 0.002 gives 1 labels, fewer than the 3 classes: skipped" in skipped.stderr.decode()
    assert {row["fraction"] for row in read_json(skipped)["rows"]} == {0.02}
    nothing = classify("curve", data["train"], "--label", "morph", "--fractions", "0.002")
    assert nothing.returncode == 65 and "no fraction gives at least 3 labels" in nothing.stderr.decode()
    assert "use larger --fractions or more labelled rows" in nothing.stderr.decode()


# ------------------------------------------------------------------------------------------------------ errors

def invoke(*args):
    """In-process run (click's CliRunner) for error cases that need no separate process."""
    from conftest import cli_runner

    from galtools.cli.classify import cli

    result = cli_runner().invoke(cli, [str(a) for a in args])
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout_bytes, result.stderr_bytes)


@pytest.mark.slow
def test_errors_are_one_line_with_documented_codes(data, models, tmp_path):
    # two as real processes, the rest in-process
    assert_clean_error(classify("fit", data["train"], "--label", "shape", "-o", tmp_path / "m.model"),
                       65, "no 'shape' column", "--label")
    assert not (tmp_path / "m.model").exists()
    from galtools.heads import save_head

    photoz = str(tmp_path / "photoz.model")
    save_head(photoz, {"w0": np.zeros((DIM, 4), np.float32)}, tool="gal-photoz", kind="photoz-linear",
              embedding_dim=DIM, model_sha256=None)
    assert_clean_error(classify("predict", data["test"], "--model", photoz, "-o", tmp_path / "p.parquet"),
                       65, "gal-photoz model, not a gal-classify one")

    assert_clean_error(invoke("fit", data["train"], "--soft-labels", "a=n_spiral,b=nope", "-o", tmp_path / "m"),
                       65, "no 'nope' column")
    x = data["x"][:50].copy()
    x[7, 3] = np.nan
    nan_table = write_embeddings(tmp_path / "nan.parquet", x, data["truth"][:50])
    assert_clean_error(invoke("fit", nan_table, "--label", "morph", "-o", tmp_path / "m.model"), 65, "NaN")
    assert_clean_error(invoke("predict", nan_table, "--model", models["hard"], "-o", tmp_path / "p.parquet"),
                       65, "NaN", "object_id 1007")
    wide = write_embeddings(tmp_path / "wide.parquet", np.zeros((5, DIM + 4), np.float32) + 1, np.zeros(5, int))
    assert_clean_error(invoke("predict", wide, "--model", models["hard"], "-o", tmp_path / "p.parquet"),
                       65, "20-d embeddings", "16-d")
    other = write_embeddings(tmp_path / "other.parquet", data["x_test"], data["truth_test"], sha="def456")
    assert_clean_error(invoke("predict", other, "--model", models["hard"], "-o", tmp_path / "p.parquet"),
                       65, "another encoder")
    assert not (tmp_path / "p.parquet").exists()
    assert_clean_error(invoke("predict", data["test"], "--model", tmp_path / "none.model", "-o", tmp_path / "p"),
                       66, "no such model")
    assert_clean_error(invoke("fit", data["train"], "--label", "morph", "--soft-labels", SOFT, "-o", "x"),
                       2, "not both")
    assert_clean_error(invoke("fit", data["train"], "--label", "morph", "-o", models["hard"]), 1,
                       "already exists", "--overwrite")
    assert_clean_error(invoke("eval", data["test"]), 65, "no gal-classify predictions")
    assert_clean_error(invoke("fit", data["train"], "--label", "morph", "-o", tmp_path / "no" / "m.model"),
                       74, "does not exist")


def test_help_is_fast_and_imports_no_torch():
    code = ("import sys; from galtools.cli.classify import main; from galtools.cli.map import main as m; "
            "assert not {'torch', 'umap', 'matplotlib', 'sklearn'} & set(sys.modules), sys.modules.keys()")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=tool_env())
    for sub in ("fit", "predict", "eval", "curve"):
        result = classify(sub, "--help")
        assert result.returncode == 0 and b"Example:" in result.stdout


def test_epochs_reported_stay_within_max_epochs(data, tmp_path):
    """A few hundred rows take fewer steps per pass than one validation check (25 steps): the cap counted checks
    as epochs, and '--max-epochs 100' trained (and said) 225 epochs."""
    model = tmp_path / "capped.model"
    result = classify("fit", data["train"], "--label", "morph", "--max-epochs", "10", "--patience", "1000",
                      "--batch-size", "64", "--seed", "3", "-o", model)
    assert result.returncode == 0, result.stderr.decode()
    info = load(model).info
    training, steps_per_pass = info["training"], int(np.ceil(info["n_train"] / 64))
    assert training["stopped"] == "cap" and 0 < training["epochs"] <= 10, training
    steps = training["checks"] * training["steps_per_check"]
    assert steps <= 10 * steps_per_pass and training["epochs"] == pytest.approx(steps / steps_per_pass, abs=0.01)
    assert f"({training['epochs']:g} epochs); stopped by its epoch cap" in result.stderr.decode()
