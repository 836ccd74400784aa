"""What a training run reports: RUN/metrics.jsonl (one JSON record per line), RUN/training.png, kNN accuracy."""
from __future__ import annotations

import json
import os

import numpy as np

from galtools.errors import BadData, OutputError
from galtools.io.files import atomic_file

METRICS = "metrics.jsonl"
PLOT = "training.png"
KNN_TEMPERATURE = 0.07   # similarity-weighted votes, as in the kNN monitor of Wu et al. (2018)


class MetricsLog:
    """Appends records to RUN/metrics.jsonl; a resumed run first drops records past the step it resumes from."""

    def __init__(self, run_dir: str, resume_step: int | None):
        self.path = os.path.join(run_dir, METRICS)
        try:
            if resume_step is None:
                open(self.path, "w").close()
            elif os.path.exists(self.path):
                kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
                with open(self.path, "w") as handle:
                    handle.writelines(json.dumps(r) + "\n" for r in kept)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror}", "check the run folder's permissions") from None

    def write(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def read_metrics(path: str) -> list[dict]:
    records = []
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if line:
                records.append(json.loads(line))
    return records


def encode_labels(values: np.ndarray, column: str) -> np.ndarray:
    """Class indices for a label column; -1 for missing labels.  A continuous column is refused."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        missing = ~np.isfinite(values)
        distinct = np.unique(values[~missing])
        if len(distinct) > 100 or not np.all(distinct == np.round(distinct)):
            raise BadData(f"--monitor-label {column}: the column is continuous, not classes",
                          "name a class column (e.g. morph_class); kNN accuracy needs discrete labels")
    else:
        missing = np.array([v is None or v == "" for v in values.tolist()])
    codes = np.full(len(values), -1, dtype=np.int64)
    if (~missing).any():
        _, codes[~missing] = np.unique(values[~missing].astype(str) if values.dtype.kind == "O" else values[~missing],
                                       return_inverse=True)
    return codes


def knn_accuracy(embeddings: np.ndarray, labels: np.ndarray, k: int = 20) -> float:
    """Leave-one-out kNN accuracy: each object's class is the similarity-weighted vote of its k nearest others
    (cosine similarity, weights exp(s / 0.07))."""
    x = np.asarray(embeddings, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(x)
    k = max(1, min(k, n - 1))
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    neighbours = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    weights = np.exp(np.take_along_axis(similarity, neighbours, axis=1) / KNN_TEMPERATURE)
    classes = int(labels.max()) + 1
    votes = np.zeros((n, classes))
    np.add.at(votes, (np.repeat(np.arange(n), k), labels[neighbours].reshape(-1)), weights.reshape(-1))
    return float(np.mean(votes.argmax(axis=1) == labels))


def plot_training(run_dir: str) -> str | None:
    """RUN/training.png: loss and learning rate against step, kNN accuracy when monitored."""
    path = os.path.join(run_dir, METRICS)
    if not os.path.exists(path):
        return None
    records = read_metrics(path)
    steps = [r for r in records if "loss" in r]
    knn = [r for r in records if "knn_accuracy" in r]
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if knn else 1
    fig, axes = plt.subplots(panels, 1, figsize=(7, 3.2 * panels), sharex=True, squeeze=False)
    ax = axes[0, 0]
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], color="C0", label="contrastive loss")
    ax.set_ylabel("loss")
    lr_axis = ax.twinx()
    lr_axis.plot([r["step"] for r in steps], [r["lr"] for r in steps], color="C1", alpha=0.6, label="learning rate")
    lr_axis.set_ylabel("learning rate")
    ax.set_title("gal-train")
    if knn:
        axes[1, 0].plot([r["step"] for r in knn], [r["knn_accuracy"] for r in knn], "o-", color="C2")
        axes[1, 0].set_ylabel(f"kNN accuracy ({knn[-1].get('label', 'label')})")
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    out = os.path.join(run_dir, PLOT)
    with atomic_file(out, named=True) as temporary:   # named: matplotlib picks the format by extension
        fig.savefig(temporary, dpi=100)
    plt.close(fig)
    return out
