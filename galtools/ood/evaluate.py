"""``gal-ood eval``: detection metrics against a truth column, the trust curve of an error column, and a plot."""
from __future__ import annotations

import json

import numpy as np

from galtools.errors import BadData
from galtools.io import read_columns
from galtools.io import meta
from galtools.ood.metrics import detection_report, trust_curve


def read_scores(source: str, truth: str | None, error_column: str | None, score_column: str | None):
    """The columns of a scored table by role ('score', and 'truth', 'error', 'trusted' when there), the score
    column used (default: ood_raw, else ood_score), and the trust boundary on its axis when the table says."""
    optional = {"trusted": "trusted"}
    if score_column is None:
        optional.update({"ood_raw": "ood_raw", "ood_score": "ood_score"})
    arrays, metadata = read_columns(source, {"truth": truth, "error_column": error_column,
                                             "score_column": score_column}, optional)
    if score_column is None:
        chosen = "ood_raw" if "ood_raw" in arrays else "ood_score" if "ood_score" in arrays else None
        if chosen is None:
            raise BadData(f"{source} has neither ood_raw nor ood_score", "score it with 'gal-ood score' first, "
                          "or name the column with --score-column")
        score_column, arrays["score"] = chosen, arrays[chosen]
    else:
        arrays["score"] = arrays.pop("score_column")
    if error_column:
        arrays["error"] = arrays.pop("error_column")
    return arrays, score_column, trust_threshold(metadata, score_column)


def trust_threshold(metadata: dict, score_column: str):
    """(value, coverage) of the trust boundary on the plotted score's axis, when the table says."""
    try:
        settings = json.loads(metadata.get(meta.OOD, ""))
    except ValueError:
        return None
    if score_column == "ood_raw":
        return settings.get("threshold"), settings.get("coverage")
    if score_column == "ood_score":
        return settings.get("coverage"), settings.get("coverage")
    return None


def format_detection(report: dict, score_column: str) -> str:
    return "\n".join([
        f"N = {report['n']} ({report['n_anomalies']} anomalies, {100 * report['anomaly_fraction']:.2f} %), "
        f"score: {score_column}",
        f"AUROC              = {report['auroc']:.4f}",
        f"average precision  = {report['average_precision']:.4f}",
        f"TPR at {100 * report['fpr']:g}% FPR     = {report['tpr_at_fpr']:.4f}",
    ])


def format_trust(curve: dict, error_column: str, score_column: str) -> str:
    lines = [f"{error_column} in bins of {score_column} (least strange first), N = {curve['n']}",
             f"{'score from':>12} {'score to':>12} {'N':>7} {'median':>11} {'mean':>11}"]
    for row in curve["bins"]:
        lines.append(f"{row['score_lo']:>12.4g} {row['score_hi']:>12.4g} {row['n']:>7} "
                     f"{row['median_error']:>11.5g} {row['mean_error']:>11.5g}")
    for name in ("trusted", "untrusted"):
        if name in curve and curve[name]["n"]:
            lines.append(f"{name:>9}: N = {curve[name]['n']}, median {error_column} = "
                         f"{curve[name]['median_error']:.5g}, mean = {curve[name]['mean_error']:.5g}")
    return "\n".join(lines)


def evaluate(arrays: dict[str, np.ndarray], bins: int = 10, fpr: float = 0.05) -> dict:
    """Detection metrics when ``arrays`` holds 'truth', the trust curve when it holds 'error'."""
    score = arrays["score"]
    report: dict = {}
    if "truth" in arrays:
        truth = arrays["truth"]
        usable = np.isfinite(score) & np.isfinite(truth)
        if not usable.any():
            raise BadData("no row has both a score and a truth value", "check --truth and --score-column")
        values = set(np.unique(truth[usable]).tolist())
        if not values <= {0.0, 1.0}:
            raise BadData(f"the truth column must be boolean or 0/1, got values such as {sorted(values)[:4]}",
                          "give a column like is_anomaly")
        report["detection"] = detection_report(score[usable], truth[usable] > 0.5, fpr)
        report["detection"]["n_skipped"] = int((~usable).sum())
    if "error" in arrays:
        trusted = arrays.get("trusted")
        report["trust"] = trust_curve(score, arrays["error"], bins, None if trusted is None else trusted > 0.5)
    return report


def plot_evaluation(arrays: dict[str, np.ndarray], report: dict, path: str, score_column: str,
                    error_column: str | None, threshold: tuple[float, float] | None = None) -> None:
    """Left: the score's distribution for normal objects and anomalies (with the trust boundary when known);
    right: the trust curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in ("detection", "trust") if p in report]
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for axis, panel in zip(axes[0], panels):
        if panel == "detection":
            score, truth = arrays["score"], arrays["truth"]
            usable = np.isfinite(score) & np.isfinite(truth)
            score, truth = score[usable], truth[usable] > 0.5
            edges = np.histogram_bin_edges(score, bins=50)
            axis.hist(score[~truth], bins=edges, density=True, alpha=0.6, label=f"normal ({(~truth).sum()})")
            axis.hist(score[truth], bins=edges, density=True, alpha=0.6, label=f"anomaly ({truth.sum()})")
            if threshold is not None and threshold[0] is not None:
                axis.axvline(threshold[0], color="k", ls="--", lw=1,
                             label=f"trusted below ({100 * threshold[1]:g}% of the reference)")
            detection = report["detection"]
            axis.set(xlabel=score_column, ylabel="density",
                     title=f"AUROC {detection['auroc']:.3f}  AP {detection['average_precision']:.3f}  "
                           f"TPR@{100 * detection['fpr']:g}%FPR {detection['tpr_at_fpr']:.3f}")
            axis.legend()
        else:
            rows = report["trust"]["bins"]
            centres = np.arange(len(rows))
            axis.plot(centres, [r["median_error"] for r in rows], "o-", label="median")
            axis.plot(centres, [r["mean_error"] for r in rows], "s--", label="mean")
            axis.set_xticks(centres, [f"{r['score_hi']:.2g}" for r in rows], rotation=45)
            axis.set(xlabel=f"{score_column} (upper edge of each equal-count bin)", ylabel=error_column,
                     title="trust curve: error against strangeness")
            axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
