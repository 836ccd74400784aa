"""An embedding table in memory for search: ids, unit vectors, the carried columns, the model and a checksum.

Exact search needs every base vector in memory: N x D x 4 bytes (128-d: 512 MB per million rows), plus the
carried columns.  The checksum (sha256 over the embedding values and the ids, independent of how the table is
split into batches or parts) ties a FAISS index to the exact table it was built from.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from galtools.errors import BadData
from galtools.io import vectors_of
from galtools.io.meta import MODEL_SHA256
from galtools.io.provenance import check_single_model
from galtools.search.exact import tie_ranks, unit_rows

OBJECT_ID = "object_id"
EMBEDDING = "embedding"
NOT_CARRIED = (EMBEDDING, "image")  # never copied into a neighbor table


class _Checksum:
    """sha256 of the embedding values (float32, little-endian) and the ids, whatever the batch boundaries."""

    def __init__(self):
        self.values = hashlib.sha256()
        self.id_lengths = hashlib.sha256()
        self.id_bytes = hashlib.sha256()

    def add(self, vectors: np.ndarray, ids: pa.Array) -> None:
        self.values.update(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        if pa.types.is_integer(ids.type):
            self.id_bytes.update(ids.cast(pa.int64()).to_numpy(zero_copy_only=False).astype("<i8").tobytes())
            return
        text = ids.cast(pa.large_string())
        offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)[text.offset: text.offset + len(text) + 1]
        self.id_lengths.update(np.diff(offsets).astype("<i8").tobytes())
        data = text.buffers()[2]
        if data is not None:
            self.id_bytes.update(memoryview(data)[int(offsets[0]): int(offsets[-1])])

    def hexdigest(self) -> str:
        return hashlib.sha256(self.values.digest() + self.id_lengths.digest() + self.id_bytes.digest()).hexdigest()


@dataclass
class EmbeddingSet:
    """Everything search needs from an embedding table, held in memory."""

    name: str
    ids: pa.Array                     # object_id, one chunk
    vectors: np.ndarray | None        # (N, D) float32 unit rows (cosine = inner product); None if not kept
    carried: pa.Table                 # the other columns (ra, dec, labels ...), row-aligned
    metadata: dict
    dim: int
    checksum: str | None = None
    _tie_rank: np.ndarray | None = field(default=None, repr=False)

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def model_sha256(self) -> str | None:
        return self.metadata.get(MODEL_SHA256) or None

    @property
    def tie_rank(self) -> np.ndarray:
        if self._tie_rank is None:
            self._tie_rank = tie_ranks(self.ids, self.count)
        return self._tie_rank

    def rows_of(self, query_ids) -> np.ndarray:
        """Row of each requested object_id (first occurrence); BadData (65) naming an unknown one."""
        wanted = _as_id_array(query_ids, self.id_type, self)
        rows = pc.index_in(wanted, value_set=self.ids)
        missing = np.flatnonzero(rows.is_null().to_numpy(zero_copy_only=False))
        if missing.size:
            raise _unknown_id(wanted[int(missing[0])].as_py(), self, missing.size - 1)
        return rows.to_numpy(zero_copy_only=False).astype(np.int64)

    @property
    def id_type(self) -> pa.DataType:
        return self.ids.type

    def ids_of(self, rows) -> pa.Array:
        """The object_ids of base rows (an int64 array or Arrow array; no -1)."""
        return pc.take(self.ids, pa.array(np.asarray(rows, dtype=np.int64), type=pa.int64()))

    def carried_rows(self, take: pa.Array, columns=None) -> pa.Table:
        """The carried columns (all, or ``columns``) of base rows ``take``."""
        carried = self.carried if columns is None else self.carried.select(list(columns))
        return carried.take(take)

    def carried_column(self, name: str) -> pa.Array:
        """One carried column, whole."""
        return self.carried.column(name).combine_chunks()


@dataclass
class RowReadEmbeddings(EmbeddingSet):
    """An embedding table searched through a compressed index: ids in memory, vectors and carried columns read by
    row from the open table (Parquet row groups or memory-mapped Arrow batches) only for the rows wanted.
    ``carried`` is empty: it names the columns."""

    table: object = None

    @property
    def tie_rank(self):
        """None: equal similarities keep the index's order (by row), no sort of every id."""
        return None

    def carried_rows(self, take: pa.Array, columns=None) -> pa.Table:
        from galtools.io.lookup import take_rows

        names = self.carried.column_names if columns is None else list(columns)
        return take_rows(self.table, take.to_numpy(zero_copy_only=False), names)

    def carried_column(self, name: str) -> pa.Array:
        return self.table.read_all(columns=[name]).column(name).combine_chunks()

    def close(self) -> None:
        self.table.close()


