"""Predicting redshifts for an embedding table, batch by batch (galtools.heads' apply loop; numpy only), or for a
cutout table embedded on the way by the model's own fine-tuned encoder or a given encoder.onnx."""
from __future__ import annotations

import json
import logging
import os
import tempfile

import numpy as np
import pyarrow as pa

from galtools.errors import UsageProblem
from galtools.heads.apply import HeadSink, Task, apply_to, output_metadata
from galtools.heads.source import check_numeric_column, checked_source
from galtools.io import EMBEDDING, IMAGE, vector_column
from galtools.photoz.metrics import normalised_residuals
from galtools.photoz.model import PhotozModel

log = logging.getLogger("galtools")

BINS_KEY = "galtools.photoz.bins"      # "n_bins,zmax" of the model that made the predictions
MODEL_KEY = "galtools.photoz.model"    # JSON: the kind, seed and z column of that model (and where its file is)
PREDICTION_COLUMNS = ("z_phot", "z_phot_mode", "z_phot_std", "z_pdf", "dz", "abs_dz")
CUTOUTS_HINT = "give an embedding table made by gal-embed, or a cutout table"


def prediction_task(model: PhotozModel, with_pdf: bool = True, keep_embedding: bool = True,
                    truth: str | None = None) -> Task:
    """z_phot, z_phot_mode, z_phot_std (and z_pdf; and with ``truth``, dz = (z_phot - truth) / (1 + truth) and
    |dz|, NaN where the truth is missing) after the carried columns (the embedding too: predict | gal-ood score)."""
    def columns(batch, x):
        out = model.predict(x)
        added = {name: pa.array(out[name], pa.float32()) for name in ("z_phot", "z_phot_mode", "z_phot_std")}
        if with_pdf:
            added["z_pdf"] = vector_column(out["z_pdf"].astype(np.float32))
        if truth is not None:
            z_true = np.asarray(batch.column(truth).to_numpy(zero_copy_only=False), dtype=np.float64)
            dz = normalised_residuals(out["z_phot"], z_true)
            added["dz"] = pa.array(dz, pa.float32())
            added["abs_dz"] = pa.array(np.abs(dz), pa.float32())
        return added

    return Task(columns, PREDICTION_COLUMNS, keep_embedding=keep_embedding, needs=(truth,) if truth else ())


def predict_table(table, name: str, model: PhotozModel, head, output, *, with_pdf=True, keep_embedding=True,
                  truth=None, progress=None, encoder: str | None = None, device: str = "auto",
                  strict: bool = False) -> int:
    """Write the predictions for every row of the open ``table``; returns the number of rows written.

    ``table`` holds embeddings (checked against ``head``, the model's file), or cutouts that are embedded on the
    way with the model's own fine-tuned encoder or ``encoder`` (an encoder.onnx, run by gal-embed's library).
    ``output(metadata)`` opens the sink the rows go to (the command's ``Writing.open``).
    """
    task = prediction_task(model, with_pdf, keep_embedding, truth)
    names = table.schema.names
    if truth is not None:
        check_numeric_column(table.schema, truth, name,
                             "name the true redshift column with --truth, or leave --truth out")
    if EMBEDDING not in names and IMAGE in names:
        return _predict_cutouts(table, name, model, head, task, output, progress, encoder, device, strict)
    source = checked_source(table, name, CUTOUTS_HINT)
    source.check(head, log)
    with output(output_metadata(table, _metadata(model, head))) as out:
        return apply_to(table, name, head, task, out, progress=progress, hint=CUTOUTS_HINT)


def _metadata(model: PhotozModel, head) -> dict:
    record = {"kind": model.kind, "seed": model.info.get("seed"), "z_column": model.info.get("z_column")}
    if model.training_ids is not None:   # where eval finds the rows the model was fitted on
        record.update(file=os.path.abspath(head.path), training_ids_sha256=training_ids_sha256(model.training_ids))
    return {BINS_KEY: f"{model.bins.n_bins},{model.bins.zmax:g}", MODEL_KEY: json.dumps(record)}


def training_ids_sha256(fingerprints) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(fingerprints, dtype="<u8").tobytes()).hexdigest()


def fitted_rows(metadata: dict, ids, redshifts) -> int | None:
    """How many of the rows (``ids`` and their true ``redshifts``) the model that predicted them was fitted on, with
    these redshifts as its labels: the model file named in the predictions' metadata, when it is still there with
    the same training rows; else None."""
    from galtools.io.ids import labelled_fingerprints
    from galtools.photoz.model import TRAINING_IDS

    try:
        record = json.loads(metadata.get(MODEL_KEY) or "{}")
        path, expected = record.get("file"), record.get("training_ids_sha256")
    except (ValueError, AttributeError):
        return None
    if not path or not expected or not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            fingerprints = data[TRAINING_IDS] if TRAINING_IDS in data.files else None
    except (OSError, ValueError):
        return None
    if fingerprints is None or training_ids_sha256(fingerprints) != expected:
        return None
    return int(np.isin(labelled_fingerprints(ids, redshifts), fingerprints).sum())


def _predict_cutouts(table, name, model, head, task, output, progress, encoder_path, device, strict) -> int:
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
        head.check_embeddings(encoder.info.embedding_dim, encoder.info.sha256, name, log)
        metadata = {**output_metadata(table.metadata, encoder, name), **_metadata(model, head)}
        with output(metadata) as out:
            sink = HeadSink(out, task, name, progress)
            embed_table(table, encoder, sink, strict=strict)
            return sink.rows
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
