"""Training a network on labelled cutouts (torch): the encoder of a gal-train checkpoint, fine-tuned end to end or
trained from random weights, under a head, by galtools.heads' one stopping rule (checked once per pass, at
least every 25 steps).

Hayat et al. (2021) compare a probe on the frozen self-supervised representation with the pre-trained encoder
fine-tuned with a small learning rate and with the same network trained from random weights (the supervised
baseline).  Here:

- the encoder, its bands, input size and preprocessing come from a gal-train checkpoint (loaded with
  ``weights_only=True``); ``from_scratch`` keeps only the architecture;
- training views are augmented (by default rotations, flips and a small jitter), validation views are the centre
  crop that gal-embed uses;
- the head is galtools.heads' head (cross-entropy, started at the label prior); the backbone learns at
  ``backbone_lr_factor`` times the head's rate: by default the same rate, so that fine-tuning and training from
  scratch differ in their starting weights only (on gal-sim photo-z, a tenth of the rate gave sigma_MAD worse by
  0.0015-0.0056 at every label count, over two seeds).

The task (gal-photoz's redshift bins, gal-classify's classes) gives the targets and exports the result.
``galtools.finetune.task`` runs a galtools.heads head task with these networks: fitting on embeddings or images
(one call per command), and the label curve with its baselines on the cutouts.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from galtools.errors import BadData, UsageProblem
from galtools.heads.rows import LabelledRows, validation_split
from galtools.heads.train import (EarlyStopping, TrainSettings, as_targets, check_cadence, linear_layers, run_checks,
                                  start_at_the_prior, torch_head)
from galtools.io import IMAGE, display_name, images_of, open_table

log = logging.getLogger("galtools")

DEFAULT_AUGMENT = "rotate,flip,jitter:max_shift=2"
EVAL_BATCH = 256
PROBE_DEFAULTS = {"batch_size": 512, "lr": 1e-2}      # defaults that differ between the probe on embeddings ...
NETWORK_DEFAULTS = {"batch_size": 64, "lr": 1e-3}     # ... and training on images


def resolve_training(training: dict, on_images: bool = False, probe: bool = True) -> dict:
    """The command line's training options (a dict of TrainSettings' fields), with --batch-size and --lr defaulting
    to the probe's or the network's values (``probe`` False: the network's whatever was given)."""
    defaults = NETWORK_DEFAULTS if on_images else PROBE_DEFAULTS
    return {**training, **{k: (training[k] if probe else None) or defaults[k] for k in defaults}}


def network_settings(fit: TrainSettings, network: dict, from_scratch: bool = False) -> "NetworkSettings":
    """NetworkSettings from the command line's network options (--backbone-lr-factor, --augment, --device)."""
    return NetworkSettings(fit=fit, backbone_lr_factor=network["backbone_lr_factor"],
                           augment=network["augment_spec"] or DEFAULT_AUGMENT, from_scratch=from_scratch,
                           device=network["device"]).validate()


@dataclass
class NetworkSettings:
    fit: TrainSettings = field(default_factory=lambda: TrainSettings(batch_size=64, lr=1e-3))
    backbone_lr_factor: float = 1.0      # the encoder's rate as a fraction of the head's (1: scratch's optimiser)
    augment: str = DEFAULT_AUGMENT
    from_scratch: bool = False
    device: str = "auto"

    def validate(self) -> "NetworkSettings":
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
    pool: str
    bands: list[str]
    crop: int
    preprocess_json: str
    config_json: str
    augment: str
    backbone_state: dict

    def build(self, pretrained: bool):
        from galtools.models import build_encoder

        backbone = build_encoder(self.arch, len(self.bands), width=self.width, pool=self.pool)
        if pretrained:
            backbone.load_state_dict(self.backbone_state)
        return backbone


def load_checkpoint(path: str) -> EncoderSource:
    from galtools.train import checkpoint
    from galtools.train.config import TrainConfig

    state = checkpoint.load(path)
    config = TrainConfig.from_json(state["config"])
    return EncoderSource(path=path, arch=config.arch, width=config.width, pool=config.pool,
                         bands=list(state["bands"]),
                         crop=config.crop, preprocess_json=state["preprocess"], config_json=state["config"],
                         augment=state.get("augment", ""), backbone_state=checkpoint.backbone_state(state["model"]))


def cutouts_for(source: str, ids: list, bands: list[str]) -> np.ndarray:
    """The raw cutouts of ``ids`` (in that order, in the model's band order) from a cutout table, in memory."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from galtools.preprocess import Preprocess

    name = display_name(source)
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


class ImageNetwork:
    """backbone (+ preprocessing) -> head, as one torch module, with the views for training and evaluation."""

    def __init__(self, source: EncoderSource, settings: NetworkSettings, n_outputs: int, counts: np.ndarray,
                 device):
        import torch

        from galtools.augment import AugmentPipeline
        from galtools.preprocess import Preprocess

        torch.manual_seed(settings.fit.seed)
        self.device = device
        self.source = source
        self.backbone = source.build(pretrained=not settings.from_scratch).to(device)
        self.head = torch_head(self.backbone.num_features, n_outputs, settings.fit.hidden).to(device)
        start_at_the_prior(self.head, counts)
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

        from galtools.preprocess import centre_crop

        return torch.from_numpy(np.ascontiguousarray(centre_crop(raw, self.crop))).to(self.device)

    def predict_pdf(self, raw: np.ndarray) -> np.ndarray:
        """Class (bin) probabilities of centre-cropped cutouts (eval mode)."""
        import torch

        self.train(False)
        out = []
        with torch.no_grad():
            for start in range(0, len(raw), EVAL_BATCH):
                logits = self.logits(self.centre_views(raw[start:start + EVAL_BATCH]))
                out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.empty((0, self.head_outputs()), np.float32)

    def head_outputs(self) -> int:
        return linear_layers(self.head)[-1].out_features

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


def train_network(data: LabelledRows, source: EncoderSource, settings: NetworkSettings, n_outputs: int,
                  kernel: np.ndarray | None = None) -> tuple:
    """Fine-tune the encoder of ``source`` with a head of ``n_outputs`` (or train both from random weights) on
    ``data`` (``x``: the cutouts; targets: class indices, or soft targets); returns (network at its best validation
    loss, record)."""
    import torch

    from galtools.device import torch_device

    fit = settings.fit
    y = data.targets
    images = data.x
    val = validation_split(len(y), fit.val_fraction, fit.seed)
    train_rows, val_rows = np.flatnonzero(~val), np.flatnonzero(val)
    device = torch_device(settings.device)
    counts = (y[train_rows].sum(axis=0, dtype=np.float64) if y.ndim == 2
              else np.bincount(y[train_rows], minlength=n_outputs).astype(float))
    network = ImageNetwork(source, settings, n_outputs, counts, device)
    factor = 1.0 if settings.from_scratch else settings.backbone_lr_factor
    optimiser = torch.optim.AdamW(network.parameters_by_group(fit.lr, factor), weight_decay=fit.weight_decay)
    val_y = as_targets(y[val_rows], kernel).to(device)
    rng = np.random.default_rng([fit.seed, 17])
    steps_per_epoch = math.ceil(len(train_rows) / fit.batch_size)
    steps_per_check, max_checks = check_cadence(steps_per_epoch, fit.max_epochs)     # the probe's cadence
    step = 0

    if len(train_rows) < 2:
        raise BadData(f"{len(train_rows)} labelled cutout(s) left for training after the validation split",
                      "give more labels, or a smaller --val-fraction")

    def batches():
        while True:
            order = train_rows[rng.permutation(len(train_rows))]
            for start in range(0, len(order), fit.batch_size):
                rows = np.sort(order[start:start + fit.batch_size])
                if len(rows) >= 2:        # BatchNorm cannot train on one image
                    yield rows

    feed = batches()

    def train_until_check() -> float:
        nonlocal step
        network.train(True)
        running, seen = 0.0, 0
        for _ in range(steps_per_check):
            rows = next(feed)
            views = network.training_views(images[rows], [data.ids[r] for r in rows], step, fit.seed)
            loss = torch.nn.functional.cross_entropy(network.logits(views), as_targets(y[rows], kernel).to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            step += 1
            running += float(loss.detach()) * len(rows)
            seen += len(rows)
        return running / max(seen, 1)

    def validation_loss() -> float:
        pdf = torch.from_numpy(network.predict_pdf(images[val_rows])).to(device)
        return _cross_entropy_of_pdf(torch, pdf, val_y)

    stopping = EarlyStopping(fit.patience, max_checks, optimiser)
    record = run_checks(train_until_check, validation_loss, network.state, network.load, stopping)
    network.train(False)
    record.update(epochs=round(stopping.checks * steps_per_check / steps_per_epoch, 2), steps=step,
                  steps_per_check=steps_per_check, steps_per_epoch=steps_per_epoch, n_train=int(len(train_rows)),
                  n_val=int(len(val_rows)))
    return network, record
