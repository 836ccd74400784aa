"""A third head task, written in this one module as docs/heads.md tells a newcomer to: a binary "is merger"
classifier on a boolean column. It implements galtools.heads.task.HeadTask (labels, loss, metrics, report) and
nothing else; fitting, the model file, the label curve, applying it through a sink and its evaluation are the
shared code gal-photoz and gal-classify run. Checked against the rule that made the labels and scikit-learn."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from conftest import write_table
from galtools.errors import BadData
from galtools.heads import load_head
from galtools.heads.apply import Task, apply_table
from galtools.heads.source import check_numeric_column
from galtools.heads.task import Evaluation, HeadModel, HeadTask, fit_table, label_curve, read_rows
from galtools.io import open_table, vector_column
from galtools.io.sink import CollectingSink

DIM = 8
LABEL = "is_merger"


class MergerTask(HeadTask):
    """Is the galaxy a merger? Labels: a boolean (or 0/1) column, null rows not used."""

    name, tool, outputs, floor_method = "merger", "gal-merger", "classes", "majority"
    curve_metrics = (("accuracy", "accuracy", ".4f"), ("recall", "recall", ".4f"))
    curve_panels = (("accuracy", "accuracy"),)

    # -- labels
    label_columns = [LABEL]

    def check_columns(self, schema, name):
        check_numeric_column(schema, LABEL, name, f"name the merger flags {LABEL}", booleans=True)

    def labels_of(self, batch, name):
        column = batch.column(LABEL)
        flags = np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False))
        keep = np.flatnonzero(np.isfinite(flags))
        if np.any((flags[keep] != 0) & (flags[keep] != 1)):
            raise BadData(f"{name}: '{LABEL}' holds values other than 0 and 1", "give merger flags")
        return keep, flags[keep].astype(np.int64)

    # -- loss: two classes, cross-entropy against the class index
    def n_outputs(self, rows):
        return 2

    # -- metrics
    def point(self, pdf):
        return (pdf[:, 1] > 0.5).astype(np.int64)

    def floor(self, truth, count):
        return np.full(count, int(np.argmax(np.bincount(truth, minlength=2))))

    def metrics(self, predicted, truth):
        mergers = truth == 1
        return {"n": len(truth), "accuracy": float(np.mean(predicted == truth)),
                "recall": float(np.mean(predicted[mergers] == 1)) if mergers.any() else float("nan")}

    # -- report
    def predictions(self, model, **options):
        return Task(lambda batch, x: {"p_merger": pa.array(model.predict_pdf(x)[:, 1], pa.float32())},
                    ("p_merger",), keep_embedding=False)

    def evaluate(self, path, **options):
        with open_table(path) as table:
            data = table.read_all(columns=["p_merger", LABEL])
        flags = data.column(LABEL).cast(pa.float64()).to_numpy(zero_copy_only=False)
        usable = np.isfinite(flags)
        predicted = (data.column("p_merger").to_numpy()[usable] > 0.5).astype(np.int64)
        report = {"task": self.name, **self.metrics(predicted, flags[usable].astype(np.int64)),
                  "n_skipped": int((~usable).sum())}
        return Evaluation(self, report)

    def format_report(self, evaluation):
        return f"N = {evaluation.report['n']}, accuracy = {evaluation.report['accuracy']:.4f}"


def merger_table(n: int, seed: int) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Embeddings whose merger flag is the sign of one fixed direction (a margin kept clear), some flags null."""
    rng = np.random.default_rng(seed)
    direction = np.linspace(1.0, -1.0, DIM) / np.linalg.norm(np.linspace(1.0, -1.0, DIM))
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    side = x @ direction
    x[np.abs(side) < 0.3] += (0.6 * np.sign(side[np.abs(side) < 0.3]))[:, None] * direction.astype(np.float32)
    flags = (x @ direction > 0).astype(np.int64)
    known = rng.random(n) > 0.1                      # 10% of the rows have no flag
    column = pa.array(flags.astype(bool), mask=~known)
    table = pa.table({"object_id": np.arange(n, dtype=np.int64), LABEL: column, "embedding": vector_column(x)})
    return table, flags, known


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    folder = tmp_path_factory.mktemp("merger")
    train, train_flags, train_known = merger_table(600, seed=1)
    test, test_flags, test_known = merger_table(300, seed=2)
    return {"train": write_table(train, str(folder / "train.parquet")), "train_flags": train_flags,
            "train_known": train_known, "test": write_table(test, str(folder / "test.parquet")),
            "test_flags": test_flags, "test_known": test_known, "folder": folder}


