"""Predicting classes for an embedding table, batch by batch (galtools.heads' apply loop; numpy only).

Adds ``predicted_class`` (string), ``predicted_prob`` (its probability) and one ``prob_<class>`` column per class;
the table's other columns are carried through (the embedding too with ``keep_embedding``, e.g. for gal-map).
The classes and where their labels came from go into the metadata key ``galtools.classify``, so that
``gal-classify eval`` finds the truth columns without being told.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa

from galtools.classify.model import ClassifierModel
from galtools.heads.apply import Task, apply_to, output_metadata
from galtools.heads.source import checked_source

log = logging.getLogger("galtools")

META_KEY = "galtools.classify"
PREDICTED_CLASS = "predicted_class"
PREDICTED_PROB = "predicted_prob"


def probability_column(class_name: str) -> str:
    return f"prob_{class_name}"


def prediction_columns(classes) -> list[str]:
    return [PREDICTED_CLASS, PREDICTED_PROB] + [probability_column(c) for c in classes]


def prediction_task(model: ClassifierModel, keep_embedding: bool = False) -> Task:
    def columns(batch, x):
        probabilities = model.predict_proba(x)
        best = np.argmax(probabilities, axis=1) if len(x) else np.zeros(0, np.int64)
        added = {PREDICTED_CLASS: pa.array(np.asarray(model.classes, dtype=object)[best], pa.string()),
                 PREDICTED_PROB: pa.array(probabilities[np.arange(len(best)), best], pa.float32())}
        for i, class_name in enumerate(model.classes):
            added[probability_column(class_name)] = pa.array(probabilities[:, i], pa.float32())
        return added

    return Task(columns, tuple(prediction_columns(model.classes)), keep_embedding=keep_embedding)


def predict_table(table, name: str, model: ClassifierModel, head, output, *, keep_embedding=False,
                  progress=None) -> int:
    """Write the predictions for every row of the open ``table`` (checked against ``head``, the model's file) to
    the sink ``output(metadata)`` opens (the command's ``Writing.open``); returns the number of rows written."""
    checked_source(table, name).check(head, log)
    metadata = {META_KEY: json.dumps({"kind": model.kind, "labels": model.labels.to_json(),
                                      "seed": model.info.get("seed")})}
    with output(output_metadata(table, metadata)) as out:
        return apply_to(table, name, head, prediction_task(model, keep_embedding), out, progress=progress)


def classification_of(metadata: dict) -> dict | None:
    """What predict_table recorded about the model ({'kind', 'labels', 'seed'}), or None."""
    try:
        return json.loads(metadata[META_KEY])
    except (KeyError, ValueError):
        return None
