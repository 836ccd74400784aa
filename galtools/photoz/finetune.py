"""Fine-tuning the encoder of a gal-train checkpoint for redshifts, and the same network from scratch (torch).

Hayat et al. (2021) compare three ways to get redshifts from images: a linear probe on the frozen self-supervised
representation (``fit``), the pre-trained encoder fine-tuned end to end with a small learning rate, and the same
network trained from random weights (the supervised baseline).  Here:

- the encoder, its bands, input size and preprocessing come from a gal-train checkpoint (loaded with
  ``weights_only=True``); ``from_scratch`` keeps only the architecture;
- training views are augmented (by default rotations, flips and a small jitter, which do not change a redshift),
  validation views are the centre crop that gal-embed uses;
- the head is the photo-z head of ``fit`` (cross-entropy over redshift bins, started at the label prior), the
  backbone learns at ``backbone_lr_factor`` times the head's rate; early stopping on the validation loss.

The result is saved as one model file: the head's arrays plus the fine-tuned encoder as ONNX bytes (exported with
gal-train's exporter, parity-checked against torch), so ``gal-photoz predict CUTOUTS`` runs it with ONNX Runtime.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field

import numpy as np

from galtools.errors import BadData, DeviceUnavailable, UsageProblem
from galtools.io import IMAGE, images_of, open_table
from galtools.photoz.bins import smoothing_kernel
from galtools.photoz.fit import (FitSettings, _start_at_the_prior, _targets, _torch_head, check_label_count, labels_of,
                                 validation_split, warn_clipped)
from galtools.photoz.model import PhotozModel

log = logging.getLogger("galtools")

DEFAULT_AUGMENT = "rotate,flip,jitter:max_shift=2"
EVAL_BATCH = 256


@dataclass
class FinetuneSettings:
    fit: FitSettings = field(default_factory=lambda: FitSettings(batch_size=64, lr=1e-3))
    backbone_lr_factor: float = 0.1      # the encoder learns this much slower than the head
    augment: str = DEFAULT_AUGMENT
    from_scratch: bool = False
    device: str = "auto"

    def validate(self) -> "FinetuneSettings":
        self.fit.validate()
        if not self.backbone_lr_factor > 0:
            raise UsageProblem(f"--backbone-lr-factor must be positive, got {self.backbone_lr_factor}")
        from galtools.augment.spec import parse_spec

        parse_spec(self.augment)      # a bad spec fails before any work
        return self


@dataclass
class EncoderSource:
    """What a gal-train checkpoint says about its encoder."""

    path: str
    arch: str
    width: float
    bands: list[str]
    crop: int
    preprocess_json: str
    config_json: str
    augment: str
    backbone_state: dict

    def build(self, pretrained: bool):
        from galtools.models import build_encoder

        backbone = build_encoder(self.arch, len(self.bands), width=self.width)
        if pretrained:
            backbone.load_state_dict(self.backbone_state)
        return backbone


def load_checkpoint(path: str) -> EncoderSource:
    from galtools.train import checkpoint
    from galtools.train.config import TrainConfig

    state = checkpoint.load(path)
    config = TrainConfig.from_json(state["config"])
    return EncoderSource(path=path, arch=config.arch, width=config.width, bands=list(state["bands"]),
                         crop=config.crop, preprocess_json=state["preprocess"], config_json=state["config"],
                         augment=state.get("augment", ""), backbone_state=checkpoint.backbone_state(state["model"]))


# ------------------------------------------------------------------------------------------------------ the data

@dataclass
class LabelledCutouts:
    images: np.ndarray      # (n, model bands, H, W) raw fluxes
    z: np.ndarray
    ids: list

    def subset(self, rows: np.ndarray) -> "LabelledCutouts":
        return LabelledCutouts(self.images[rows], self.z[rows], [self.ids[r] for r in rows])


def read_labelled_cutouts(labels: str, images: str, z_column: str, bands: list[str], n_bins: int) -> LabelledCutouts:
    """Labels (object_id, z) from ``labels`` and their cutouts from ``images`` (the same table, or the cutout
    table an embedding table was made from)."""
    ids, z = labelled_ids(labels, z_column, n_bins)
    return LabelledCutouts(cutouts_for(images, ids, bands), z, ids)


def labelled_ids(source: str, z_column: str, n_bins: int) -> tuple[list, np.ndarray]:
    """object_ids and redshifts of the rows of ``source`` (embeddings or cutouts) with a finite ``z_column``."""
    name = "stdin" if source == "-" else source
    with open_table(source) as table:
        for needed in ("object_id", z_column):
            if needed not in table.schema.names:
                raise BadData(f"{name} has no '{needed}' column (columns: {', '.join(table.schema.names)})",
                              "name the spectroscopic redshift column with --z-column" if needed == z_column
                              else "give a table from gal-sim, gal-pack or gal-embed")
        ids, zs, n_rows = [], [], 0
        for batch in table.iter_batches(columns=["object_id", z_column]):
            n_rows += batch.num_rows
            z = labels_of(batch, z_column)
            rows = np.flatnonzero(np.isfinite(z))
            ids.extend(batch.column("object_id").take(rows).to_pylist())
            zs.append(z[rows])
    check_label_count(len(ids), n_rows, z_column, name, n_bins)
    return ids, np.concatenate(zs)


def cutouts_for(source: str, ids: list, bands: list[str]) -> np.ndarray:
    """The raw cutouts of ``ids`` (in that order, in the model's band order) from a cutout table, in memory."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from galtools.preprocess import Preprocess

    name = "stdin" if source == "-" else source
    with open_table(source) as table:
        shape = table.require_images()
        if "object_id" not in table.schema.names:
            raise BadData(f"{name} has no object_id column", "give a cutout table from gal-pack or gal-sim")
        table_bands = table.bands or [str(i) for i in range(shape[0])]
        picker = Preprocess(tuple(bands), (1.0,) * len(bands), (0.0,) * len(bands), (1.0,) * len(bands))
        band_index = picker.band_indices(table_bands)
        id_type = table.schema.field("object_id").type
        wanted = pa.array(ids).cast(id_type) if pa.types.is_integer(id_type) else pa.array([str(i) for i in ids])
        position = {key: i for i, key in enumerate(wanted.to_pylist())}
        images = np.full((len(ids), len(bands), shape[1], shape[2]), np.nan, dtype=np.float32)
        found = np.zeros(len(ids), dtype=bool)
        for batch in table.iter_batches(columns=["object_id", IMAGE]):
            hits = np.flatnonzero(pc.is_in(batch.column("object_id"), value_set=wanted).to_numpy(zero_copy_only=False))
            if not hits.size:
                continue
            chosen = batch.take(pa.array(hits))
            pictures = images_of(chosen)[:, band_index]
            for key, picture in zip(chosen.column("object_id").to_pylist(), pictures):
                images[position[key]] = picture
                found[position[key]] = True
    if not found.all():
        first = ids[int(np.flatnonzero(~found)[0])]
        raise BadData(f"{int((~found).sum())} labelled object(s) have no cutout in {name} (e.g. object_id {first!r})",
                      "give the cutout table the embeddings were made from")
    bad = np.flatnonzero(~np.isfinite(images).all(axis=(1, 2, 3)))
    if bad.size:
        raise BadData(f"{name}: {bad.size} labelled cutout(s) hold NaN or infinite pixels (first: object_id "
                      f"{ids[int(bad[0])]!r})", "fill them first, e.g. gal-pack IN --fill-nan 0 -o OUT")
    return images


# ------------------------------------------------------------------------------------------------------ training

def torch_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailable(f"--device {name}: no usable CUDA GPU", "use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageProblem(f"unknown --device {name!r}", "use auto, cpu or cuda[:N]") from None


class RedshiftNetwork:
    """backbone (+ preprocessing) -> photo-z head, as one torch module, with the views for training and evaluation."""

    def __init__(self, source: EncoderSource, settings: FinetuneSettings, counts: np.ndarray, device):
        import torch

        from galtools.augment import AugmentPipeline
        from galtools.preprocess import Preprocess

        torch.manual_seed(settings.fit.seed)
        self.device = device
        self.source = source
        self.backbone = source.build(pretrained=not settings.from_scratch).to(device)
        self.head = _torch_head(self.backbone.num_features, settings.fit.n_bins, settings.fit.hidden).to(device)
        _start_at_the_prior(self.head, counts)
        self.preprocess = Preprocess.from_json(source.preprocess_json)
        self.augment = AugmentPipeline.from_spec(settings.augment, out_size=source.crop, bands=source.bands)
        self.crop = source.crop

    def parameters_by_group(self, lr: float, backbone_factor: float):
        return [{"params": self.backbone.parameters(), "lr": lr * backbone_factor},
                {"params": self.head.parameters(), "lr": lr}]

    def train(self, mode: bool = True):
        self.backbone.train(mode)
        self.head.train(mode)

    def logits(self, views):
        return self.head(self.backbone.forward_features(self.preprocess.apply_torch(views)))

    def training_views(self, raw: np.ndarray, ids: list, step: int, seed: int):
        import torch

        views = self.augment(torch.from_numpy(raw), ids, view=step, seed=seed)
        return views.to(self.device)

    def centre_views(self, raw: np.ndarray):
        import torch

        from galtools.train.data import centre_crop

        return torch.from_numpy(np.ascontiguousarray(centre_crop(raw, self.crop))).to(self.device)

    def predict_pdf(self, raw: np.ndarray) -> np.ndarray:
        """Bin probabilities of centre-cropped cutouts (eval mode)."""
        import torch

        self.train(False)
        out = []
        with torch.no_grad():
            for start in range(0, len(raw), EVAL_BATCH):
                logits = self.logits(self.centre_views(raw[start:start + EVAL_BATCH]))
                out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.empty((0, self.head_outputs()), np.float32)

    def head_outputs(self) -> int:
        from galtools.photoz.fit import _layers

        return _layers(self.head)[-1].out_features

    def state(self) -> dict:
        return {"backbone": {k: v.detach().clone() for k, v in self.backbone.state_dict().items()},
                "head": {k: v.detach().clone() for k, v in self.head.state_dict().items()}}

    def load(self, state: dict) -> None:
        self.backbone.load_state_dict(state["backbone"])
        self.head.load_state_dict(state["head"])


def _cross_entropy_of_pdf(torch, pdf, targets) -> float:
    """Mean cross-entropy of predicted probabilities against class indices or soft targets."""
    log_pdf = torch.log(pdf.clamp_min(1e-12))
    if targets.ndim == 2:
        return float(-(targets * log_pdf).sum(dim=1).mean())
    return float(torch.nn.functional.nll_loss(log_pdf, targets))


def train_network(data: LabelledCutouts, source: EncoderSource, settings: FinetuneSettings) -> tuple:
    """Fine-tune (or train from scratch) on ``data``; returns (network at its best validation loss, record)."""
    import torch

    fit = settings.fit
    bins = fit.bins
    y, above, below = bins.assign(data.z)
    warn_clipped(above, below, bins, "z", data.z, fit.clip_labels)
    val = validation_split(len(y), fit.val_fraction, fit.seed)
    train_rows, val_rows = np.flatnonzero(~val), np.flatnonzero(val)
    device = torch_device(settings.device)
    network = RedshiftNetwork(source, settings, np.bincount(y[train_rows], minlength=fit.n_bins).astype(float),
                              device)
    factor = 1.0 if settings.from_scratch else settings.backbone_lr_factor
    optimiser = torch.optim.AdamW(network.parameters_by_group(fit.lr, factor), weight_decay=fit.weight_decay)
    kernel = smoothing_kernel(bins, fit.label_smoothing) if fit.label_smoothing > 0 else None
    val_y = _targets(torch, y[val_rows], kernel).to(device)
    rng = np.random.default_rng([fit.seed, 17])
    steps_per_epoch = math.ceil(len(train_rows) / fit.batch_size)
    best = {"loss": math.inf, "epoch": -1, "state": None}
    history, step = [], 0
    for epoch in range(fit.max_epochs):
        network.train(True)
        order = train_rows[rng.permutation(len(train_rows))]
        for start in range(0, len(order), fit.batch_size):
            rows = np.sort(order[start:start + fit.batch_size])
            if len(rows) < 2:        # BatchNorm cannot train on one image
                continue
            views = network.training_views(data.images[rows], [data.ids[r] for r in rows], step, fit.seed)
            loss = torch.nn.functional.cross_entropy(network.logits(views), _targets(torch, y[rows], kernel).to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            step += 1
        pdf = torch.from_numpy(network.predict_pdf(data.images[val_rows])).to(device)
        val_loss = _cross_entropy_of_pdf(torch, pdf, val_y)
        history.append(round(val_loss, 5))
        log.debug(f"epoch {epoch + 1}: validation loss {val_loss:.4f}")
        if val_loss < best["loss"] - 1e-4:
            best = {"loss": val_loss, "epoch": epoch, "state": network.state()}
        elif epoch - best["epoch"] >= fit.patience:
            break
    network.load(best["state"])
    network.train(False)
    record = {"epochs": len(history), "best_epoch": best["epoch"] + 1, "steps_per_epoch": steps_per_epoch,
              "best_val_loss": round(best["loss"], 5), "val_loss": history, "n_train": int(len(train_rows)),
              "n_val": int(len(val_rows)), "n_clipped_above_zmax": above, "n_clipped_below_zero": below}
    return network, record


# ------------------------------------------------------------------------------------------------------ the file

def export_network(network: RedshiftNetwork, settings: FinetuneSettings, record: dict, z_column: str) -> PhotozModel:
    """The fine-tuned encoder as ONNX bytes (gal-train's exporter and its parity check) plus the head's arrays."""
    from galtools.photoz.fit import _layers
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
    head = network.head.to("cpu")
    layers = _layers(head)
    scale = float(head.log_scale.detach().exp())
    weights = [layer.weight.detach().numpy().T.astype(np.float32) for layer in layers]
    biases = [layer.bias.detach().numpy().astype(np.float32) for layer in layers]
    weights[-1], biases[-1] = weights[-1] * scale, biases[-1] * scale
    info = {"z_column": z_column, "mode": "scratch" if settings.from_scratch else "finetune",
            "checkpoint": source.path, "arch": source.arch, "bands": source.bands, "input_size": source.crop,
            "augment": settings.augment, "backbone_lr_factor": settings.backbone_lr_factor,
            "settings": asdict(settings.fit), "training": record, "seed": settings.fit.seed,
            "n_train": record["n_train"], "n_val": record["n_val"],
            "n_clipped_above_zmax": record["n_clipped_above_zmax"],
            "n_clipped_below_zero": record["n_clipped_below_zero"]}
    return PhotozModel(weights, biases, settings.fit.bins, hashlib.sha256(onnx_bytes).hexdigest(), info,
                       encoder_onnx=onnx_bytes)
