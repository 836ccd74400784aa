"""Detection metrics written out (numpy only): AUROC, average precision, TPR at a fixed FPR, and the trust curve.

Higher score = more anomalous; ``truth`` is 1 (True) for an anomaly.  Ties are handled exactly: AUROC counts a
tied (anomaly, normal) pair as one half (the Mann-Whitney U statistic with mid-ranks); precision and recall are
taken at each distinct score, as scikit-learn does.
"""
from __future__ import annotations

import numpy as np

from galtools.errors import BadData


def _check(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth).astype(bool)
    positives = int(truth.sum())
    if positives == 0 or positives == len(truth):
        kind = "no anomalies" if positives == 0 else "only anomalies"
        raise BadData(f"the truth column holds {kind} ({len(truth)} rows)",
                      "detection metrics need both anomalies and normal objects")
    return scores, truth


def mid_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    first_of_group = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    group = np.cumsum(first_of_group) - 1
    starts = np.flatnonzero(first_of_group)
    ends = np.concatenate([starts[1:], [len(values)]])
    group_rank = (starts + 1 + ends) / 2.0          # mean of ranks starts+1 .. ends
    ranks = np.empty(len(values))
    ranks[order] = group_rank[group]
    return ranks


def auroc(scores: np.ndarray, truth: np.ndarray) -> float:
    """P(score of a random anomaly > score of a random normal object) + P(tie) / 2."""
    scores, truth = _check(scores, truth)
    ranks = mid_ranks(scores)
    n_pos = int(truth.sum())
    n_neg = len(truth) - n_pos
    u = ranks[truth].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _operating_points(scores: np.ndarray, truth: np.ndarray):
    """True and false positives when flagging everything with score >= each distinct score (descending)."""
    order = np.argsort(-scores, kind="mergesort")
    ordered, hits = scores[order], truth[order]
    last_of_group = np.concatenate([ordered[1:] != ordered[:-1], [True]])
    tp = np.cumsum(hits)[last_of_group]
    fp = np.cumsum(~hits)[last_of_group]
    return tp.astype(np.float64), fp.astype(np.float64)


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """sum_n (R_n - R_{n-1}) P_n over the distinct thresholds (no interpolation)."""
    scores, truth = _check(scores, truth)
    tp, fp = _operating_points(scores, truth)
    precision = tp / (tp + fp)
    recall = tp / truth.sum()
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def tpr_at_fpr(scores: np.ndarray, truth: np.ndarray, fpr: float = 0.05) -> float:
    """The largest true-positive rate among thresholds whose false-positive rate is at most ``fpr``."""
    scores, truth = _check(scores, truth)
    tp, fp = _operating_points(scores, truth)
    rates_fp = fp / (~truth).sum()
    allowed = rates_fp <= fpr + 1e-12
    return float((tp[allowed] / truth.sum()).max()) if allowed.any() else 0.0


def detection_report(scores: np.ndarray, truth: np.ndarray, fpr: float = 0.05) -> dict:
    scores, truth = _check(scores, truth)
    return {"n": int(len(truth)), "n_anomalies": int(truth.sum()), "auroc": auroc(scores, truth),
            "average_precision": average_precision(scores, truth), "fpr": fpr,
            "tpr_at_fpr": tpr_at_fpr(scores, truth, fpr), "anomaly_fraction": float(truth.mean())}


def trust_curve(scores: np.ndarray, errors: np.ndarray, bins: int = 10, trusted: np.ndarray | None = None) -> dict:
    """The error column in bins of equal counts of the score (least strange first), and trusted vs not."""
    scores = np.asarray(scores, dtype=np.float64)
    errors = np.asarray(errors, dtype=np.float64)
    usable = np.isfinite(scores) & np.isfinite(errors)
    if not usable.any():
        raise BadData("no row has both a score and a finite error", "check --error-column")
    scores_used, errors_used = scores[usable], errors[usable]
    order = np.argsort(scores_used, kind="mergesort")
    rows = []
    for chunk in np.array_split(order, min(bins, len(order))):
        rows.append({"score_lo": float(scores_used[chunk].min()), "score_hi": float(scores_used[chunk].max()),
                     "n": int(len(chunk)), "median_error": float(np.median(errors_used[chunk])),
                     "mean_error": float(np.mean(errors_used[chunk]))})
    out = {"n": int(usable.sum()), "n_skipped": int((~usable).sum()), "bins": rows}
    if trusted is not None:
        trusted = np.asarray(trusted).astype(bool)[usable]
        for name, mask in (("trusted", trusted), ("untrusted", ~trusted)):
            out[name] = {"n": int(mask.sum()),
                         "median_error": float(np.median(errors_used[mask])) if mask.any() else None,
                         "mean_error": float(np.mean(errors_used[mask])) if mask.any() else None}
    return out
