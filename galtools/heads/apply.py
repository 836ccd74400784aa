"""Applying a head to every row of an embedding table, batch by batch (numpy only; memory bounded by one batch).

One loop for ``gal-photoz predict``, ``gal-classify predict`` and ``gal-ood score``, written through a sink (the
library never opens an output; the caller opens it, with the metadata ``output_metadata`` gives): the table is
checked as an embedding source (column, dimension, one encoder; the model's dimension and encoder), each batch's
vectors are checked (finite; for unit vectors, not all zeros), the task turns them into its columns, and the
carried columns go through unchanged.  ``HeadSink`` is the same step as a sink (``write``/``expect_schema``), for batches
that come from elsewhere: gal-embed's library embedding cutouts on the way.

    task = Task(columns=lambda batch, x: {"z_phot": ...}, produced=("z_phot",), dropped=("image",))
    with open_table("emb.parquet") as table, open_output("pred.parquet", metadata=table.metadata) as out:
        rows = apply_to(table, "emb.parquet", head, task, out)       # out: any sink (CollectingSink ...)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa

from galtools.heads.source import checked_source, checked_vectors
from galtools.io import EMBEDDING, IMAGE, display_name, open_table


@dataclass
class Task:
    """What a head adds to a batch: ``columns(batch, vectors)`` -> {name: array} (in output order)."""

    columns: Callable[[pa.RecordBatch, object], dict]
    produced: tuple[str, ...]                 # the names it adds (an input column of that name is not carried)
    keep_embedding: bool = True               # carry the embedding column
    unit: bool = False                        # the vectors scaled to unit length (refusing all-zero rows)
    dropped: tuple[str, ...] = (IMAGE,)       # other input columns never carried
    on_batch: Callable[[pa.RecordBatch], None] | None = None   # sees every finished batch (e.g. the strangest N)
    needs: tuple[str, ...] = field(default=())                # input columns it reads besides the embedding

    def carried(self, names) -> list[str]:
        gone = set(self.produced) | set(self.dropped) | (set() if self.keep_embedding else {EMBEDDING})
        return [c for c in names if c not in gone]

    def read(self, names) -> list[str]:
        """The input columns to read: the carried ones, the embedding and what the task needs."""
        return list(dict.fromkeys(self.carried(names) + [EMBEDDING, *self.needs]))


class HeadSink:
    """A sink of embedding batches: each becomes the carried columns plus the task's, written to ``out``
    (``out`` None: nothing is written, ``on_batch`` still sees every batch)."""

    def __init__(self, out, task: Task, name: str, progress=None):
        self.out, self.task, self.name, self.progress = out, task, name, progress
        self.rows = 0

    def transform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        x = checked_vectors(batch, self.name, unit=self.task.unit)
        columns = {c: batch.column(c) for c in self.task.carried(batch.schema.names)}
        columns.update(self.task.columns(batch, x))
        return pa.RecordBatch.from_pydict(columns)

    def write(self, batch: pa.RecordBatch) -> None:
        result = self.transform(batch)
        if self.task.on_batch is not None:
            self.task.on_batch(result)
        if self.out is not None:
            self.out.write(result)
        self.rows += batch.num_rows
        if self.progress is not None:
            self.progress(batch.num_rows)

    def expect_schema(self, schema: pa.Schema) -> None:
        """Tell ``out`` the schema its batches would have had (an empty input still writes a valid table)."""
        if self.out is not None:
            self.out.expect_schema(self.transform(pa.RecordBatch.from_pylist([], schema=schema)).schema)


def apply_table(path: str, head, task: Task, out, *, shard=None, **options) -> int:
    """Apply ``task`` to every row of the embedding table ``path`` (see ``apply_to``)."""
    with open_table(path, shard=shard) as table:
        return apply_to(table, display_name(path), head, task, out, **options)


def apply_to(table, name: str, head, task: Task, out, *, progress=None, log=None, hint=None) -> int:
    """Apply ``task`` to every row of an open embedding table (checked, and checked against ``head``) and write
    the result to the sink ``out`` (None: write nothing; ``task.on_batch`` still sees every batch). An empty table
    still tells ``out`` its schema. Returns the number of rows."""
    source = checked_source(table, name, hint)
    source.check(head, log)
    read = task.read(table.schema.names)
    sink = HeadSink(out, task, name, progress)
    for batch in table.iter_batches(columns=read):
        sink.write(batch)
    if sink.rows == 0:
        sink.expect_schema(pa.schema([table.schema.field(c) for c in read]))
    return sink.rows


def output_metadata(table, metadata: dict | None) -> dict:
    """The metadata of a head's output: the input table's, plus the tool's ``metadata``."""
    return {**table.metadata, **(metadata or {})}
