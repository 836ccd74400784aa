"""Embedding a cutout table: every row in order, ``object_id`` and the other columns carried, ``embedding`` added."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from galtools.embed.checks import PIXSCALE_COLUMN, ConditionCheck
from galtools.embed.inputs import FILL_HINT, NONFINITE_PIXELS, InputPlan, Preparer
from galtools.embed.pipeline import Pipeline
from galtools.errors import BadData, UsageProblem
from galtools.io import BANDS, EMBEDDING, IMAGE, MODEL_SHA256, images_of, vector_column
from galtools.io import meta
from galtools.io.tensor import check_finite

DTYPES = {"float32": (np.float32, pa.float32()), "float16": (np.float16, pa.float16())}


@dataclass
class EmbedStats:
    rows: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")


def output_schema(input_schema: pa.Schema, dim: int, dtype: str) -> pa.Schema:
    carried = [f for f in input_schema if f.name != IMAGE]
    if EMBEDDING in [f.name for f in carried]:
        raise BadData(f"the input already has an '{EMBEDDING}' column", "embed a cutout table, not an embedding table")
    return pa.schema(carried + [pa.field(EMBEDDING, pa.list_(DTYPES[dtype][1], dim))])


def output_metadata(table_metadata: dict, encoder, input_name: str) -> dict:
    """The input's metadata (history included: the output appends to it) plus what names the model and the input."""
    info = encoder.info
    metadata = dict(table_metadata)
    metadata.update({
        MODEL_SHA256: info.sha256,
        meta.MODEL: os.path.basename(info.path),
        meta.MODEL_ARCH: info.arch,
        meta.EMBEDDING_DIM: str(info.embedding_dim),
        BANDS: ",".join(info.bands),          # the bands the embedding was made from
        meta.EMBED_INPUT: input_name,
        meta.EMBED_PRECISION: encoder.precision,
        meta.EMBED_PROVIDER: encoder.provider,
    })
    if hasattr(encoder, "precision_metadata"):
        metadata.update(encoder.precision_metadata())
    return metadata


def fixed_batches(batches: Iterable[pa.RecordBatch], size: int) -> Iterator[pa.RecordBatch]:
    """Record batches of exactly ``size`` rows (the last may be shorter): a GPU runs one shape, and the row order
    is kept whatever the input's own batching (Parquet row groups, parts, pipe chunks)."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        held += batch.num_rows
        while held >= size:
            merged = pa.Table.from_batches(pending).combine_chunks()
            yield merged.slice(0, size).to_batches(max_chunksize=size)[0]
            rest = merged.slice(size)
            pending = rest.to_batches() if rest.num_rows else []
            held = rest.num_rows
    if held:
        merged = pa.Table.from_batches(pending).combine_chunks()
        yield merged.to_batches(max_chunksize=size)[0]


def check_finite_embeddings(values: np.ndarray, carried: pa.RecordBatch, model_name: str, dtype: str,
                            rows_before: int) -> None:
    """A model that gives NaN or infinite embeddings for finite inputs (damaged or diverged weights) is refused,
    naming the first row: NaN vectors compare as nobody's neighbour and would poison every later step."""
    finite = np.isfinite(values).all(axis=1)
    if finite.all():
        return
    first = int(np.argmin(finite))
    who = (f"object_id {carried.column('object_id')[first].as_py()}" if "object_id" in carried.schema.names
           else f"row {rows_before + first}")
    beyond = " or beyond float16's range" if dtype == "float16" else ""
    raise BadData(f"{model_name} gives NaN or infinite embeddings{beyond} for {int((~finite).sum())} of "
                  f"{len(finite)} finite cutouts in a batch (first: {who})",
                  "the model is damaged (check its weights) or, with --dtype float16, write float32")


def embed_table(table, encoder, out, dtype: str = "float32", batch_size: int = 256, on_rows=None,
                on_batch=None, strict: bool = False, band_map: dict | None = None) -> EmbedStats:
    """Embed every row of ``table`` (a galtools.io Table) with ``encoder`` into ``out`` (a sink: an open Output, or
    any object with ``expect_schema`` and ``write``, see galtools.io.sink). ``on_batch(batch)`` sees each input
    batch as it is read (e.g. to keep some pictures from a pipe, which cannot be read twice).

    The table's pixel scale and flux unit are compared with the model's (embed.checks: warnings, errors when
    ``strict``); ``band_map`` ({model band: table band}) feeds model bands from other planes on purpose."""
    if dtype not in DTYPES:
        raise UsageProblem(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    image_shape = table.require_images()
    plan = InputPlan.for_table(encoder.info, table.bands, image_shape, table.name, encoder.info.path, band_map)
    conditions = ConditionCheck(encoder.info.metadata, table.name, encoder.info.path, strict)
    conditions.check_table(table.metadata)
    per_object_scale = PIXSCALE_COLUMN in table.schema.names
    schema = output_schema(table.schema, encoder.info.embedding_dim, dtype)
    out.expect_schema(schema)
    preparer = Preparer(plan, encoder.prepare_workers)
    batches = fixed_batches(table.iter_batches(batch_size=batch_size), batch_size)
    if getattr(encoder, "pending", None) is not None:   # int8, bf16, auto: decided on the table's first cutouts
        try:
            batches = encoder.pending.settle(batches, preparer, table.name)
        except BaseException:
            preparer.close()
            raise
        set_metadata = getattr(out, "set_metadata", None)   # an Output records it; a bare sink need not
        for key, value in encoder.precision_metadata().items():
            if set_metadata is not None:
                set_metadata(key, value)
    runner, dim, np_dtype = encoder.runner, encoder.info.embedding_dim, DTYPES[dtype][0]
    carried_names = [f.name for f in schema if f.name != EMBEDDING]
    stats = EmbedStats()

    def produce():
        for batch in batches:
            if on_batch is not None:
                on_batch(batch)
            if per_object_scale:
                ids = batch.column("object_id").to_pylist() if "object_id" in batch.schema.names else None
                conditions.check_rows(batch.column(PIXSCALE_COLUMN).to_numpy(zero_copy_only=False), ids)
            prepared, finite_rows = preparer(images_of(batch))
            if not finite_rows.all():
                ids = batch.column("object_id").to_pylist() if "object_id" in batch.schema.names else None
                check_finite(finite_rows, NONFINITE_PIXELS, ids, FILL_HINT)
            carried = pa.RecordBatch.from_arrays([batch.column(n) for n in carried_names], names=carried_names)
            yield carried, runner.stage(prepared)

    def infer(item):
        carried, staged = item
        return carried, runner.run(staged)

    def write(item):
        carried, embedding = item
        if embedding.shape != (carried.num_rows, dim):
            raise BadData(f"the model returned embeddings of shape {embedding.shape} for {carried.num_rows} cutouts, "
                          f"its metadata promises {dim} dimensions", "re-export the model with gal-train export")
        values = embedding.astype(np_dtype, copy=False)
        check_finite_embeddings(values, carried, encoder.info.path, dtype, stats.rows)
        column = vector_column(values)
        out.write(pa.RecordBatch.from_arrays([*carried.columns, column], names=schema.names))
        stats.rows += carried.num_rows
        if on_rows is not None:
            on_rows(carried.num_rows)

    start = time.perf_counter()
    try:
        # With I/O binding, the ring of device buffers bounds the prepared batches in flight (see runner.RING).
        Pipeline(produce(), write, prepare_depth=runner.max_queued).run(infer)
    finally:
        preparer.close()
    stats.seconds = time.perf_counter() - start
    return stats
