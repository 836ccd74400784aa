"""Classification metrics written out (numpy only), with the conventions of scikit-learn where it has them.

For true classes t_i and predicted classes p_i over C classes:
  confusion[a, b]    = number of rows with t = a and p = b (rows: truth, columns: prediction)
  accuracy           = trace(confusion) / n
  recall_c           = confusion[c, c] / sum_b confusion[c, b]      (undefined, NaN, when class c never occurs)
  precision_c        = confusion[c, c] / sum_a confusion[a, c]      (undefined, NaN, when c is never predicted)
  balanced accuracy  = mean of recall_c over the classes that occur
  log loss           = -mean_i sum_c y_ic log q_ic                   (y one-hot or vote fractions)
Calibration (reliability) of the top-class probability: rows binned by confidence q_max into equal bins of [0, 1];
in each bin the mean confidence against the fraction of rows predicted right; the expected calibration error is
ECE = sum_bins (n_bin / n) |accuracy_bin - confidence_bin|.
"""
from __future__ import annotations

import numpy as np

PROBABILITY_FLOOR = 1e-15    # log(0) guard in the log loss (scikit-learn clips the same way)


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    truth = np.asarray(truth, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    return np.bincount(truth * n_classes + predicted, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1), np.nan)


def classification_metrics(truth: np.ndarray, predicted: np.ndarray, classes) -> dict:
    """Accuracy, balanced accuracy, per-class precision/recall/F1 and the confusion matrix."""
    classes = list(classes)
    matrix = confusion_matrix(truth, predicted, len(classes))
    n = int(matrix.sum())
    hits = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted_count = matrix.sum(axis=0)
    recall = _ratio(hits, support)
    precision = _ratio(hits, predicted_count)
    f1 = _ratio(2 * precision * recall, precision + recall)
    per_class = [{"class": c, "support": int(support[i]), "predicted": int(predicted_count[i]),
                  "precision": _number(precision[i]), "recall": _number(recall[i]), "f1": _number(f1[i])}
                 for i, c in enumerate(classes)]
    occurring = support > 0
    return {"n": n,
            "accuracy": float(hits.sum() / n) if n else float("nan"),
            "balanced_accuracy": float(np.mean(recall[occurring])) if occurring.any() else float("nan"),
            "per_class": per_class,
            "confusion_matrix": matrix.tolist()}


def log_loss(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """-mean_i sum_c targets_ic log q_ic; ``targets`` (n, C) fractions, or (n,) class indices (one-hot)."""
    q = np.clip(np.asarray(probabilities, dtype=np.float64), PROBABILITY_FLOOR, 1.0)
    targets = np.asarray(targets)
    if targets.ndim == 1:
        return float(-np.mean(np.log(q[np.arange(len(targets)), targets])))
    return float(-np.mean(np.sum(targets * np.log(q), axis=1)))


def calibration(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10,
                vote: np.ndarray | None = None) -> dict:
    """The reliability curve of the top-class probability and its expected calibration error.

    ``vote`` (soft labels): the fraction of voters who chose the predicted class, averaged per bin as well."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    which = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        inside = which == b
        count = int(inside.sum())
        row = {"lo": b / n_bins, "hi": (b + 1) / n_bins, "n": count, "confidence": None, "accuracy": None}
        if count:
            row["confidence"] = float(confidence[inside].mean())
            row["accuracy"] = float(correct[inside].mean())
            ece += count / len(confidence) * abs(row["accuracy"] - row["confidence"])
        if vote is not None:
            row["vote_fraction"] = float(np.asarray(vote)[inside].mean()) if count else None
        bins.append(row)
    return {"bins": bins, "ece": float(ece) if len(confidence) else float("nan")}


def _number(value: float) -> float | None:
    """A float for JSON, None where undefined."""
    return None if not np.isfinite(value) else float(value)
