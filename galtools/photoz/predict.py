"""Predicting redshifts for an embedding table, batch by batch (numpy only; memory bounded by one batch)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa

from galtools.errors import BadData, UsageProblem
from galtools.io import EMBEDDING, IMAGE, MODEL_SHA256, open_output, open_table, vector_column
from galtools.io.tensor import finite_vectors_of
from galtools.photoz.metrics import normalised_residuals
from galtools.photoz.model import PhotozModel

log = logging.getLogger("galtools")

BINS_KEY = "galtools.photoz.bins"      # "n_bins,zmax" of the model that made the predictions
PREDICTION_COLUMNS = ("z_phot", "z_phot_mode", "z_phot_std", "z_pdf", "dz", "abs_dz")
NOT_CARRIED = (IMAGE,) + PREDICTION_COLUMNS     # the embedding is carried: gal-photoz predict | gal-ood score -


def prediction_batch(batch: pa.RecordBatch, model: PhotozModel, with_pdf: bool, name: str,
                     keep_embedding: bool = True, truth: str | None = None) -> pa.RecordBatch:
    """The batch's carried columns followed by z_phot, z_phot_mode, z_phot_std (and z_pdf; and with ``truth``,
    dz = (z_phot - truth) / (1 + truth) and |dz|, NaN where the truth is missing)."""
    x = finite_vectors_of(batch, name)
    out = model.predict(x)
    dropped = NOT_CARRIED if keep_embedding else NOT_CARRIED + (EMBEDDING,)
    columns = {c: batch.column(c) for c in batch.schema.names if c not in dropped}
    columns["z_phot"] = pa.array(out["z_phot"], pa.float32())
    columns["z_phot_mode"] = pa.array(out["z_phot_mode"], pa.float32())
    columns["z_phot_std"] = pa.array(out["z_phot_std"], pa.float32())
    if with_pdf:
        columns["z_pdf"] = vector_column(out["z_pdf"].astype(np.float32))
    if truth is not None:
        z_true = np.asarray(batch.column(truth).to_numpy(zero_copy_only=False), dtype=np.float64)
        dz = normalised_residuals(out["z_phot"], z_true)
        columns["dz"] = pa.array(dz, pa.float32())
        columns["abs_dz"] = pa.array(np.abs(dz), pa.float32())
    return pa.RecordBatch.from_pydict(columns)


def predict_table(source: str, model: PhotozModel, check_embeddings, output: str, *, fmt=None, overwrite=False,
                  with_pdf=True, keep_embedding=True, truth=None, shard=None, seed=None, progress=None,
                  encoder: str | None = None, device: str = "auto", strict: bool = False) -> int:
    """Write the predictions for every row of ``source``; returns the number of rows written.

    ``source`` holds embeddings, or cutouts that are embedded on the way with the model's own fine-tuned encoder
    or ``encoder`` (an encoder.onnx, run by gal-embed's library).  ``check_embeddings(dim, model_sha256, name)``
    raises when the embeddings do not fit the model.
    """
    name = "stdin" if source == "-" else source
    with open_table(source, shard=shard) as table:
        from_cutouts = EMBEDDING not in table.schema.names and IMAGE in table.schema.names
        if EMBEDDING not in table.schema.names and not from_cutouts:
            raise BadData(f"{name} has no '{EMBEDDING}' column (columns: {', '.join(table.schema.names)})",
                          "give an embedding table made by gal-embed, or a cutout table")
        _check_truth(table.schema, truth, name)
        if from_cutouts:
            return _predict_cutouts(table, name, model, check_embeddings, output, fmt, overwrite, with_pdf,
                                    keep_embedding, truth, seed, progress, encoder, device, strict)
        field = table.schema.field(EMBEDDING)
        if not pa.types.is_fixed_size_list(field.type):
            raise BadData(f"{name}: column 'embedding' is {field.type}, not a fixed-size vector",
                          "give an embedding table made by gal-embed")
        from galtools.search.table import check_single_model

        check_single_model(table)
        check_embeddings(field.type.list_size, table.metadata.get(MODEL_SHA256) or None, name)
        columns = [c for c in table.schema.names if c not in (IMAGE,) + PREDICTION_COLUMNS]
        with open_output(output, overwrite=overwrite, fmt=fmt, metadata=_metadata(table.metadata, model),
                         tool="gal-photoz", seed=seed) as out:
            for batch in table.iter_batches(columns=columns):
                out.write(prediction_batch(batch, model, with_pdf, name, keep_embedding, truth))
                if progress is not None:
                    progress(batch.num_rows)
            if out.rows == 0:
                empty = pa.RecordBatch.from_pylist([], schema=pa.schema([table.schema.field(c) for c in columns]))
                out.expect_schema(prediction_batch(empty, model, with_pdf, name, keep_embedding, truth).schema)
            return out.rows


def _check_truth(schema, truth, name) -> None:
    if truth is None:
        return
    if truth not in schema.names:
        raise BadData(f"{name} has no '{truth}' column (columns: {', '.join(schema.names)})",
                      "name the true redshift column with --truth, or leave --truth out")
    if not (pa.types.is_floating(schema.field(truth).type) or pa.types.is_integer(schema.field(truth).type)):
        raise BadData(f"{name}: column '{truth}' is {schema.field(truth).type}, not numeric",
                      "name the true redshift column with --truth")


def _metadata(table_metadata: dict, model: PhotozModel) -> dict:
    metadata = dict(table_metadata)
    metadata[BINS_KEY] = f"{model.bins.n_bins},{model.bins.zmax:g}"
    metadata["galtools.photoz.model"] = json.dumps({"kind": model.kind, "seed": model.info.get("seed"),
                                                     "z_column": model.info.get("z_column")})
    return metadata


class _PredictingOutput:
    """What gal-embed's embed_table writes to: each embedded batch becomes a prediction batch in ``out``."""

    def __init__(self, out, model, name, with_pdf, keep_embedding, truth, progress):
        self.out, self.model, self.name = out, model, name
        self.options = (with_pdf, keep_embedding, truth)
        self.progress = progress
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        with_pdf, keep_embedding, truth = self.options
        self.out.write(prediction_batch(batch, self.model, with_pdf, self.name, keep_embedding, truth))
        self.rows += batch.num_rows
        if self.progress is not None:
            self.progress(batch.num_rows)

    def expect_schema(self, schema: pa.Schema) -> None:
        with_pdf, keep_embedding, truth = self.options
        empty = pa.RecordBatch.from_pylist([], schema=schema)
        self.out.expect_schema(prediction_batch(empty, self.model, with_pdf, self.name, keep_embedding, truth).schema)


def _predict_cutouts(table, name, model, check_embeddings, output, fmt, overwrite, with_pdf, keep_embedding, truth,
                     seed, progress, encoder_path, device, strict=False) -> int:
    import os
    import tempfile

    from galtools.embed import EmbedSettings, embed_table, load_encoder, output_metadata

    if model.encoder_onnx is None and encoder_path is None:
        raise UsageProblem(f"{name} holds cutouts and the model has no encoder of its own",
                           "pass --encoder encoder.onnx (the one whose embeddings the model was fitted on), "
                           "or embed first: gal-embed CUTOUTS --model encoder.onnx | gal-photoz predict - ...")
    folder = None
    try:
        if encoder_path is None:           # the fine-tuned encoder stored in the model file
            folder = tempfile.mkdtemp(prefix="galtools-photoz-")
            encoder_path = os.path.join(folder, "encoder.onnx")
            with open(encoder_path, "wb") as handle:
                handle.write(model.encoder_onnx)
        encoder = load_encoder(encoder_path, EmbedSettings(device=device))
        for note in encoder.notes:
            log.info(note)
        check_embeddings(encoder.info.embedding_dim, encoder.info.sha256, name)
        metadata = _metadata(output_metadata(table.metadata, encoder, name), model)
        with open_output(output, overwrite=overwrite, fmt=fmt, metadata=metadata, tool="gal-photoz",
                         seed=seed) as out:
            embed_table(table, encoder, _PredictingOutput(out, model, name, with_pdf, keep_embedding, truth,
                                                          progress), strict=strict)
            return out.rows
    finally:
        if folder is not None:
            for entry in os.listdir(folder):
                os.unlink(os.path.join(folder, entry))
            os.rmdir(folder)


def bins_of(metadata: dict) -> tuple[int, float] | None:
    """(n_bins, zmax) recorded by predict_table, or None."""
    text = metadata.get(BINS_KEY)
    if not text:
        return None
    try:
        n_bins, zmax = text.split(",")
        return int(n_bins), float(zmax)
    except ValueError:
        return None
