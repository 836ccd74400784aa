"""Conversions between numpy arrays and the Arrow columns that hold images and embeddings.

Images are Arrow's canonical ``fixed_shape_tensor`` extension type (float32, shape (bands, H, W)); embeddings are
``fixed_size_list<float32>[D]``.  Both convert without copying where Arrow's memory layout allows it.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from galtools.errors import BadData

IMAGE = "image"
EMBEDDING = "embedding"


def _single_chunk(column):
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column


def is_tensor_type(arrow_type) -> bool:
    return isinstance(arrow_type, pa.FixedShapeTensorType)


def tensor_column(images: np.ndarray) -> pa.ExtensionArray:
    """A fixed_shape_tensor column from an (n, bands, H, W) array (cast to contiguous float32)."""
    images = np.ascontiguousarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be (n, bands, H, W), got shape {images.shape}")
    if len(images) == 0:   # from_numpy_ndarray refuses empty arrays; build the (empty) storage directly
        tensor_type = pa.fixed_shape_tensor(pa.float32(), images.shape[1:])
        storage = pa.FixedSizeListArray.from_arrays(pa.array([], pa.float32()), int(np.prod(images.shape[1:])))
        return pa.ExtensionArray.from_storage(tensor_type, storage)
    return pa.FixedShapeTensorArray.from_numpy_ndarray(images)


def check_image_type(arrow_type, name: str) -> tuple[int, int, int]:
    """The (bands, H, W) of an image column; BadData for tensors of another rank, e.g. (N, H, W) images."""
    shape = tuple(arrow_type.shape)
    if len(shape) != 3:
        described = " x ".join(str(n) for n in shape)
        raise BadData(f"{name}: images are {described} tensors, not bands x height x width",
                      "add the band axis (one-band images are 1 x H x W), e.g. by re-packing with gal-pack")
    return shape


def _column(data, column: str, hint: str):
    """One column of a RecordBatch or Table as a single array; BadData naming the columns there are."""
    if column not in data.schema.names:
        raise BadData(f"the table has no '{column}' column (columns: {', '.join(data.schema.names)})", hint)
    return _single_chunk(data.column(column))


def images_of(data, column: str = IMAGE) -> np.ndarray:
    """The (n, bands, H, W) float32 images of a RecordBatch or Table."""
    col = _column(data, column, "give a cutout table, e.g. one made by gal-pack or gal-sim")
    if not is_tensor_type(col.type):
        raise BadData(f"column '{column}' is {col.type}, not an image tensor",
                      "give a cutout table made by gal-pack or gal-sim")
    shape = check_image_type(col.type, f"column '{column}'")
    if len(col) == 0:
        return np.zeros((0, *shape), np.float32)
    return col.to_numpy_ndarray().astype(np.float32, copy=False)


def vector_column(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """A fixed_size_list<float32|float16>[D] column from an (n, D) array."""
    vectors = np.ascontiguousarray(vectors)
    if vectors.dtype not in (np.float32, np.float16):
        vectors = vectors.astype(np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be (n, D), got shape {vectors.shape}")
    flat = pa.array(vectors.reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


def finite_rows(values: np.ndarray) -> np.ndarray:
    """One bool per row of (n, ...) ``values``: whether all its values are finite."""
    return np.isfinite(values.reshape(len(values), -1)).all(axis=1)


def check_finite(finite: np.ndarray, what: str, ids=None, hint: str = "re-embed those objects or drop them",
                 shown: int = 5) -> None:
    """The one check for NaN and infinite values: ``finite`` holds one bool per row (see :func:`finite_rows`);
    when any is False, BadData ``N {what} (object_id a, b, ...)`` naming the first ``shown`` of those rows by
    ``ids`` (object_ids, one per row), else by row number."""
    if finite.all():
        return
    bad = np.flatnonzero(~finite)
    named = [str(ids[i]) for i in bad[:shown]] if ids is not None else [str(i) for i in bad[:shown]]
    more = ", ..." if bad.size > shown else ""
    raise BadData(f"{bad.size} {what} ({'object_id' if ids is not None else 'row'} {', '.join(named)}{more})", hint)


def finite_vectors_of(batch, name: str, column: str = EMBEDDING) -> np.ndarray:
    """vectors_of, refusing NaN or infinite values (BadData naming the first objects) where a model must score them."""
    vectors = vectors_of(batch, column)
    ids = batch.column("object_id").to_pylist() if "object_id" in batch.schema.names else None
    check_finite(finite_rows(vectors), f"embedding(s) of {name} hold NaN or infinite values", ids)
    return vectors


def vectors_of(data, column: str = EMBEDDING) -> np.ndarray:
    """The (n, D) float32 vectors of a fixed_size_list column of a RecordBatch or Table."""
    col = _column(data, column, "give an embedding table made by gal-embed")
    if not pa.types.is_fixed_size_list(col.type):
        raise BadData(f"column '{column}' is {col.type}, not a fixed-size vector",
                      "give an embedding table made by gal-embed")
    width = col.type.list_size
    # a slice (offset, or fewer rows than its buffer holds) or nulls: flatten() copies only the rows in view
    values = col.flatten() if col.offset or col.null_count or len(col.values) != len(col) * width else col.values
    out = values.to_numpy(zero_copy_only=False).reshape(len(col), width)
    return out.astype(np.float32, copy=False)
