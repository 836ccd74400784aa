"""The neighbors of every object as one row per object (what a HATS catalogue out of ``gal-knn --all`` holds): the
object's id and carried columns (its coordinates among them), then neighbor_id and similarity, each a list of k
(most similar first; null where an approximate index found fewer)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def _fixed_lists(values: pa.Array, k: int) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(values, k)


def object_batch(block, base, k: int) -> pa.RecordBatch:
    """One row per query of ``block`` (queries that are rows of ``base``)."""
    rows = np.asarray(block.topk.indices, dtype=np.int64)
    flat = rows.ravel()
    missing = flat < 0
    neighbor_ids = pc.take(base.ids, pa.array(np.where(missing, 0, flat), mask=missing, type=pa.int64()))
    scores = pa.array(np.asarray(block.topk.scores, dtype=np.float32).ravel(), mask=missing, type=pa.float32())
    carried = base.carried_rows(pa.array(np.asarray(block.rows, dtype=np.int64), type=pa.int64()))
    ids = block.ids.combine_chunks() if isinstance(block.ids, pa.ChunkedArray) else block.ids
    names = ["object_id", *carried.column_names, "neighbor_id", "similarity"]
    arrays = [ids, *(c.combine_chunks() for c in carried.columns), _fixed_lists(neighbor_ids, k),
              _fixed_lists(scores, k)]
    return pa.RecordBatch.from_arrays(arrays, names=names)


def objects_schema(base, k: int) -> pa.Schema:
    """The columns of :func:`object_batch` (what an empty shard is written with)."""
    fields = [pa.field("object_id", base.ids.type), *base.carried.schema,
              pa.field("neighbor_id", pa.list_(base.ids.type, k)), pa.field("similarity", pa.list_(pa.float32(), k))]
    return pa.schema(fields)


def write_objects(blocks, base, sink, k: int, observers=()) -> int:
    """Write one row per query of every block to ``sink``; each observer's ``add(block)`` sees each block."""
    from galtools.search.neighbors import write_blocks

    return write_blocks(blocks, sink, objects_schema(base, k), lambda block: object_batch(block, base, k), observers)
