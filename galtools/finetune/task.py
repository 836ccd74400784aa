"""A galtools.heads head task run end to end, the same for every task (gal-photoz, gal-classify, a new one):

    fit_to_file   a head on embeddings (galtools.heads.task.fit_table), or the network of a gal-train checkpoint
                  fine-tuned / trained from scratch on the labelled cutouts, saved as one model file
    curve         the label-efficiency curve: the task's floor and the probe on the embeddings and, with the
                  cutouts and a checkpoint, the image baselines on the same subsets and test set (``image_arms``):
                  the probe on the pixels and on the untrained architecture, the encoder fine-tuned, the same
                  network from scratch

The task says what its labels, loss, metrics and report are; nothing here knows redshifts or classes.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import asdict, replace

from galtools.errors import UsageProblem
from galtools.finetune import (LabelledRows, NetworkSettings, cutouts_for, load_checkpoint, train_network)
from galtools.heads.curve import Arm, chosen_by_validation
from galtools.heads.task import HeadTask, fit_table, label_curve, probe_arm, read_labels, read_rows

log = logging.getLogger("galtools")


# ------------------------------------------------------------------------------------------------------ fitting

def fit_to_file(task: HeadTask, emb: str, output: str, overwrite: bool, settings,
                network: NetworkSettings | None = None, images: str | None = None, checkpoint: str | None = None):
    """Fit ``task`` on the labelled rows of ``emb`` and write the model file ``output`` (checked before any work).
    With ``network``, the network of ``checkpoint`` is trained on the cutouts of ``images`` (default: ``emb``
    itself) instead, and the model file carries the trained encoder. Returns the model."""
    from galtools.heads import check_head_output
    from galtools.heads.train import describe_run
    from galtools.io import display_name

    check_head_output(output, overwrite)
    if network is None:
        model = fit_table(task, emb, settings)
    else:
        model = fit_network(task, emb, images or emb, checkpoint, network)
    model.info["source"] = display_name(emb)
    task.finish(model, emb)
    model.save(output, overwrite=overwrite)
    log.info(f"wrote {output}: {model.kind}{task.describe(model)}, {model.info['n_train']} training rows, "
             f"{describe_run(model.info['training'])}")
    return model


def fit_network(task: HeadTask, labels: str, images: str, checkpoint: str, settings: NetworkSettings):
    """The network of ``checkpoint`` trained on the cutouts of ``images`` labelled by ``labels`` (the same table, or
    the embeddings made from it), as a model that carries its encoder."""
    if labels == "-" or images == "-":
        raise UsageProblem("training on images reads its inputs twice: give files, not '-'")
    source = load_checkpoint(checkpoint)
    rows = read_labels(task, labels)
    rows = rows.with_features(cutouts_for(images, rows.ids, source.bands))
    log.info(f"{'training from scratch' if settings.from_scratch else 'fine-tuning'} {source.arch} on "
             f"{rows.count} labelled cutouts")
    network, record = _train(task, rows, source, settings)
    return export_network(task, rows, network, settings, record)


def _train(task: HeadTask, rows: LabelledRows, source, settings: NetworkSettings):
    targets, facts = task.encode(rows)
    network, record = train_network(replace(rows, targets=targets), source, settings, task.n_outputs(rows),
                                    task.kernel)
    record.update(facts)
    return network, record


def export_network(task: HeadTask, rows: LabelledRows, network, settings: NetworkSettings, record: dict):
    """The trained encoder as ONNX bytes (gal-train's exporter and its parity check) with the head's arrays, as the
    task's model."""
    from galtools.heads.train import export_head
    from galtools.train.export import encoder_metadata, export_encoder

    source = network.source
    backbone = network.backbone.to("cpu")
    metadata = encoder_metadata(source.bands, source.crop, source.preprocess_json, backbone.num_features,
                                source.arch, source.config_json, settings.augment)
    folder = tempfile.mkdtemp(prefix="galtools-head-")
    path = os.path.join(folder, "encoder.onnx")
    try:
        export_encoder(backbone, path, metadata, source.crop)
        with open(path, "rb") as handle:
            onnx_bytes = handle.read()
    finally:
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(folder)
    facts = {k: v for k, v in record.items() if k.startswith("n_clipped")}
    info = {**task.fit_info(rows), "mode": "scratch" if settings.from_scratch else "finetune",
            "checkpoint": source.path, "arch": source.arch, "bands": source.bands, "input_size": source.crop,
            "augment": settings.augment, "backbone_lr_factor": settings.backbone_lr_factor,
            "settings": asdict(settings.fit), "training": record, "seed": settings.fit.seed,
            "n_train": record["n_train"], "n_val": record["n_val"], **facts}
    return task.model(export_head(network.head.to("cpu")), rows, info, hashlib.sha256(onnx_bytes).hexdigest(),
                      encoder_onnx=onnx_bytes)


# -------------------------------------------------------------------------------------------------- the curve

def curve(task: HeadTask, emb: str, fractions: list[float], settings, test_fraction: float = 0.2,
          network: NetworkSettings | None = None, images: str | None = None,
          checkpoint: str | None = None) -> list[dict]:
    """The label curve of ``task`` on the labelled rows of ``emb`` (held in memory); with ``images`` and
    ``checkpoint`` (and their ``network`` settings) also the image baselines."""
    from galtools.heads.source import open_embeddings

    if bool(images) != bool(checkpoint):
        raise UsageProblem("the curve on cutouts needs both --images and --checkpoint", "give both, or neither")
    if images and emb == "-":
        raise UsageProblem("the curve on cutouts reads EMB twice: give a file, not '-'")
    with open_embeddings(emb) as source:
        rows = read_rows(task, source, with_ids=bool(images))
    more = None
    if images:
        encoder = load_checkpoint(checkpoint)
        cutouts = rows.with_features(cutouts_for(images, rows.ids, encoder.bands))

        def more(task, rows):
            return image_arms(task, rows, cutouts, encoder, settings, network)

    return label_curve(task, rows, fractions, settings, test_fraction, more)


def image_arms(task: HeadTask, rows: LabelledRows, cutouts: LabelledRows, source, settings,
               network: NetworkSettings) -> list[Arm]:
    """On the rows' cutouts (``cutouts.x``, in the order of ``rows``): the probe on their pixels (PCA fitted without
    labels, to the number of components up to the representation's dimension that validates best) and on the
    checkpoint's architecture with random weights; the encoder fine-tuned, and the same network trained from
    scratch (``network``: their settings)."""
    from galtools.heads.baselines import pca_sizes, pixel_pca_features, random_encoder_features

    pixels = pixel_pca_features(cutouts.x, source, rows.x.shape[1])
    candidates = {k: probe_arm("pixels-pca", task, rows.with_features(pixels[:, :k]), settings).run
                  for k in pca_sizes(pixels.shape[1])}
    random = rows.with_features(random_encoder_features(cutouts.x, source, settings.seed))

    def trained(method):
        def run(train, test):
            mode = replace(network, fit=replace(network.fit), from_scratch=method == "scratch")
            model, record = _train(task, cutouts.subset(train), source, mode)
            return task.point(model.predict_pdf(cutouts.x[test])), record

        return Arm(method, run)

    return [chosen_by_validation("pixels-pca", candidates, "components"),
            probe_arm("random-encoder", task, random, settings), trained("finetune"), trained("scratch")]


# ---------------------------------------------------------------------------------------------- the commands' calls

NO_NETWORK = {"checkpoint": None, "images": None}


def fit_command(settings_of, emb: str, output: str, overwrite: bool, task_options: dict, training: dict,
                network: dict | None = None, finetune: bool = False, from_scratch: bool = False):
    """``TOOL fit``: the options checked and resolved (``settings_of(task_options, training, on_images)`` -> (task,
    settings)), the model fitted on embeddings or, with ``finetune`` / ``from_scratch``, on images, and saved."""
    from galtools.finetune import network_settings

    network = network or NO_NETWORK
    on_images = finetune or from_scratch
    if finetune and from_scratch:
        raise UsageProblem("--finetune and --from-scratch exclude each other", "choose one")
    if on_images and not network["checkpoint"]:
        raise UsageProblem("--finetune and --from-scratch need --checkpoint", "a gal-train checkpoint, RUN/last.pt")
    if not on_images and (network["checkpoint"] or network["images"]):
        raise UsageProblem("--checkpoint and --images are for --finetune or --from-scratch", "add one of them")
    task, settings = settings_of(task_options, training, on_images)
    mode = network_settings(settings, network, from_scratch) if on_images else None
    return fit_to_file(task, emb, output, overwrite, settings, mode, network["images"], network["checkpoint"])


def curve_command(settings_of, emb: str, task_options: dict, training: dict, network: dict, fractions: list[float],
                  test_fraction: float) -> tuple[HeadTask, object, list[dict]]:
    """``TOOL curve``: (the task, its settings, the curve's rows); the networks on images train with their own
    batch size and rate (NETWORK_DEFAULTS), the probes with the options'."""
    from galtools.finetune import network_settings

    task, settings = settings_of(task_options, training)
    mode = None
    if network["images"] and network["checkpoint"]:
        mode = network_settings(settings_of(task_options, training, on_images=True, probe=False)[1], network)
    return task, settings, curve(task, emb, fractions, settings, test_fraction, mode, network["images"],
                                 network["checkpoint"])
