"""The label-efficiency curve of the classifier: accuracy against the number of labels, on galtools.heads' curve
driver (one fixed test set, nested training subsets, the same for every arm).

``majority`` predicts the training subset's most frequent class: the floor any representation must beat.  Every
classifier is scored on the same test set against the label (or the majority vote).
"""
from __future__ import annotations

import numpy as np

from galtools.classify.fit import ClassifySettings, LabelledRows, fit_rows
from galtools.classify.metrics import classification_metrics
from galtools.heads.curve import Arm, format_curve, make_split, plot_curve, run_curve

METRICS = [("accuracy", "accuracy", ".4f"), ("balanced_accuracy", "balanced", ".4f")]
PANELS = [("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy")]
BASELINES = ("majority",)


def label_curve(rows: LabelledRows, fractions: list[float], settings: ClassifySettings,
                test_fraction: float = 0.2) -> list[dict]:
    """Rows of the curve: the majority-class baseline and the classifier, for each usable fraction."""
    classes = rows.labels.classes
    truth = rows.truth
    # at least one label per class (and two, so that one can validate)
    split = make_split(rows.count, fractions, test_fraction, settings.seed, max(len(classes), 2), "classes",
                       "use larger --fractions or more labelled rows")

    def majority(train, test):
        return np.full(len(test), int(np.argmax(np.bincount(truth[train], minlength=len(classes))))), None

    def classifier(train, test):
        model = fit_rows(rows.subset(train), settings)
        return np.argmax(model.predict_proba(rows.x[test]), axis=1), model.info["training"]

    def score(predicted, test):
        metrics = classification_metrics(truth[test], predicted, classes)
        return {"n": metrics["n"], "accuracy": metrics["accuracy"],
                "balanced_accuracy": metrics["balanced_accuracy"]}

    method = "linear" if settings.hidden is None else f"mlp{settings.hidden}"
    return run_curve(split, [Arm("majority", majority, baseline=True), Arm(method, classifier)], score)


def format_classify_curve(rows: list[dict]) -> str:
    return format_curve(rows, METRICS)


def plot_classify_curve(rows: list[dict], path: str) -> None:
    plot_curve(rows, path, PANELS, BASELINES, ylim=(0, 1.02))
