"""Fitting the classifier on frozen embeddings: cross-entropy against hard labels or soft (vote-fraction) targets.

With targets t (each row sums to 1) and predicted probabilities q = softmax(logits), the loss is
``-mean_i sum_c t_ic log q_ic``; a hard label is the one-hot special case, ``-mean_i log q_i,label_i``.
The optimisation (AdamW, learning-rate cuts on plateaus, early stopping on a validation split, best weights kept,
input standardisation folded into the first layer) is galtools.heads' ``train_head``: torch's ``cross_entropy``
takes class indices and class probabilities alike.  The labelled rows are held in memory
(labels are the scarce part: 100k labelled 2048-d embeddings are 0.8 GB).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from galtools.classify.labels import (HARD, LabelSpec, check_label_columns, class_indices, label_strings,
                                      majority_vote, natural_order, soft_targets, vote_fractions)
from galtools.classify.model import ClassifierModel
from galtools.errors import BadData
from galtools.heads.rows import InMemoryRows, read_labelled as read_rows, validation_split
from galtools.heads.source import open_embeddings
from galtools.heads.train import TrainSettings, train_head

log = logging.getLogger("galtools")


@dataclass
class ClassifySettings(TrainSettings):
    """The training settings of galtools.heads; the classes come from the labels."""


@dataclass
class LabelledRows:
    """The labelled rows of an embedding table, in table order."""

    x: np.ndarray                  # (n, D) float32
    targets: np.ndarray            # HARD: (n,) int64 class index; SOFT: (n, classes) float32, rows sum to 1
    labels: LabelSpec              # with the classes filled in
    model_sha256: str | None = None
    n_rows: int = 0                # rows read
    n_unused: int = 0              # rows without a usable label
    ids: list | None = None        # their object_ids, when asked for

    @property
    def count(self) -> int:
        return len(self.x)

    @property
    def truth(self) -> np.ndarray:
        """Class index per row: the label, or the majority vote."""
        return self.targets if self.labels.kind == HARD else majority_vote(self.targets)

    def subset(self, rows: np.ndarray) -> "LabelledRows":
        ids = None if self.ids is None else [self.ids[r] for r in rows]
        return LabelledRows(self.x[rows], self.targets[rows], self.labels, self.model_sha256, len(rows), 0, ids)

    def with_features(self, x: np.ndarray) -> "LabelledRows":
        """The same rows and labels with other features (pixels, another encoder's)."""
        return LabelledRows(x, self.targets, self.labels, None, self.n_rows, self.n_unused, self.ids)


def read_labelled(path: str, spec: LabelSpec, with_ids: bool = False) -> LabelledRows:
    """The rows of an embedding table that have a usable label, in memory (with their object_ids)."""
    with open_embeddings(path) as source:
        name = source.name
        check_label_columns(source.table.schema, spec, name)

        def usable(batch):
            if spec.kind == HARD:
                values = label_strings(batch.column(spec.column))
                found = (np.array([v is not None for v in values], dtype=bool) if spec.classes is None
                         else class_indices(values, spec) >= 0)
                keep = np.flatnonzero(found)
                return keep, values[keep]
            targets, used = soft_targets(vote_fractions(batch, spec, name))
            return np.flatnonzero(used), targets.astype(np.float32)

        found = read_rows(source, spec.columns, usable, with_ids)
        model_sha256 = source.model_sha256
    x, n_rows = found.x, found.n_rows
    if len(x) == 0:
        what = f"a label in '{spec.column}'" if spec.kind == HARD else "votes in " + ", ".join(spec.columns)
        listed = f" among {', '.join(spec.classes)}" if spec.kind == HARD and spec.classes else ""
        raise BadData(f"{name}: none of its {n_rows} rows has {what}{listed}",
                      "check the label column(s) and --classes")
    if spec.kind == HARD:
        values = np.concatenate(found.labels)
        if spec.classes is None:
            spec = spec.with_classes(natural_order(values))
        targets = class_indices(values, spec)
    else:
        targets = np.concatenate(found.labels)
    if len(spec.classes) < 2:
        raise BadData(f"{name}: every labelled row is of class {spec.classes[0]!r}; a classifier needs two or more",
                      "check --label, or give rows of other classes")
    rows = LabelledRows(x, targets, spec, model_sha256, n_rows, n_rows - len(x), found.ids)
    log.info(f"{rows.count} labelled rows of {n_rows} ({rows.n_unused} without a usable label); "
             f"classes: {', '.join(spec.classes)}")
    return rows


def fit_rows(rows: LabelledRows, settings: ClassifySettings) -> ClassifierModel:
    """Fit a classifier on labelled rows (a validation split of them for early stopping)."""
    settings.validate()
    n_classes = len(rows.labels.classes)
    if rows.count < 2:
        raise BadData(f"only {rows.count} labelled row; fitting needs a training and a validation row",
                      "give more labelled rows")
    val = validation_split(rows.count, settings.val_fraction, settings.seed)
    train_truth = rows.truth[~val]
    missing = [c for i, c in enumerate(rows.labels.classes) if not np.any(train_truth == i)]
    if missing and rows.labels.kind == HARD:
        log.warning(f"no training row of class(es) {', '.join(missing)}: they will hardly ever be predicted")
    train_targets, val_targets = rows.targets[~val], rows.targets[val]   # class indices, or vote fractions
    log.info(f"fitting on {int((~val).sum())} labelled rows, validating on {int(val.sum())}")
    linear, record = train_head(InMemoryRows(rows.x[~val], train_targets), rows.x[val], val_targets,
                                rows.x.shape[1], n_classes, settings)
    counts = np.bincount(rows.truth, minlength=n_classes)
    info = {"n_train": int((~val).sum()), "n_val": int(val.sum()), "n_unused": rows.n_unused,
            "class_counts": {c: int(n) for c, n in zip(rows.labels.classes, counts)},
            "settings": asdict(settings), "training": record, "seed": settings.seed}
    return ClassifierModel(linear, rows.labels, rows.model_sha256, info)


def fit_table(path: str, spec: LabelSpec, settings: ClassifySettings) -> ClassifierModel:
    """Fit on the labelled rows of an embedding table (a file, a folder of parts, or '-')."""
    settings.validate()
    return fit_rows(read_labelled(path, spec), settings)
