"""``gal-classify eval``: the metrics of a prediction table against the truth, as text, JSON and a figure.

The truth is the label column (hard labels) or the majority of the votes (soft labels) that the model was fitted
on, as ``gal-classify predict`` recorded it in the table's metadata; ``--label`` / ``--soft-labels`` name others.
With soft labels the report adds the accuracy on the confident rows, those whose winning vote fraction exceeds
``--confident`` (e.g. 0.8, as Galaxy Zoo's "clean" samples), and the log loss against the vote fractions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from galtools.classify.labels import (HARD, SOFT, LabelSpec, check_label_columns, class_indices, label_spec,
                                      label_strings, majority_vote, soft_targets, vote_fractions)
from galtools.classify.metrics import calibration, classification_metrics, log_loss
from galtools.classify.predict import PREDICTED_CLASS, classification_of, probability_column
from galtools.errors import BadData, UsageProblem
from galtools.io import display_name, open_table


@dataclass
class Predictions:
    classes: tuple[str, ...]
    probabilities: np.ndarray        # (n, classes) float64
    predicted: np.ndarray            # (n,) class index
    truth: LabelSpec                 # where the truth comes from
    labels: np.ndarray               # HARD: (n,) label strings (None: no label); SOFT: (n, classes) votes


def truth_spec(recorded: LabelSpec, label: str | None, soft_labels: str | None) -> LabelSpec:
    """The model's own labels, or the ones named on the command line (for the same classes)."""
    if not label and not soft_labels:
        return recorded
    wanted = label_spec(label, soft_labels, None)
    if wanted.kind == HARD:
        # a hard model keeps its mapping of values to classes (merges included); otherwise values are class names
        sources = recorded.sources if recorded.kind == HARD else {c: (c,) for c in recorded.classes}
        return LabelSpec(HARD, wanted.column, recorded.classes, sources)
    if set(wanted.classes) != set(recorded.classes):
        raise UsageProblem(f"--soft-labels names classes {', '.join(wanted.classes)}, but the model predicts "
                           f"{', '.join(recorded.classes)}", "name the vote columns as NAME=COLUMN for each class")
    return LabelSpec(SOFT, None, recorded.classes, wanted.sources)


def read_predictions(source: str, label: str | None = None, soft_labels: str | None = None) -> Predictions:
    name = display_name(source)
    with open_table(source) as table:
        recorded = classification_of(table.metadata)
        if recorded is None:
            raise BadData(f"{name} holds no gal-classify predictions (no galtools.classify metadata)",
                          "make it with gal-classify predict EMB --model MODEL")
        classes = tuple(recorded["labels"]["classes"])
        spec = truth_spec(LabelSpec.from_json(recorded["labels"]), label, soft_labels)
        check_label_columns(table.schema, spec, name)
        probability_names = [probability_column(c) for c in classes]
        for column in [PREDICTED_CLASS] + probability_names:
            if column not in table.schema.names:
                raise BadData(f"{name} has no '{column}' column", "make it with gal-classify predict")
        wanted = list(dict.fromkeys([PREDICTED_CLASS] + probability_names + spec.columns))
        probabilities, predicted, labels = [], [], []
        index_of = {c: i for i, c in enumerate(classes)}
        for batch in table.iter_batches(columns=wanted):
            probabilities.append(np.stack([np.asarray(batch.column(c).to_numpy(zero_copy_only=False), np.float64)
                                           for c in probability_names], axis=1))
            names = batch.column(PREDICTED_CLASS).to_pylist()
            predicted.append(np.array([index_of.get(v, -1) for v in names], dtype=np.int64))
            labels.append(label_strings(batch.column(spec.column)) if spec.kind == HARD
                          else vote_fractions(batch, spec, name))
    predicted = np.concatenate(predicted) if predicted else np.empty(0, np.int64)
    if np.any(predicted < 0):
        raise BadData(f"{name}: {int(np.sum(predicted < 0))} predicted classes are not among the model's "
                      f"({', '.join(classes)})", "evaluate the table gal-classify predict wrote, unchanged")
    empty_labels = np.empty(0, object) if spec.kind == HARD else np.empty((0, len(classes)))
    return Predictions(classes, np.concatenate(probabilities) if probabilities else np.empty((0, len(classes))),
                       predicted, spec, np.concatenate(labels) if labels else empty_labels)


