"""The label-efficiency curve: a task's quality against the number of labels (Hayat et al. 2021, fig. 5).

The labelled rows are split once into a fixed test set and a training pool; for each fraction the first
``fraction x pool`` rows of one seeded permutation of the pool train every arm (so the subsets are nested and the
same for all arms), and every arm is scored on the same test set.  An arm is a method: a probe on the
representation, a baseline (median, majority class), a network fine-tuned or trained from scratch.  Each row
says whether the arm's training stopped by patience or at its epoch cap (``stopped``; empty for an arm that does
not train), so that a comparison can refuse an arm that had not converged.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np

from galtools.errors import BadData, UsageProblem
from galtools.heads.rows import split_test

log = logging.getLogger("galtools")

ROW_KEYS = ("method", "fraction", "n_labels", "n_test")
RUN_KEYS = ("stopped", "epochs")


@dataclass
class Arm:
    """One method of the curve: ``run(train_rows, test_rows)`` -> (predictions for the test rows, the training
    record or None for an arm that does not train)."""

    method: str
    run: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, dict | None]]
    baseline: bool = False       # drawn dotted


def chosen_by_validation(method: str, candidates: dict, key: str) -> Arm:
    """An arm that trains each of ``candidates`` ({setting: run}) on the same rows and keeps the one whose training
    ended with the lowest validation loss (the test rows play no part in the choice); its record says which setting
    won under ``key``."""
    def run(train, test):
        best = None
        for setting, candidate in candidates.items():
            predictions, record = candidate(train, test)
            if best is None or record["best_val_loss"] < best[1]["best_val_loss"]:
                best = predictions, {**record, key: setting}
        return best

    return Arm(method, run)


def parse_fractions(text: str) -> list[float]:
    try:
        fractions = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UsageProblem(f"--fractions {text!r} is not a list of numbers", "e.g. --fractions 0.01,0.1,1") from None
    if not fractions or fractions[0] <= 0 or fractions[-1] > 1:
        raise UsageProblem(f"--fractions must lie in (0, 1], got {text!r}", "e.g. --fractions 0.01,0.1,1")
    return fractions


def subset_sizes(pool: int, fractions: list[float], n_outputs: int, outputs: str, fix: str) -> list[tuple[float, int]]:
    """(fraction, number of labels) for each fraction that gives at least ``n_outputs`` labels (one per redshift
    bin, or per class); the others are skipped with a warning."""
    sizes = []
    for fraction in fractions:
        count = int(round(fraction * pool))
        if count < n_outputs:
            log.warning(f"fraction {fraction:g} gives {count} labels, fewer than the {n_outputs} {outputs}: skipped")
            continue
        sizes.append((fraction, count))
    if not sizes:
        raise BadData(f"no fraction gives at least {n_outputs} labels from a training pool of {pool}", fix)
    return sizes


@dataclass
class Split:
    pool: np.ndarray             # the training pool, in its seeded order
    test: np.ndarray             # the test rows, sorted
    sizes: list[tuple[float, int]]

    def train_rows(self, count: int) -> np.ndarray:
        return np.sort(self.pool[:count])


def make_split(n: int, fractions: list[float], test_fraction: float, seed: int, n_outputs: int, outputs: str,
               fix: str) -> Split:
    pool, test = split_test(n, test_fraction, seed)
    return Split(pool, test, subset_sizes(len(pool), fractions, n_outputs, outputs, fix))


def run_curve(split: Split, arms: list[Arm], score: Callable[[np.ndarray, np.ndarray], dict]) -> list[dict]:
    """Rows of the curve: for each size, each arm trained on the same subset and scored on the same test set by
    ``score(predictions, test_rows)`` -> {metric: value, 'n': test rows scored}."""
    rows = []
    for fraction, count in split.sizes:
        train = split.train_rows(count)
        for arm in arms:
            if not arm.baseline:
                log.info(f"{arm.method} on {count} labels ({fraction:g} of {len(split.pool)})")
            predictions, record = arm.run(train, split.test)
            rows.append(curve_row(arm.method, fraction, count, score(predictions, split.test), record))
    return rows


def curve_row(method: str, fraction: float, n_labels: int, metrics: dict, record: dict | None) -> dict:
    row = {"method": method, "fraction": fraction, "n_labels": n_labels, "n_test": metrics["n"]}
    row.update({k: v for k, v in metrics.items() if k != "n"})
    row["stopped"] = record["stopped"] if record else ""
    row["epochs"] = float(record["epochs"]) if record else 0.0
    if record and "components" in record:       # the pixel baseline: how many principal components it chose
        row["components"] = int(record["components"])
    return row


def format_curve(rows: list[dict], metrics: list[tuple[str, str, str]]) -> str:
    """A text table; ``metrics`` lists (key, title, format spec) of the task's columns."""
    head = f"{'method':<12} {'fraction':>8} {'labels':>8} {'test':>6} " + " ".join(
        f"{title:>10}" for _, title, _ in metrics) + f" {'epochs':>7} stopped"
    lines = [head]
    for row in rows:
        values = " ".join(format(row[key], spec).rjust(10) for key, _, spec in metrics)
        epochs = f"{row['epochs']:>7g}" if row["stopped"] else f"{'-':>7}"
        lines.append(f"{row['method']:<12} {row['fraction']:>8g} {row['n_labels']:>8} {row['n_test']:>6} {values} "
                     f"{epochs} {row['stopped'] or '-'}")
    return "\n".join(lines)


def plot_curve(rows: list[dict], path: str, panels: list[tuple[str, str]], baselines=(), ylim=None) -> None:
    """One panel per (metric key, axis label) against the number of labels; ``baselines`` drawn dotted, arms that
    hit their epoch cap with open markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    counts = sorted({row["n_labels"] for row in rows})
    for axis, (key, what) in zip(axes[0], panels):
        for method in dict.fromkeys(row["method"] for row in rows):
            mine = [row for row in rows if row["method"] == method]
            style = "k:" if method in baselines else "o-"
            line, = axis.plot([r["n_labels"] for r in mine], [r[key] for r in mine], style, label=method)
            capped = [r for r in mine if r["stopped"] == "cap"]
            if capped:
                axis.plot([r["n_labels"] for r in capped], [r[key] for r in capped], "o", mfc="white",
                          color=line.get_color(), label=f"{method}: hit its epoch cap")
        axis.set(xscale="log", xlabel="number of labels", ylabel=what)
        if ylim is not None:
            axis.set_ylim(*ylim)
        axis.set_xticks(counts, [str(c) for c in counts])     # the sizes measured, not log decades
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle("label efficiency (same test set for every point)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
