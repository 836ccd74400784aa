"""Fine-tuning the encoder of a gal-train checkpoint for redshifts, and the same network from scratch (torch).

Hayat et al. (2021) compare three ways to get redshifts from images: a linear probe on the frozen self-supervised
representation (``fit``), the pre-trained encoder fine-tuned end to end with a small learning rate, and the same
network trained from random weights (the supervised baseline).  The training is galtools.finetune's (the
checkpoint's encoder, augmented views, the one stopping rule); what is photo-z's own is here: the labelled
cutouts read with their redshifts, the redshift bins as targets, and the model file.

The result is saved as one model file: the head's arrays plus the fine-tuned encoder as ONNX bytes (exported with
gal-train's exporter, parity-checked against torch), so ``gal-photoz predict CUTOUTS`` runs it with ONNX Runtime.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import asdict

import numpy as np

from galtools.errors import UsageProblem
from galtools.finetune import (DEFAULT_AUGMENT, NETWORK_DEFAULTS, PROBE_DEFAULTS, EncoderSource,
                                    LabelledCutouts, NetworkSettings, cutouts_for, train_network)
from galtools.heads.source import require_columns
from galtools.heads.train import export_head
from galtools.io import display_name, open_table
from galtools.photoz.fit import FitSettings, bin_labels, check_label_count, labels_of
from galtools.photoz.model import PhotozModel

log = logging.getLogger("galtools")


def fit_settings(training: dict, z_options: dict, on_images: bool = False, probe: bool = True) -> FitSettings:
    """FitSettings from the command line's training and redshift options; --batch-size and --lr default to the
    probe's or the network's values (``probe`` False: the network's whatever was given)."""
    defaults = NETWORK_DEFAULTS if on_images else PROBE_DEFAULTS
    chosen = {k: (training[k] if probe else None) or defaults[k] for k in defaults}
    return FitSettings(**{**training, **chosen}, n_bins=z_options["bins"], zmax=z_options["zmax"],
                       label_smoothing=z_options["label_smoothing"], stream=z_options.get("stream"),
                       clip_labels=z_options.get("clip_labels", False)).validate()


def network_settings(fit: FitSettings, network: dict, from_scratch: bool = False) -> NetworkSettings:
    """NetworkSettings from the command line's network options."""
    return NetworkSettings(fit=fit, backbone_lr_factor=network["backbone_lr_factor"],
                           augment=network["augment_spec"] or DEFAULT_AUGMENT, from_scratch=from_scratch,
                           device=network["device"]).validate()


# ------------------------------------------------------------------------------------------------------ the data

def read_labelled_cutouts(labels: str, images: str, z_column: str, bands: list[str], n_bins: int) -> LabelledCutouts:
    """Labels (object_id, z) from ``labels`` and their cutouts from ``images`` (the same table, or the cutout
    table an embedding table was made from)."""
    if labels == "-" or images == "-":
        raise UsageProblem("training on images reads its inputs twice: give files, not '-'")
    ids, z = labelled_ids(labels, z_column, n_bins)
    return LabelledCutouts(cutouts_for(images, ids, bands), z, ids)


def labelled_ids(source: str, z_column: str, n_bins: int) -> tuple[list, np.ndarray]:
    """object_ids and redshifts of the rows of ``source`` (embeddings or cutouts) with a finite ``z_column``."""
    name = display_name(source)
    with open_table(source) as table:
        require_columns(table.schema, ["object_id"], name, "give a table from gal-sim, gal-pack or gal-embed")
        require_columns(table.schema, [z_column], name, "name the spectroscopic redshift column with --z-column")
        ids, zs, n_rows = [], [], 0
        for batch in table.iter_batches(columns=["object_id", z_column]):
            n_rows += batch.num_rows
            z = labels_of(batch, z_column)
            rows = np.flatnonzero(np.isfinite(z))
            ids.extend(batch.column("object_id").take(rows).to_pylist())
            zs.append(z[rows])
    check_label_count(len(ids), n_rows, z_column, name, n_bins)
    return ids, np.concatenate(zs)


# ------------------------------------------------------------------------------------------------------ training

def train_redshift_network(data: LabelledCutouts, source: EncoderSource, settings: NetworkSettings) -> tuple:
    """Fine-tune (or train from scratch) on cutouts labelled with redshifts (``data.targets``), over the bins of
    ``settings.fit``; returns (network at its best validation loss, record)."""
    fit = settings.fit
    y, above, below = bin_labels(data.targets, fit.bins, "z", fit.clip_labels)
    network, record = train_network(LabelledCutouts(data.images, y, data.ids), source, settings, fit.n_bins,
                                    fit.kernel)
    record.update(n_clipped_above_zmax=above, n_clipped_below_zero=below)
    return network, record


# ------------------------------------------------------------------------------------------------------ the file

def export_network(network, settings: NetworkSettings, record: dict, z_column: str) -> PhotozModel:
    """The fine-tuned encoder as ONNX bytes (gal-train's exporter and its parity check) plus the head's arrays."""
    from galtools.train.export import encoder_metadata, export_encoder

    source = network.source
    backbone = network.backbone.to("cpu")
    metadata = encoder_metadata(source.bands, source.crop, source.preprocess_json, backbone.num_features,
                                source.arch, source.config_json, settings.augment)
    folder = tempfile.mkdtemp(prefix="galtools-photoz-")
    path = os.path.join(folder, "encoder.onnx")
    try:
        export_encoder(backbone, path, metadata, source.crop)
        with open(path, "rb") as handle:
            onnx_bytes = handle.read()
    finally:
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(folder)
    linear = export_head(network.head.to("cpu"))
    info = {"z_column": z_column, "mode": "scratch" if settings.from_scratch else "finetune",
            "checkpoint": source.path, "arch": source.arch, "bands": source.bands, "input_size": source.crop,
            "augment": settings.augment, "backbone_lr_factor": settings.backbone_lr_factor,
            "settings": asdict(settings.fit), "training": record, "seed": settings.fit.seed,
            "n_train": record["n_train"], "n_val": record["n_val"],
            "n_clipped_above_zmax": record["n_clipped_above_zmax"],
            "n_clipped_below_zero": record["n_clipped_below_zero"]}
    return PhotozModel(linear, settings.fit.bins, hashlib.sha256(onnx_bytes).hexdigest(), info,
                       encoder_onnx=onnx_bytes)


def fit_network(labels: str, images: str, checkpoint: str, z_column: str, settings: NetworkSettings) -> PhotozModel:
    """gal-photoz fit --finetune/--from-scratch: the network of ``checkpoint`` trained on the cutouts of ``images``
    labelled by ``labels``' ``z_column``, as a model file that carries its encoder."""
    from galtools.finetune import load_checkpoint

    source = load_checkpoint(checkpoint)
    data = read_labelled_cutouts(labels, images, z_column, source.bands, settings.fit.n_bins)
    log.info(f"{'training from scratch' if settings.from_scratch else 'fine-tuning'} {source.arch} on "
             f"{len(data.ids)} labelled cutouts")
    trained, record = train_redshift_network(data, source, settings)
    return export_network(trained, settings, record, z_column)
