"""Scoring a target embedding table batch by batch: ood_score, trusted, the nearest reference; the strangest N."""
from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from galtools.errors import BadData
from galtools.io import EMBEDDING, IMAGE, MODEL_SHA256, open_output, open_table, vectors_of
from galtools.ood.model import OodModel

log = logging.getLogger("galtools")

SCORE_COLUMNS = ("ood_score", "ood_raw", "trusted", "nearest_reference_id", "nearest_reference_distance")
NOT_CARRIED = (IMAGE,) + SCORE_COLUMNS      # the embedding is carried, so scores can go on to gal-photoz/gal-knn
OOD_KEY = "galtools.ood"


def unit_vectors(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """The batch's embeddings scaled to unit length; BadData naming the first NaN/inf or all-zero row."""
    x = np.array(vectors_of(batch), dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        ids = batch.column("object_id") if "object_id" in batch.schema.names else None
        first = repr(ids[int(bad[0])].as_py()) if ids is not None else f"row {int(bad[0])} of a batch"
        problem = "NaN or infinite values" if not np.isfinite(norms[bad[0]]) else "all zeros"
        raise BadData(f"{name}: {bad.size} embedding(s) of this batch hold {problem} (first: object_id {first})",
                      "re-embed those objects or drop them")
    return x / norms[:, None].astype(np.float32)


def score_batch(batch: pa.RecordBatch, model: OodModel, coverage: float, name: str) -> pa.RecordBatch:
    unit = unit_vectors(batch, name)
    if len(unit):
        raw, nearest_row, nearest_distance = model.statistic(unit)
    else:
        raw, nearest_row, nearest_distance = np.empty(0), np.empty(0, np.int64), np.empty(0)
    score = model.percentile(raw)
    columns = {c: batch.column(c) for c in batch.schema.names if c not in NOT_CARRIED}
    columns["ood_score"] = pa.array(score, pa.float32())
    columns["ood_raw"] = pa.array(raw, pa.float64())
    columns["trusted"] = pa.array(score < coverage, pa.bool_())
    found = nearest_row >= 0        # an approximate index may return fewer neighbours than asked
    ids = pa.array(model.ids[np.where(found, nearest_row, 0)]) if len(model.ids) else pa.array([], pa.int64())
    columns["nearest_reference_id"] = pc.if_else(pa.array(found), ids, pa.nulls(len(found), ids.type))
    columns["nearest_reference_distance"] = pa.array(np.where(found, nearest_distance, np.nan), pa.float32())
    return pa.RecordBatch.from_pydict(columns)


class Strangest:
    """The N rows with the largest ood_raw seen so far (ties: smaller object_id first), without the vectors."""

    def __init__(self, count: int):
        self.count = count
        self.table: pa.Table | None = None

    def add(self, scored: pa.RecordBatch) -> None:
        if self.count <= 0 or scored.num_rows == 0:
            return
        keep = [f.name for f in scored.schema if not pa.types.is_fixed_size_list(f.type)]
        candidates = pa.Table.from_batches([scored.select(keep)])
        if self.table is not None:
            candidates = pa.concat_tables([self.table, candidates])
        self.table = self._top(candidates)

    def _top(self, table: pa.Table) -> pa.Table:
        keys = [("ood_raw", "descending")]
        if "object_id" in table.column_names:
            keys.append(("object_id", "ascending"))
        order = pc.sort_indices(table, sort_keys=keys)
        return table.take(order[: self.count]).combine_chunks()


def score_table(source: str, model: OodModel, check_embeddings, output: str | None, *, coverage: float = 0.95,
                fmt=None, overwrite=False, shard=None, top: int = 0, seed=None, progress=None):
    """Score every row of ``source``; write them to ``output`` (unless None); return (rows, the strangest ``top``)."""
    name = "stdin" if source == "-" else source
    strangest = Strangest(top)
    with open_table(source, shard=shard) as table:
        if EMBEDDING not in table.schema.names:
            hint = ("embed the cutouts first: gal-embed CUTOUTS --model encoder.onnx | gal-ood score - ..."
                    if IMAGE in table.schema.names else "give an embedding table made by gal-embed")
            raise BadData(f"{name} has no '{EMBEDDING}' column (columns: {', '.join(table.schema.names)})", hint)
        field = table.schema.field(EMBEDDING)
        if not pa.types.is_fixed_size_list(field.type):
            raise BadData(f"{name}: column 'embedding' is {field.type}, not a fixed-size vector",
                          "give an embedding table made by gal-embed")
        from galtools.search.table import check_single_model

        check_single_model(table)
        check_embeddings(field.type.list_size, table.metadata.get(MODEL_SHA256) or None, name)
        columns = [c for c in table.schema.names if c not in NOT_CARRIED]
        metadata = dict(table.metadata)
        metadata[OOD_KEY] = json.dumps({"method": model.method, "k": model.k, "search": model.search,
                                        "coverage": coverage, "threshold": model.threshold(coverage),
                                        "n_calibration": len(model.calibration)})
        rows = 0
        if output is None:
            for batch in table.iter_batches(columns=columns):
                scored = score_batch(batch, model, coverage, name)
                strangest.add(scored)
                rows += batch.num_rows
                if progress is not None:
                    progress(batch.num_rows)
            return rows, strangest.table
        with open_output(output, overwrite=overwrite, fmt=fmt, metadata=metadata, tool="gal-ood", seed=seed) as out:
            for batch in table.iter_batches(columns=columns):
                scored = score_batch(batch, model, coverage, name)
                strangest.add(scored)
                out.write(scored)
                if progress is not None:
                    progress(batch.num_rows)
            if out.rows == 0:
                empty = pa.RecordBatch.from_pylist([], schema=pa.schema([table.schema.field(c) for c in columns]))
                out.expect_schema(score_batch(empty, model, coverage, name).schema)
            rows = out.rows
    return rows, strangest.table
