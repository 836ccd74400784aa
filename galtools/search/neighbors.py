"""The neighbor table: written to a sink block by block, with the queries' own columns if asked, keeping what a
montage or a precision@k measure needs on the way.

Columns: query_id, query_<column> for each ``query_columns`` entry, rank (1 = most similar, or least with
``least``), neighbor_id, similarity, then the neighbor's carried columns prefixed ``neighbor_``.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from galtools.errors import UsageProblem
from galtools.search.table import neighbor_batch, neighbor_schema

QUERY_PREFIX = "query_"


def check_query_columns(base, columns) -> list[str]:
    """The requested query columns, refused (UsageProblem, 2) if the embedding table does not carry them."""
    columns = [c for c in columns if c]
    unknown = [c for c in columns if c not in base.carried.column_names]
    if unknown:
        raise UsageProblem(f"--query-columns {','.join(unknown)}: not a column of the embedding table",
                           f"choose among {', '.join(base.carried.column_names) or 'none: it carries no columns'}")
    return columns


def _with_query_columns(batch: pa.RecordBatch, base, query_rows, columns, k_of_query) -> pa.RecordBatch:
    """Insert query_<column> after query_id: the query's own value, repeated on each of its neighbor rows."""
    if not columns:
        return batch
    take = pa.array(np.repeat(np.asarray(query_rows, dtype=np.int64), k_of_query), type=pa.int64())
    names, arrays = batch.schema.names, batch.columns
    new_names, new_arrays = names[:1], arrays[:1]
    carried = base.carried_rows(take, columns)
    for column in columns:
        new_names.append(QUERY_PREFIX + column)
        new_arrays.append(carried.column(column).combine_chunks())
    return pa.RecordBatch.from_arrays(new_arrays + arrays[1:], names=new_names + names[1:])


def neighbors_schema(base, query_columns=()) -> pa.Schema:
    """Columns of the neighbor table (what an empty result is written with)."""
    schema = neighbor_schema(base)
    fields = [schema.field(0)] + [pa.field(QUERY_PREFIX + c, base.carried.schema.field(c).type)
                                  for c in query_columns] + list(schema)[1:]
    return pa.schema(fields)


def block_table(block, base, query_columns=()) -> pa.RecordBatch:
    """The neighbor rows of one searched block (neighbors not found, with fewer than k rows, are left out)."""
    batch = neighbor_batch(block.ids, block.topk, base)
    if query_columns:
        found_per_query = (block.topk.indices >= 0).sum(axis=1)
        batch = _with_query_columns(batch, base, block.rows, query_columns, found_per_query)
    return batch


class Kept:
    """The first ``limit`` queries' (query_id, base rows, similarities): what a montage draws."""

    def __init__(self, limit: int):
        self.limit, self.queries = limit, []

    def add(self, block) -> None:
        for i in range(min(len(block.ids), self.limit - len(self.queries))):
            self.queries.append((block.ids[i].as_py(), block.topk.indices[i], block.topk.scores[i]))


def write_neighbors(blocks, base, sink, query_columns=(), observers=()) -> int:
    """Write every block's neighbor rows to ``sink`` (see galtools.io.sink); each observer's ``add(block)`` sees
    each block. Returns the rows written."""
    return write_blocks(blocks, sink, neighbors_schema(base, query_columns),
                        lambda block: block_table(block, base, query_columns), observers)


def write_blocks(blocks, sink, schema: pa.Schema, rows_of, observers=()) -> int:
    """Write ``rows_of(block)`` of every block to ``sink`` (an empty shard still writes an empty table of
    ``schema``); each observer's ``add(block)`` sees each block. Returns the rows written."""
    sink.expect_schema(schema)
    written = 0
    for block in blocks:
        for observer in observers:
            observer.add(block)
        batch = rows_of(block)
        sink.write(batch)
        written += batch.num_rows
    return written


class FirstRows:
    """A sink keeping only the first ``limit`` rows (a terminal shows no more), counting the rest."""

    def __init__(self, limit: int):
        self.limit, self.batches, self.rows, self.schema = limit, [], 0, None

    def expect_schema(self, schema: pa.Schema) -> None:
        self.schema = schema

    def write(self, batch: pa.RecordBatch) -> None:
        room = self.limit - sum(b.num_rows for b in self.batches)
        if room > 0:
            self.batches.append(batch.slice(0, room))
        self.rows += batch.num_rows

    def table(self) -> pa.Table:
        return pa.Table.from_batches(self.batches, schema=self.schema)
