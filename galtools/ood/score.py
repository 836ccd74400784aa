"""Scoring a target embedding table batch by batch: ood_score, trusted, the nearest reference; the strangest N."""
from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from galtools.heads.apply import Task, apply_to, output_metadata
from galtools.heads.source import checked_source
from galtools.io import display_name, meta, open_output, open_table
from galtools.ood.model import OodModel

log = logging.getLogger("galtools")

SCORE_COLUMNS = ("ood_score", "ood_raw", "trusted", "nearest_reference_id", "nearest_reference_distance")
OOD_KEY = meta.OOD
CUTOUTS_HINT = "embed the cutouts first: gal-embed CUTOUTS --model encoder.onnx | gal-ood score - ..."


def scoring_task(model: OodModel, coverage: float, on_batch=None) -> Task:
    """ood_score, ood_raw, trusted and the nearest reference after the carried columns (the embedding too)."""
    def columns(batch, unit):
        if len(unit):
            raw, nearest_row, nearest_distance = model.statistic(unit)
        else:
            raw, nearest_row, nearest_distance = np.empty(0), np.empty(0, np.int64), np.empty(0)
        score = model.percentile(raw)
        found = nearest_row >= 0        # an approximate index may return fewer neighbours than asked
        ids = pa.array(model.ids[np.where(found, nearest_row, 0)]) if len(model.ids) else pa.array([], pa.int64())
        return {"ood_score": pa.array(score, pa.float32()), "ood_raw": pa.array(raw, pa.float64()),
                "trusted": pa.array(score < coverage, pa.bool_()),
                "nearest_reference_id": pc.if_else(pa.array(found), ids, pa.nulls(len(found), ids.type)),
                "nearest_reference_distance": pa.array(np.where(found, nearest_distance, np.nan), pa.float32())}

    return Task(columns, SCORE_COLUMNS, unit=True, on_batch=on_batch)


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


def score_table(source: str, model: OodModel, head, output: str | None, *, coverage: float = 0.95, fmt=None,
                overwrite=False, shard=None, top: int = 0, seed=None, progress=None, counts: dict | None = None):
    """Score every row of ``source`` (checked against ``head``, the model's file); write them to ``output``
    (unless None); return (rows, the strangest ``top``). ``counts`` (a dict) receives ``untrusted``: the rows at
    or beyond the coverage threshold."""
    strangest = Strangest(top)
    counts = {} if counts is None else counts
    counts["untrusted"] = 0

    def on_batch(scored: pa.RecordBatch) -> None:
        counts["untrusted"] += scored.num_rows - int(pc.sum(scored.column("trusted")).as_py() or 0)
        strangest.add(scored)
    metadata = {OOD_KEY: json.dumps({"method": model.method, "k": model.k, "search": model.search,
                                     "coverage": coverage, "threshold": model.threshold(coverage),
                                     "n_calibration": len(model.calibration)})}
    task = scoring_task(model, coverage, on_batch)
    with open_table(source, shard=shard) as table:
        name = display_name(source)
        checked_source(table, name, CUTOUTS_HINT).check(head, log)
        if output is None:
            return apply_to(table, name, head, task, None, progress=progress), strangest.table
        with open_output(output, overwrite=overwrite, fmt=fmt, metadata=output_metadata(table, metadata),
                         tool="gal-ood", seed=seed, source=source, shard=shard) as out:   # a HATS catalogue in, one out
            return apply_to(table, name, head, task, out, progress=progress), strangest.table


def format_top(strangest: pa.Table | None, columns, show_columns=()) -> str:
    """The strangest objects as a terminal table: rank, the ``columns`` present, then each of ``show_columns``."""
    from galtools.errors import UsageProblem

    if strangest is None or strangest.num_rows == 0:
        return "no objects scored"
    columns = [c for c in columns if c in strangest.column_names]
    for column in show_columns:
        if column not in strangest.column_names:
            raise UsageProblem(f"--show {column}: no such column", f"columns: {', '.join(strangest.column_names)}")
        columns.append(column)
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in strangest.column(c).to_pylist()]
             for c in columns]
    widths = [max(len(c), *(len(v) for v in values)) for c, values in zip(columns, cells)]
    lines = ["  ".join(["rank"] + [c.rjust(w) for c, w in zip(columns, widths)])]
    for i in range(strangest.num_rows):
        lines.append("  ".join([str(i + 1).rjust(4)] + [values[i].rjust(w) for values, w in zip(cells, widths)]))
    return "\n".join(lines)
