"""An embedding table opened for a head, checked once: the embedding column, its dimension, one encoder, and
finite vectors batch by batch.

    with open_embeddings("emb.parquet", shard=shard) as source:
        source.check(head, log)                       # dimension and encoder of the model
        for batch in source.table.iter_batches(): x = checked_vectors(batch, source.name)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from galtools.errors import BadData
from galtools.io import EMBEDDING, IMAGE, MODEL_SHA256, display_name, open_table, vectors_of
from galtools.io.provenance import check_single_model

OBJECT_ID = "object_id"
EMBED_HINT = "give an embedding table made by gal-embed"


def check_embedding_column(schema: pa.Schema, name: str, hint: str | None = None) -> int:
    """The embedding dimension; BadData (65) when the table has no fixed-size embedding column (``hint``: what to
    do then; by default, embed a cutout table first)."""
    if EMBEDDING not in schema.names:
        if hint is None:
            hint = "embed the cutouts first with gal-embed" if IMAGE in schema.names else EMBED_HINT
        elif IMAGE not in schema.names and hint.startswith("embed the cutouts"):
            hint = EMBED_HINT
        raise BadData(f"{name} has no '{EMBEDDING}' column (columns: {', '.join(schema.names)})", hint)
    field_type = schema.field(EMBEDDING).type
    if not pa.types.is_fixed_size_list(field_type):
        raise BadData(f"{name}: column '{EMBEDDING}' is {field_type}, not a fixed-size vector", EMBED_HINT)
    return field_type.list_size


def check_numeric_column(schema: pa.Schema, column: str, name: str, fix: str, booleans: bool = False) -> None:
    """BadData when ``column`` is missing or not numeric (``fix`` says which option names it)."""
    if column not in schema.names:
        raise BadData(f"{name} has no '{column}' column (columns: {', '.join(schema.names)})", fix)
    kind = schema.field(column).type
    if not (pa.types.is_floating(kind) or pa.types.is_integer(kind) or (booleans and pa.types.is_boolean(kind))):
        raise BadData(f"{name}: column '{column}' is {kind}, not numeric", fix)


def require_columns(schema: pa.Schema, columns, name: str, fix: str = EMBED_HINT) -> None:
    for column in columns:
        if column not in schema.names:
            raise BadData(f"{name} has no '{column}' column (columns: {', '.join(schema.names)})", fix)


@dataclass
class EmbeddingSource:
    """An open table of embeddings whose column, dimension and single encoder have been checked."""

    table: object
    name: str
    dim: int
    model_sha256: str | None

    def check(self, head, log=None) -> None:
        """BadData (65) when these embeddings do not fit ``head`` (dimension, encoder)."""
        head.check_embeddings(self.dim, self.model_sha256, self.name, log)


def checked_source(table, name: str, hint: str | None = None) -> EmbeddingSource:
    """Check an open table as an embedding source."""
    dim = check_embedding_column(table.schema, name, hint)
    check_single_model(table)
    return EmbeddingSource(table, name, dim, table.metadata.get(MODEL_SHA256) or None)


@contextlib.contextmanager
def open_embeddings(path: str, shard=None, hint: str | None = None):
    """Open ``path`` (a file, folder of parts, or '-') as a checked EmbeddingSource."""
    name = display_name(path)
    with open_table(path, shard=shard) as table:
        yield checked_source(table, name, hint)


def _first_object(batch: pa.RecordBatch, row: int) -> str:
    if OBJECT_ID in batch.schema.names:
        return f"object_id {batch.column(OBJECT_ID)[row].as_py()!r}"
    return f"row {row} of a batch"


def checked_vectors(batch: pa.RecordBatch, name: str, unit: bool = False) -> np.ndarray:
    """The batch's (n, D) float32 embeddings; BadData naming the first object whose vector holds NaN or infinite
    values (or, with ``unit``, is all zeros). With ``unit`` the rows are scaled to unit length."""
    x = vectors_of(batch)
    if unit:
        x = np.array(x, dtype=np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
        bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    else:
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        problem = "all zeros" if unit and np.isfinite(norms[bad[0]]) else "NaN or infinite values"
        raise BadData(f"{name}: {bad.size} embedding(s) of this batch hold {problem} (first: "
                      f"{_first_object(batch, int(bad[0]))})", "re-embed those objects or drop them")
    return x / norms[:, None].astype(np.float32) if unit else x


def check_finite_rows(x: np.ndarray, name: str) -> None:
    """BadData when labelled embeddings held in memory hold NaN or infinite values."""
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise BadData(f"{name}: {bad.size} labelled embedding(s) hold NaN or infinite values",
                      "re-embed those objects or drop them")
