"""Morphology as a galtools.heads head task: a label column or vote-fraction columns for labels (galtools.classify.
labels), cross-entropy against class indices or vote fractions for loss, accuracy and balanced accuracy for
metrics, the most probable class as the prediction, the training set's most frequent class as the floor."""
from __future__ import annotations

import logging

import numpy as np

from galtools.classify.labels import (HARD, LabelSpec, check_label_columns, class_indices, label_strings,
                                      majority_vote, natural_order, soft_targets, vote_fractions)
from galtools.classify.model import TOOL, ClassifierModel
from galtools.errors import BadData
from galtools.heads.rows import LabelledRows
from galtools.heads.task import Evaluation, HeadTask

log = logging.getLogger("galtools")


class MorphologyTask(HeadTask):
    name = "classify"
    tool = TOOL
    outputs = "classes"
    floor_method = "majority"
    curve_metrics = (("accuracy", "accuracy", ".4f"), ("balanced_accuracy", "balanced", ".4f"))
    curve_panels = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"))
    curve_ylim = (0, 1.02)

    def __init__(self, spec: LabelSpec | None = None):
        self.spec = spec        # None: evaluating, where the truth is what the predictions' metadata records

    # -- labels: a class per row (values merged into classes), or vote fractions renormalised per row
    @property
    def label_columns(self) -> list[str]:
        return self.spec.columns

    def check_columns(self, schema, name: str) -> None:
        check_label_columns(schema, self.spec, name)

    def labels_of(self, batch, name: str):
        spec = self.spec
        if spec.kind == HARD:
            values = label_strings(batch.column(spec.column))
            found = (np.array([v is not None for v in values], dtype=bool) if spec.classes is None
                     else class_indices(values, spec) >= 0)
            keep = np.flatnonzero(found)
            return keep, values[keep]
        targets, used = soft_targets(vote_fractions(batch, spec, name))
        return np.flatnonzero(used), targets.astype(np.float32)

    def labelled(self, x, labels, ids, n_rows, name, model_sha256=None) -> LabelledRows:
        spec = self.spec
        count = sum(len(part) for part in labels)
        if count == 0:
            what = f"a label in '{spec.column}'" if spec.kind == HARD else "votes in " + ", ".join(spec.columns)
            listed = f" among {', '.join(spec.classes)}" if spec.kind == HARD and spec.classes else ""
            raise BadData(f"{name}: none of its {n_rows} rows has {what}{listed}",
                          "check the label column(s) and --classes")
        if spec.kind == HARD:
            values = np.concatenate(labels)
            if spec.classes is None:
                spec = spec.with_classes(natural_order(values))
            targets = class_indices(values, spec)
        else:
            targets = np.concatenate(labels)
        if len(spec.classes) < 2:
            raise BadData(f"{name}: every labelled row is of class {spec.classes[0]!r}; a classifier needs two or "
                          "more", "check --label, or give rows of other classes")
        self.spec = spec                        # the classes are known from here on
        rows = LabelledRows(x, targets, spec, model_sha256, n_rows, n_rows - count, ids, name)
        log.info(f"{rows.count} labelled rows of {n_rows} ({rows.n_unused} without a usable label); "
                 f"classes: {', '.join(spec.classes)}")
        return rows

    # -- loss: class indices, or the vote fractions themselves
    def n_outputs(self, rows) -> int:
        return len(rows.labels.classes)

    def encode(self, rows, val=None):
        if val is not None and rows.labels.kind == HARD:
            train_truth = rows.targets[~val]
            missing = [c for i, c in enumerate(rows.labels.classes) if not np.any(train_truth == i)]
            if missing:
                log.warning(f"no training row of class(es) {', '.join(missing)}: they will hardly ever be predicted")
        return rows.targets, {}

    # -- metrics
    def truth(self, rows):
        """Class index per row: the label, or the majority vote."""
        return rows.targets if rows.labels.kind == HARD else majority_vote(rows.targets)

    def point(self, pdf):
        return np.argmax(pdf, axis=1)

    def floor(self, truth, count):
        return np.full(count, int(np.argmax(np.bincount(truth))))

    def metrics(self, predicted, truth) -> dict:
        from galtools.classify.metrics import classification_metrics

        found = classification_metrics(truth, predicted, self.classes)
        return {"n": found["n"], "accuracy": found["accuracy"], "balanced_accuracy": found["balanced_accuracy"]}

    @property
    def classes(self):
        return self.spec.classes

    # -- report
    def curve_header(self) -> dict:
        return {"classes": list(self.spec.classes)}

    def fit_info(self, rows) -> dict:
        counts = np.bincount(self.truth(rows), minlength=len(rows.labels.classes))
        return {"n_unused": rows.n_unused, "class_counts": {c: int(n) for c, n in zip(rows.labels.classes, counts)}}

    def model(self, linear, rows, info, model_sha256, encoder_onnx=None):
        if encoder_onnx is not None:
            raise NotImplementedError("gal-classify model files carry no encoder")
        return ClassifierModel(linear, rows.labels, model_sha256, info)

    def describe(self, model) -> str:
        return f", {len(model.classes)} classes"

    def predictions(self, model, **options):
        from galtools.classify.predict import prediction_task

        return prediction_task(model, **options)

    def evaluate(self, path: str, label=None, soft_labels=None, confident: float = 0.8,
                 calibration_bins: int = 10) -> Evaluation:
        from galtools.classify.evaluate import evaluate, read_predictions

        report = evaluate(read_predictions(path, label, soft_labels), confident, calibration_bins)
        skipped = sum(v for k, v in report.items() if k.startswith("n_no_") or k == "n_other_class")
        return Evaluation(self, {"task": self.name, **report, "n_skipped": skipped})

    def format_report(self, evaluation) -> str:
        from galtools.classify.evaluate import format_report

        return format_report(evaluation.report)

    def plot_report(self, evaluation, path: str) -> None:
        from galtools.classify.evaluate import plot_report

        plot_report(evaluation.report, path)