def test_a_third_task_fits_saves_applies_and_evaluates_through_the_shared_code(tables):
    from sklearn.metrics import accuracy_score

    from galtools.heads.train import TrainSettings

    task = MergerTask()
    model = fit_table(task, tables["train"], TrainSettings(seed=3))
    assert model.kind == "merger-linear" and model.linear.n_outputs == 2
    assert model.info["n_train"] + model.info["n_val"] == int(tables["train_known"].sum())   # null flags unused
    assert model.info["training"]["stopped"] in ("patience", "cap")
    path = str(tables["folder"] / "merger.model")
    model.save(path)
    head = load_head(path, "gal-merger", ("merger-linear",))
    again = HeadModel.from_head(head)
    assert again.task == {} and again.info["seed"] == 3
    # applied through a sink, batch by batch: the probabilities are the saved layers' softmax (numpy reference)
    out = CollectingSink()
    rows = apply_table(tables["test"], head, task.predictions(again), out)
    result = out.table()
    assert rows == 300 and result.column_names == ["object_id", LABEL, "p_merger"]
    with open_table(tables["test"]) as table:
        x = np.asarray(table.read_all().column("embedding").combine_chunks().flatten().to_numpy()).reshape(-1, DIM)
    logits = x.astype(np.float64) @ again.weights[0] + again.biases[0]
    expected = 1 / (1 + np.exp(logits[:, 0] - logits[:, 1]))
    np.testing.assert_allclose(result.column("p_merger").to_numpy(), expected, atol=1e-5)
    # the evaluation of the prediction table: the flags known, scored as scikit-learn scores them
    pred_path = write_table(result, str(tables["folder"] / "pred.parquet"))
    report = task.evaluate(pred_path).report
    known = tables["test_known"]
    predicted = (expected[known] > 0.5).astype(int)
    assert report["n"] == known.sum() and report["n_skipped"] == (~known).sum()
    assert report["accuracy"] == pytest.approx(accuracy_score(tables["test_flags"][known], predicted))
    assert report["accuracy"] > 0.95      # a separable rule with a margin: any working probe finds it


def test_a_third_task_runs_the_label_curve(tables):
    from galtools.heads.source import open_embeddings
    from galtools.heads.train import TrainSettings

    task = MergerTask()
    with open_embeddings(tables["train"]) as source:
        rows = read_rows(task, source)
    points = label_curve(task, rows, [0.1, 1.0], TrainSettings(seed=5), test_fraction=0.25)
    assert [(p["method"], p["fraction"]) for p in points] == [
        ("majority", 0.1), ("linear", 0.1), ("majority", 1.0), ("linear", 1.0)]
    assert len({p["n_test"] for p in points}) == 1
    flags = rows.targets
    order = np.random.default_rng([5, 11]).permutation(rows.count)      # the curve's documented split
    test, pool = order[:points[0]["n_test"]], order[points[0]["n_test"]:]
    for floor, probe in zip(points[::2], points[1::2]):
        # the floor predicts the training subset's majority everywhere: its accuracy is that class's test share
        majority = np.argmax(np.bincount(flags[pool[:floor["n_labels"]]], minlength=2))
        assert floor["n_labels"] == round(floor["fraction"] * len(pool))
        assert floor["accuracy"] == pytest.approx(np.mean(flags[test] == majority))
        assert probe["accuracy"] > floor["accuracy"] + 0.2 and probe["stopped"] in ("patience", "cap")
    assert "majority" in task.format_curve(points)


def test_a_third_task_checks_its_labels(tables, tmp_path):
    from galtools.heads.train import TrainSettings

    bad, _, _ = merger_table(50, seed=4)
    bad = bad.set_column(1, LABEL, pa.array(np.arange(50) % 3, pa.int64()))
    path = write_table(bad, str(tmp_path / "bad.parquet"))
    with pytest.raises(BadData, match="other than 0 and 1"):
        fit_table(MergerTask(), path, TrainSettings())
    unlabelled = write_table(bad.drop_columns([LABEL]), str(tmp_path / "none.parquet"))
    with pytest.raises(BadData, match=f"no '{LABEL}' column"):
        fit_table(MergerTask(), unlabelled, TrainSettings())


@pytest.mark.slow
def test_both_tools_report_in_one_shape_and_keep_their_old_keys(tables, tmp_path):
    """gal-photoz eval and gal-classify eval --json: the shared keys (task, n, n_skipped) beside each one's own."""
    import json

    from conftest import run_tool

    with open_table(tables["train"]) as table:
        data = table.read_all()
    flags = np.asarray(data.column(LABEL).cast(pa.float64()).to_numpy(zero_copy_only=False))
    z = np.where(np.isnan(flags), np.nan, 0.05 + 0.2 * np.nan_to_num(flags))
    data = data.append_column("z_spec", pa.array(z)).append_column("morph", pa.array(
        np.where(np.isnan(flags), None, np.where(flags == 1, "merger", "single")).tolist(), pa.string()))
    emb = write_table(data, str(tmp_path / "emb.parquet"))
    reports = {}
    for tool, fit in (("gal-photoz", ["--bins", "8", "--zmax", "0.4"]), ("gal-classify", ["--label", "morph"])):
        model, pred = tmp_path / f"{tool}.model", tmp_path / f"{tool}.parquet"
        run_tool(tool, "fit", emb, *fit, "--max-epochs", "3", "-o", model, check=True)
        run_tool(tool, "predict", emb, "--model", model, "-o", pred, check=True)
        reports[tool] = json.loads(run_tool(tool, "eval", pred, "--json", check=True).stdout)
    unlabelled = int(np.isnan(flags).sum())
    assert reports["gal-photoz"]["task"] == "photoz" and reports["gal-classify"]["task"] == "classify"
    for report in reports.values():
        assert report["n"] == len(flags) - unlabelled and report["n_skipped"] == unlabelled
    assert {"bias", "sigma_mad", "eta", "by_z"} <= set(reports["gal-photoz"])
    assert {"accuracy", "balanced_accuracy", "n_no_label", "n_other_class"} <= set(reports["gal-classify"])
    assert reports["gal-classify"]["n_no_label"] == unlabelled