def evaluate(predictions: Predictions, confident: float = 0.8, calibration_bins: int = 10) -> dict:
    """The report: counts, accuracy, balanced accuracy, per-class precision/recall, confusion matrix, log loss,
    calibration; for soft labels also the confident rows' metrics."""
    if not 0 <= confident < 1:
        raise UsageProblem(f"--confident must be in [0, 1), got {confident}")
    spec, classes = predictions.truth, predictions.classes
    if spec.kind == HARD:
        index = class_indices(predictions.labels, spec)
        usable = index >= 0
        truth, targets, vote = index[usable], index[usable], None
        n_no_label = int(sum(v is None for v in predictions.labels))
        skipped = {"n_no_label": n_no_label, "n_other_class": int((~usable).sum()) - n_no_label}
    else:
        targets, usable = soft_targets(predictions.labels)
        truth = majority_vote(targets)
        skipped = {"n_no_votes": int((~usable).sum())}
    if not usable.any():
        if spec.kind == HARD:
            values = sorted({v for name in classes for v in spec.sources[name]})
            raise BadData(f"no row of '{spec.column}' holds a class the model knows (of {len(usable)} rows; it "
                          f"expects {', '.join(values)})", "name the label column with --label")
        raise BadData(f"no row has votes in {', '.join(spec.columns)} (of {len(usable)} rows)",
                      "name the vote columns with --soft-labels")
    q = predictions.probabilities[usable]
    predicted = predictions.predicted[usable]
    report = {"truth": spec.to_json(), **classification_metrics(truth, predicted, classes), **skipped,
              "log_loss": log_loss(q, targets)}
    if spec.kind == SOFT:
        vote = targets[np.arange(len(predicted)), predicted]
        sure = targets.max(axis=1) > confident
        report["confident"] = {"threshold": confident,
                               **classification_metrics(truth[sure], predicted[sure], classes)}
    report["calibration"] = calibration(q[np.arange(len(predicted)), predicted], predicted == truth,
                                        calibration_bins, vote)
    return report


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.4f}"


def format_report(report: dict) -> str:
    truth = report["truth"]
    against = f"label '{truth['column']}'" if truth["kind"] == HARD else "majority vote of " + ", ".join(
        sorted({c for columns in truth["sources"].values() for c in columns}))
    skipped = sum(v for k, v in report.items() if k.startswith("n_no_") or k == "n_other_class")
    lines = [f"N = {report['n']} (truth: {against})" + (f"; {skipped} rows without a usable truth skipped"
                                                         if skipped else ""),
             f"accuracy          = {_fmt(report['accuracy'])}",
             f"balanced accuracy = {_fmt(report['balanced_accuracy'])}",
             f"log loss          = {_fmt(report['log_loss'])}",
             f"calibration error = {_fmt(report['calibration']['ece'])} (ECE, top-class probability)"]
    if "confident" in report:
        sure = report["confident"]
        lines.append(f"confident rows (winning vote > {sure['threshold']:g}): N = {sure['n']}, accuracy "
                     f"{_fmt(sure['accuracy'])}, balanced accuracy {_fmt(sure['balanced_accuracy'])}")
    width = max(12, *(len(row["class"]) for row in report["per_class"]))
    lines += ["", f"{'class':<{width}}  {'support':>7}  {'predicted':>9}  {'precision':>9}  {'recall':>7}  {'f1':>7}"]
    for row in report["per_class"]:
        lines.append(f"{row['class']:<{width}}  {row['support']:>7}  {row['predicted']:>9}  "
                     f"{_fmt(row['precision']):>9}  {_fmt(row['recall']):>7}  {_fmt(row['f1']):>7}")
    lines += ["", "confusion matrix (rows: truth, columns: predicted, in the order above)"]
    for row in report["confusion_matrix"]:
        lines.append("  " + " ".join(f"{count:>7}" for count in row))
    return "\n".join(lines)


def plot_report(report: dict, path: str) -> None:
    """Left: the confusion matrix (colour: fraction of each true class, text: counts); right: the reliability
    diagram of the top-class probability, with the number of rows per bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = [row["class"] for row in report["per_class"]]
    matrix = np.asarray(report["confusion_matrix"], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        fractions = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(5.0, 0.6 * len(classes) + 3)
    figure, (left, right) = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    image = left.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    for (a, b), count in np.ndenumerate(matrix):
        left.text(b, a, f"{int(count)}", ha="center", va="center", fontsize=8,
                  color="white" if fractions[a, b] > 0.5 else "black")
    left.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    left.set_yticks(range(len(classes)), classes)
    left.set(xlabel="predicted", ylabel="truth",
             title=f"accuracy {_fmt(report['accuracy'])}, balanced {_fmt(report['balanced_accuracy'])}")
    figure.colorbar(image, ax=left, fraction=0.046, label="fraction of the true class")

    bins = report["calibration"]["bins"]
    filled = [row for row in bins if row["n"]]
    right.plot([0, 1], [0, 1], "k:", lw=1, label="perfect calibration")
    right.plot([row["confidence"] for row in filled], [row["accuracy"] for row in filled], "o-",
               label="fraction correct")
    if filled and filled[0].get("vote_fraction") is not None:
        right.plot([row["confidence"] for row in filled], [row["vote_fraction"] for row in filled], "s--",
                   label="vote fraction of the predicted class")
    counts = right.twinx()
    counts.bar([(row["lo"] + row["hi"]) / 2 for row in bins], [row["n"] for row in bins],
               width=1 / len(bins), alpha=0.15, color="0.3")
    counts.set_ylabel("rows per bin")
    right.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability of the top class", ylabel="observed",
              title=f"calibration: ECE {_fmt(report['calibration']['ece'])}")
    right.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