def row_read_embeddings(table, name: str) -> RowReadEmbeddings:
    """The ids of an embedding table (in memory) and a fingerprint of it, its other columns left in the file."""
    from galtools.search.scale import _check_embedding_table, read_ids_column, table_fingerprint

    dim = _check_embedding_table(table)
    ids = read_ids_column(table)
    columns = [c for c in table.schema.names if c not in NOT_CARRIED and c != OBJECT_ID]
    carried = pa.schema([table.schema.field(c) for c in columns]).empty_table()
    return RowReadEmbeddings(name=name, ids=ids, vectors=None, carried=carried, metadata=dict(table.metadata),
                             dim=dim, checksum=table_fingerprint(table, ids), table=table)


@dataclass
class LookupEmbeddings(RowReadEmbeddings):
    """A row-read table whose ids are found through the index's sorted id file (galtools.search.scale.IdLookup):
    no id column is read whole. The ids, if something asks for all of them (search over every row), are read then."""

    lookup: object = None

    def __post_init__(self):
        del self.ids                      # read on first use (__getattr__), never for a search by id

    def __getattr__(self, name):
        if name != "ids":
            raise AttributeError(name)
        from galtools.search.scale import read_ids_column

        self.ids = read_ids_column(self.table)
        return self.ids

    @property
    def count(self) -> int:
        return self.table.total_rows

    @property
    def id_type(self) -> pa.DataType:
        return self.table.schema.field(OBJECT_ID).type

    def rows_of(self, query_ids) -> np.ndarray:
        wanted = _as_id_array(query_ids, self.id_type, self)
        rows = self.lookup.rows_of(wanted)
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            raise _unknown_id(wanted[int(missing[0])].as_py(), self, missing.size - 1)
        self.lookup.check_found(wanted, self.ids_of(rows))
        return rows

    def ids_of(self, rows) -> pa.Array:
        from galtools.io.lookup import take_rows

        return take_rows(self.table, rows, [OBJECT_ID]).column(OBJECT_ID).combine_chunks()


def lookup_embeddings(table, name: str, lookup) -> LookupEmbeddings:
    """An embedding table searched through a compressed index with an id file: nothing read whole."""
    from galtools.search.scale import _check_embedding_table

    dim = _check_embedding_table(table)
    columns = [c for c in table.schema.names if c not in NOT_CARRIED and c != OBJECT_ID]
    carried = pa.schema([table.schema.field(c) for c in columns]).empty_table()
    return LookupEmbeddings(name=name, ids=None, vectors=None, carried=carried, metadata=dict(table.metadata),
                            dim=dim, table=table, lookup=lookup)


def _unknown_id(value, table: EmbeddingSet, others: int = 0) -> BadData:
    more = f" (and {others} more requested ids)" if others else ""
    return BadData(f"object_id {value!r}{more} not in {table.name}, which has {table.count} ids "
                   f"(e.g. {table.ids_of([0])[0].as_py()!r})", "check the id, or that the table is the right one")


def _as_id_array(query_ids, id_type: pa.DataType, table: EmbeddingSet) -> pa.Array:
    """Query ids (strings from the command line, or a column) in the table's id type."""
    from galtools.io.lookup import ids_in_type

    wanted, impossible = ids_in_type(query_ids, id_type)
    if impossible:
        raise _unknown_id(impossible[0], table)
    return wanted


