"""The sink protocol: what the library writes rows to.

A library function that produces a table (``embed_table``, gal-knn's neighbor search, gal-augment's views, gal-sim's
rendering) takes a *sink* rather than a path: any object with these two methods.

    sink.expect_schema(schema)   # the columns to write if no row ever comes (an empty shard): called first
    sink.write(batch)            # a pyarrow RecordBatch (or Table); called once per block, in row order

:class:`galtools.io.Output` (from ``open_output``) is the sink that writes a file or stdout atomically;
:class:`CollectingSink` keeps the rows in memory (queries embedded on the fly, tests). A sink is not closed by the
library: whoever opened it closes it.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import pyarrow as pa


@runtime_checkable
class Sink(Protocol):
    def expect_schema(self, schema: pa.Schema) -> None:
        """Remember the columns an empty result is written with."""

    def write(self, batch) -> None:
        """Take one RecordBatch (or Table) of rows."""


class CollectingSink:
    """A sink that keeps every batch in memory; ``table()`` joins them (with the expected schema if none came)."""

    def __init__(self):
        self.batches: list[pa.RecordBatch] = []
        self.schema: pa.Schema | None = None
        self.rows = 0

    def expect_schema(self, schema: pa.Schema) -> None:
        self.schema = schema

    def write(self, batch) -> None:
        batches = batch.to_batches() if isinstance(batch, pa.Table) else [batch]
        for piece in batches:
            self.batches.append(piece)
            self.rows += piece.num_rows

    def table(self) -> pa.Table:
        if self.batches:
            return pa.Table.from_batches(self.batches)
        if self.schema is None:
            raise ValueError("nothing was written and no schema was expected")
        return self.schema.empty_table()
