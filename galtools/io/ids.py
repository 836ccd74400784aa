"""Refusing repeated object_ids where a tool looks objects up by id (a part concatenated twice, a shard re-run)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from galtools.errors import BadData

OBJECT_ID = "object_id"
SHOWN = 3   # duplicates named in the message
HINT = ("a part given twice, or a shard written twice? find them all with SQL, e.g. duckdb: SELECT object_id "
        "FROM 'FILE' GROUP BY 1 HAVING count(*) > 1; keep one row per object")


def _raise(name: str, repeated: list, total_repeated: int) -> None:
    shown = ", ".join(repr(v) for v in repeated[:SHOWN]) + (" ..." if total_repeated > SHOWN else "")
    raise BadData(f"{name}: {total_repeated} object_id(s) appear more than once (first: {shown})", HINT)


class UniqueIds:
    """Checks object_ids batch by batch as a table streams past: ``seen.add(batch.column('object_id'))``."""

    def __init__(self, name: str):
        self.name = name
        self._seen: set = set()

    def add(self, ids) -> None:
        values = ids.to_pylist() if isinstance(ids, (pa.Array, pa.ChunkedArray)) else list(ids)
        repeated = []
        for value in values:
            if value in self._seen:
                repeated.append(value)
            self._seen.add(value)
        if repeated:
            ordered = list(dict.fromkeys(repeated))
            _raise(self.name, ordered, len(ordered))


def check_unique_ids(ids_or_path, name: str | None = None) -> None:
    """Raise BadData (exit 65) naming the first repeated object_ids and how to find them.

    ``ids_or_path``: the ids (an Arrow array, a list), a table with an object_id column, or the path of a table
    (its object_id column alone is read; '-' cannot be read twice and is not checked here)."""
    if isinstance(ids_or_path, str):
        if ids_or_path == "-":
            return
        from galtools.io.table import open_table

        with open_table(ids_or_path) as table:
            if OBJECT_ID not in table.schema.names:
                return
            ids = pa.chunked_array([b.column(OBJECT_ID) for b in table.iter_batches(columns=[OBJECT_ID])],
                                   type=table.schema.field(OBJECT_ID).type)
        name = name or ids_or_path
    elif isinstance(ids_or_path, (pa.Table, pa.RecordBatch)):
        if OBJECT_ID not in ids_or_path.schema.names:
            return
        ids = ids_or_path.column(OBJECT_ID)
    else:
        ids = ids_or_path if isinstance(ids_or_path, (pa.Array, pa.ChunkedArray)) else pa.array(list(ids_or_path))
    name = name or "the table"
    if len(ids) == 0:
        return
    import pyarrow.compute as pc

    counts = pc.value_counts(ids)
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(repeated):
        first = pc.filter(ids, pc.is_in(ids, value_set=repeated))   # in the table's order
        ordered = list(dict.fromkeys(first.to_pylist()))
        _raise(name, ordered, len(repeated))


def id_fingerprints(ids) -> np.ndarray:
    """A uint64 fingerprint per object_id (an Arrow array or a list), to tell later whether other rows are the
    same objects: an integer is its own value, anything else the first 8 bytes of the blake2b of its text; a
    null is 0."""
    import hashlib

    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if not isinstance(ids, pa.Array):
        ids = pa.array(list(ids))
    if pa.types.is_integer(ids.type):
        return ids.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False).view(np.uint64)
    return np.array([0 if v is None else int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(),
                                                        "little") for v in ids.to_pylist()], dtype=np.uint64)


def labelled_fingerprints(ids, labels) -> np.ndarray:
    """A uint64 fingerprint per (object_id, label) pair: an object_id's fingerprint (id_fingerprints) mixed with
    its label rounded to float32, so that two tables that reuse the same ids for other objects (two gal-sim runs)
    do not match, while the same object with the same label does, whatever float width holds the label."""
    bits = np.ascontiguousarray(np.asarray(labels, dtype=np.float64).astype(np.float32)).view(np.uint32)
    mixed = bits.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return id_fingerprints(ids) ^ (mixed ^ (mixed >> np.uint64(29)))
