"""The label-efficiency curve of the classifier: accuracy against the number of labels (as gal-photoz's curve).

The labelled rows are split once into a fixed test set and a training pool (gal-photoz's ``split_test`` and
``subset_sizes``); for each fraction, the first ``fraction x pool`` rows of the pool's seeded permutation train a
classifier (so the subsets are nested), and every classifier is scored on the same test set against the label (or
the majority vote).
``majority`` predicts the training subset's most frequent class: the floor any representation must beat.
"""
from __future__ import annotations

import logging

import numpy as np

from galtools.classify.fit import ClassifySettings, LabelledRows, fit_rows
from galtools.classify.metrics import classification_metrics
from galtools.photoz.curve import split_test, subset_sizes

log = logging.getLogger("galtools")


def curve_row(method: str, fraction: float, n_labels: int, truth: np.ndarray, predicted: np.ndarray,
              classes) -> dict:
    metrics = classification_metrics(truth, predicted, classes)
    return {"method": method, "fraction": fraction, "n_labels": n_labels, "n_test": metrics["n"],
            "accuracy": metrics["accuracy"], "balanced_accuracy": metrics["balanced_accuracy"]}


def label_curve(rows: LabelledRows, fractions: list[float], settings: ClassifySettings,
                test_fraction: float = 0.2) -> list[dict]:
    """Rows of the curve: the majority-class baseline and the classifier, for each usable fraction."""
    classes = rows.labels.classes
    pool, test = split_test(rows.count, test_fraction, settings.seed)
    truth = rows.truth
    method = "linear" if settings.hidden is None else f"mlp{settings.hidden}"
    curve = []
    # at least one label per class (and two, so that one can validate)
    sizes = subset_sizes(len(pool), fractions, max(len(classes), 2), "classes",
                         "use larger --fractions or more labelled rows")
    for fraction, count in sizes:
        train = np.sort(pool[:count])
        majority = int(np.argmax(np.bincount(truth[train], minlength=len(classes))))
        curve.append(curve_row("majority", fraction, count, truth[test], np.full(len(test), majority), classes))
        log.info(f"{method} classifier on {count} labels ({fraction:g} of {len(pool)})")
        model = fit_rows(rows.subset(train), settings)
        predicted = np.argmax(model.predict_proba(rows.x[test]), axis=1)
        curve.append(curve_row(method, fraction, count, truth[test], predicted, classes))
    return curve


def format_curve(rows: list[dict]) -> str:
    lines = [f"{'method':<10} {'fraction':>8} {'labels':>8} {'test':>6} {'accuracy':>9} {'balanced':>9}"]
    for row in rows:
        lines.append(f"{row['method']:<10} {row['fraction']:>8g} {row['n_labels']:>8} {row['n_test']:>6} "
                     f"{row['accuracy']:>9.4f} {row['balanced_accuracy']:>9.4f}")
    return "\n".join(lines)


def plot_curve(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for method in dict.fromkeys(row["method"] for row in rows):
        mine = [row for row in rows if row["method"] == method]
        labels = [row["n_labels"] for row in mine]
        style = "k:" if method == "majority" else "o-"
        axes[0].plot(labels, [row["accuracy"] for row in mine], style, label=method)
        axes[1].plot(labels, [row["balanced_accuracy"] for row in mine], style, label=method)
    for axis, what in zip(axes, ("accuracy", "balanced accuracy")):
        axis.set(xscale="log", xlabel="number of labels", ylabel=what, ylim=(0, 1.02))
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle("label efficiency (same test set for every point)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