def load_embeddings(table, *, checksum: bool = False, keep_vectors: bool = True,
                    name: str | None = None) -> EmbeddingSet:
    """Read a galtools.io Table of embeddings whole: ids, unit vectors, carried columns.

    Refuses (BadData, exit 65) a table without object_id or embedding, null ids, NaN/inf or all-zero vectors,
    and parts embedded by different models.  ``keep_vectors=False`` checks (and checksums) the vectors in one
    streaming pass without holding them: for search through a FAISS index, which holds them already.
    """
    name = name or table.name
    schema = table.schema
    for needed in (OBJECT_ID, EMBEDDING):
        if needed not in schema.names:
            raise BadData(f"{name} has no '{needed}' column (columns: {', '.join(schema.names)})",
                          "give an embedding table made by gal-embed")
    if not pa.types.is_fixed_size_list(schema.field(EMBEDDING).type):
        raise BadData(f"{name}: column 'embedding' is {schema.field(EMBEDDING).type}, not a fixed-size vector",
                      "give an embedding table made by gal-embed")
    check_single_model(table)
    dim = schema.field(EMBEDDING).type.list_size
    columns = [c for c in schema.names if c not in NOT_CARRIED]
    hasher = _Checksum() if checksum else None
    problems = _VectorProblems()
    total = table.num_rows
    vectors = np.empty((total, dim), dtype=np.float32) if keep_vectors and total is not None else None
    pieces, kept, filled = [], [], 0
    for batch in table.iter_batches(columns=columns + [EMBEDDING]):
        block = vectors_of(batch, EMBEDDING)
        ids = batch.column(OBJECT_ID)
        if ids.null_count:
            raise BadData(f"{name}: object_id has null values", "every row needs an object_id")
        problems.scan(block, ids)
        if hasher is not None:
            hasher.add(block, ids)
        if vectors is not None:
            vectors[filled: filled + len(block)] = block
        elif keep_vectors:  # a stream of unknown length
            pieces.append(np.array(block, dtype=np.float32))
        filled += len(block)
        kept.append(batch.select(columns))
    if filled == 0:
        raise BadData(f"{name} has no rows", "check the input and any --shard or filter")
    problems.raise_any(name)
    if keep_vectors and vectors is None:
        vectors = np.concatenate(pieces)
        pieces.clear()
    if vectors is not None:
        unit_rows(vectors, out=vectors)
    carried = pa.Table.from_batches(kept, schema=pa.schema([schema.field(c) for c in columns])).combine_chunks()
    ids = carried.column(OBJECT_ID).combine_chunks()
    return EmbeddingSet(name=name, ids=ids, vectors=vectors, carried=carried.drop_columns([OBJECT_ID]),
                        metadata=dict(table.metadata), dim=dim, checksum=hasher.hexdigest() if hasher else None)


class _VectorProblems:
    """Counts NaN/inf and all-zero embeddings batch by batch, remembering the first object_id of each."""

    def __init__(self):
        self.nonfinite, self.zero = 0, 0
        self.first_nonfinite = self.first_zero = None

    def scan(self, block: np.ndarray, ids: pa.Array) -> None:
        nonfinite = np.flatnonzero(~np.isfinite(block).all(axis=1))
        zero = np.flatnonzero(~block.any(axis=1))
        if nonfinite.size and self.first_nonfinite is None:
            self.first_nonfinite = ids[int(nonfinite[0])].as_py()
        if zero.size and self.first_zero is None:
            self.first_zero = ids[int(zero[0])].as_py()
        self.nonfinite += nonfinite.size
        self.zero += zero.size

    def raise_any(self, name: str) -> None:
        if self.nonfinite:
            raise BadData(f"{name}: {self.nonfinite} embedding(s) hold NaN or infinite values (first: object_id "
                          f"{self.first_nonfinite!r})", "re-embed those objects or drop them")
        if self.zero:
            raise BadData(f"{name}: {self.zero} embedding(s) are all zeros (first: object_id {self.first_zero!r}); "
                          "cosine similarity is undefined for them", "re-embed those objects or drop them")


def neighbor_batch(queries_ids: pa.Array, topk, base: EmbeddingSet, *, drop_missing: bool = True) -> pa.RecordBatch:
    """The neighbor table for one block of queries: query_id, rank (1 = most similar, or least with
    --least), neighbor_id, similarity, then the neighbor's carried columns prefixed ``neighbor_``."""
    n_queries, k = topk.indices.shape
    flat_rows = topk.indices.ravel()
    query_of = np.repeat(np.arange(n_queries), k)
    rank = np.tile(np.arange(1, k + 1, dtype=np.int32), n_queries)
    scores = topk.scores.ravel()
    if drop_missing:
        found = flat_rows >= 0
        flat_rows, query_of, rank, scores = flat_rows[found], query_of[found], rank[found], scores[found]
    take = pa.array(flat_rows, type=pa.int64())
    columns = {
        "query_id": pc.take(queries_ids, pa.array(query_of, type=pa.int64())),
        "rank": pa.array(rank, type=pa.int32()),
        "neighbor_id": base.ids_of(flat_rows),
        "similarity": pa.array(scores, type=pa.float32()),
    }
    carried = base.carried_rows(take)
    for column in carried.column_names:
        columns[f"neighbor_{column}"] = carried.column(column).combine_chunks()
    columns["query_id"] = columns["query_id"].combine_chunks() if isinstance(columns["query_id"], pa.ChunkedArray) \
        else columns["query_id"]
    return pa.RecordBatch.from_pydict(columns)


def neighbor_schema(base: EmbeddingSet) -> pa.Schema:
    """Columns of the neighbor table for ``base`` (what an empty result is written with)."""
    from galtools.search.exact import TopK

    empty = TopK(indices=np.empty((0, 1), np.int64), scores=np.empty((0, 1), np.float32))
    return neighbor_batch(pa.array([], type=base.id_type), empty, base).schema
