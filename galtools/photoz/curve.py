"""The photo-z label-efficiency curve (Hayat et al. 2021, fig. 5) on galtools.heads' curve driver.

Arms: ``median`` (predict the training median: the floor any method must beat), ``linear`` (a probe on the frozen
representation, ``mlpN`` with a hidden layer) and, when the caller has the cutouts and a checkpoint, the same probe
on the pixels (``pixels-pca``) and on the untrained architecture (``random-encoder``), ``finetune`` (the encoder
fine-tuned end to end) and ``scratch`` (the same network from random weights). Every training arm
stops by the same rule; each row says whether it stopped by patience or at its epoch cap.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from galtools.heads.curve import (Arm, Split, chosen_by_validation, format_curve, make_split, plot_curve,
                                  run_curve)
from galtools.photoz.fit import FitSettings, fit_arrays
from galtools.photoz.metrics import photoz_metrics

METRICS = [("sigma_mad", "sigma_MAD", ".5f"), ("eta", "eta %", ".2f"), ("bias", "bias", "+.5f")]
PANELS = [("sigma_mad", "sigma_MAD"), ("eta", "eta (% with |dz| > 0.05)")]
BASELINES = ("median",)


def split_for(z: np.ndarray, fractions: list[float], settings: FitSettings, test_fraction: float) -> Split:
    return make_split(len(z), fractions, test_fraction, settings.seed, settings.n_bins, "bins",
                      "use larger --fractions, fewer --bins, or more labelled rows")


def probe_arm(name: str, x: np.ndarray, z: np.ndarray, settings: FitSettings,
              model_sha256: str | None = None) -> Arm:
    """The probe (linear, or MLP with --hidden) on the features ``x`` of the labelled rows."""
    def probe(train, test):
        model = fit_arrays(x[train], z[train], replace(settings), model_sha256)
        return model.predict(x[test])["z_phot"], model.info["training"]

    return Arm(name, probe)


def probe_arms(x: np.ndarray, z: np.ndarray, settings: FitSettings, model_sha256: str | None = None) -> list[Arm]:
    """The median baseline and the probe on the embeddings ``x`` (rows: the labelled rows, in split order)."""
    def median(train, test):
        return np.full(len(test), float(np.median(z[train]))), None

    name = "linear" if settings.hidden is None else f"mlp{settings.hidden}"
    return [Arm("median", median, baseline=True), probe_arm(name, x, z, settings, model_sha256)]


def baseline_arms(data, source, dim: int, settings: FitSettings) -> list[Arm]:
    """The same probe on the labelled cutouts' pixels (PCA fitted without labels, to the number of components up to
    ``dim`` that validates best) and on the features of the checkpoint's architecture with random weights."""
    from galtools.heads.baselines import pca_sizes, pixel_pca_features, random_encoder_features

    pixels = pixel_pca_features(data.images, source, dim)
    candidates = {k: probe_arm("pixels-pca", pixels[:, :k], data.targets, settings).run
                  for k in pca_sizes(pixels.shape[1])}
    return [chosen_by_validation("pixels-pca", candidates, "components"),
            probe_arm("random-encoder", random_encoder_features(data.images, source, settings.seed), data.targets,
                      settings)]


def network_arms(data, source, settings, methods=("finetune", "scratch")) -> list[Arm]:
    """The encoder of ``source`` fine-tuned, and the same network from scratch, on the labelled cutouts ``data``
    (in the order of the labelled rows)."""
    from galtools.finetune import NetworkSettings
    from galtools.photoz.bins import summarise_pdf
    from galtools.photoz.finetune import train_redshift_network

    def arm(method):
        def run(train, test):
            mode = NetworkSettings(fit=replace(settings.fit), backbone_lr_factor=settings.backbone_lr_factor,
                                   augment=settings.augment, from_scratch=method == "scratch", device=settings.device)
            network, record = train_redshift_network(data.subset(train), source, mode)
            pdf = network.predict_pdf(data.subset(test).images)
            return summarise_pdf(pdf, settings.fit.bins.centres)[0], record

        return Arm(method, run)

    return [arm(method) for method in methods]


def photoz_curve(z: np.ndarray, split: Split, arms: list[Arm]) -> list[dict]:
    def score(z_pred, test):
        metrics = photoz_metrics(z_pred, z[test])
        return {"n": metrics["n"], "sigma_mad": metrics["sigma_mad"], "eta": metrics["eta"], "bias": metrics["bias"]}

    return run_curve(split, arms, score)


def format_photoz_curve(rows: list[dict]) -> str:
    return format_curve(rows, METRICS)


def plot_photoz_curve(rows: list[dict], path: str) -> None:
    plot_curve(rows, path, PANELS, BASELINES)
