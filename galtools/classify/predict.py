"""Predicting classes for an embedding table, batch by batch (numpy only; memory bounded by one batch).

Adds ``predicted_class`` (string), ``predicted_prob`` (its probability) and one ``prob_<class>`` column per class;
the table's other columns are carried through (the embedding too with ``keep_embedding``, e.g. for gal-map).
The classes and where their labels came from go into the metadata key ``galtools.classify``, so that
``gal-classify eval`` finds the truth columns without being told.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from galtools.classify.fit import check_embedding_column
from galtools.classify.model import ClassifierModel
from galtools.io import EMBEDDING, IMAGE, MODEL_SHA256, open_output, open_table
from galtools.io.tensor import finite_vectors_of

META_KEY = "galtools.classify"
PREDICTED_CLASS = "predicted_class"
PREDICTED_PROB = "predicted_prob"


def probability_column(class_name: str) -> str:
    return f"prob_{class_name}"


def prediction_columns(classes) -> list[str]:
    return [PREDICTED_CLASS, PREDICTED_PROB] + [probability_column(c) for c in classes]


def prediction_batch(batch: pa.RecordBatch, model: ClassifierModel, carried: list[str], name: str) -> pa.RecordBatch:
    """The carried columns of ``batch`` followed by the predictions."""
    x = finite_vectors_of(batch, name)
    probabilities = model.predict_proba(x)
    best = np.argmax(probabilities, axis=1) if len(x) else np.zeros(0, np.int64)
    columns = {c: batch.column(c) for c in carried}
    columns[PREDICTED_CLASS] = pa.array(np.asarray(model.classes, dtype=object)[best], pa.string())
    columns[PREDICTED_PROB] = pa.array(probabilities[np.arange(len(best)), best], pa.float32())
    for i, class_name in enumerate(model.classes):
        columns[probability_column(class_name)] = pa.array(probabilities[:, i], pa.float32())
    return pa.RecordBatch.from_pydict(columns)


def predict_table(source: str, model: ClassifierModel, check_embeddings, output: str, *, fmt=None,
                  overwrite=False, keep_embedding=False, shard=None, progress=None) -> int:
    """Write the predictions for every row of ``source``; returns the number of rows written.

    ``check_embeddings(dim, model_sha256, name)`` raises when the table's embeddings do not fit the model.
    """
    name = "stdin" if source == "-" else source
    with open_table(source, shard=shard) as table:
        dim = check_embedding_column(table.schema, name)
        from galtools.search.table import check_single_model

        check_single_model(table)
        check_embeddings(dim, table.metadata.get(MODEL_SHA256) or None, name)
        replaced = set(prediction_columns(model.classes)) | {IMAGE} | (set() if keep_embedding else {EMBEDDING})
        carried = [c for c in table.schema.names if c not in replaced]
        metadata = dict(table.metadata)
        metadata[META_KEY] = json.dumps({"kind": model.kind, "labels": model.labels.to_json(),
                                         "seed": model.info.get("seed")})
        read = list(dict.fromkeys(carried + [EMBEDDING]))
        with open_output(output, overwrite=overwrite, fmt=fmt, metadata=metadata, tool="gal-classify") as out:
            for batch in table.iter_batches(columns=read):
                out.write(prediction_batch(batch, model, carried, name))
                if progress is not None:
                    progress(batch.num_rows)
            if out.rows == 0:
                empty = pa.RecordBatch.from_pylist([], schema=pa.schema([table.schema.field(c) for c in read]))
                out.expect_schema(prediction_batch(empty, model, carried, name).schema)
            return out.rows


def classification_of(metadata: dict) -> dict | None:
    """What predict_table recorded about the model ({'kind', 'labels', 'seed'}), or None."""
    try:
        return json.loads(metadata[META_KEY])
    except (KeyError, ValueError):
        return None
