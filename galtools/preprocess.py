"""Preprocessing shared by training and embedding: the centre crop to the model's size, then arcsinh dynamic-range
compression and per-band normalisation.

    centre_crop(images, S)     # the central S x S pixels, first row/column (H - S) // 2: gal-pack --crop, training's
                               # unaugmented views, the augmentations' final crop, gal-embed and the heads' baselines

    y = (asinh(x / scale_b) - mean_b) / std_b

Galaxy fluxes span several decades between the sky and a bright bulge; asinh is linear for |x| << scale_b (the sky
noise keeps its Gaussian shape) and logarithmic for x >> scale_b (the bulge no longer dominates the loss).  The
parameters are fitted once on a sample of raw cutouts, stored with the trained model as JSON
(``encoder.onnx`` metadata ``galtools.preprocess``) and applied unchanged by ``gal-embed``: the two code paths
(numpy for ONNX Runtime, torch for training) use the same float32 formula, checked against each other in the tests.

An imported model (``gal-train import --scaling``) keeps instead the input scaling it was trained with: a chain of
per-band steps (``Scaling``, kind ``scaling``): ``linear`` y = x * scale + offset, ``clip`` y = min(max(x, lo), hi),
``arcsinh`` y = asinh(x / scale), ``log`` y = log_base(x + offset), ``identity`` (no step).  It is stored in the
same metadata key and applied the same way (``Preprocess.from_json`` reads either kind).

This module imports only numpy, so that the no-torch tools can use it.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np

from galtools.errors import BadData

KIND = "arcsinh-standardise"
FORMAT_VERSION = 1
MAD_TO_SIGMA = 1.4826  # sigma of a Gaussian = 1.4826 * median absolute deviation
DEFAULT_BORDER = 4     # width in pixels of the outer frame used to measure the sky noise


def centre_crop_start(size_in: int, size_out: int) -> int:
    """First row/column of a centre crop: an integer, so a crop never interpolates; the extra pixel of an odd margin
    goes to the far side."""
    return (size_in - size_out) // 2


def centre_crop_window(height: int, width: int, size: int) -> tuple[slice, slice]:
    """The rows and columns of the centre size x size crop of a height x width image."""
    top, left = centre_crop_start(height, size), centre_crop_start(width, size)
    return slice(top, top + size), slice(left, left + size)


def centre_crop(images: np.ndarray, size: int, option: str | None = None) -> np.ndarray:
    """The central size x size pixels of (..., H, W) images (a view).  Images smaller than ``size`` are BadData; its
    hint names ``option`` (e.g. "--crop"), the setting that asked for the size, when given."""
    height, width = images.shape[-2:]
    if height < size or width < size:
        raise BadData(f"cannot crop {height}x{width} images to {size}",
                      f"use {option} {min(height, width)} or less" if option
                      else f"use cutouts of at least {size}x{size} pixels")
    rows, cols = centre_crop_window(height, width, size)
    return images[..., rows, cols]


def border_pixels(images_nbhw: np.ndarray, border: int = DEFAULT_BORDER) -> np.ndarray:
    """The outer frame of each cutout, (n, bands, pixels): mostly sky, so its spread measures the noise."""
    height, width = images_nbhw.shape[-2:]
    border = max(1, min(border, height // 2, width // 2))
    top_bottom = np.concatenate([images_nbhw[..., :border, :], images_nbhw[..., height - border:, :]], axis=-2)
    left_right = np.concatenate([images_nbhw[..., border:height - border, :border],
                                 images_nbhw[..., border:height - border, width - border:]], axis=-1)
    n, bands = images_nbhw.shape[:2]
    return np.concatenate([top_bottom.reshape(n, bands, -1), left_right.reshape(n, bands, -1)], axis=-1)


def robust_sigma(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """1.4826 x the median absolute deviation along ``axis``: a noise level that ignores a few bright pixels."""
    median = np.median(values, axis=axis, keepdims=True)
    return MAD_TO_SIGMA * np.median(np.abs(values - median), axis=axis)


def _fallback_scale(band_pixels: np.ndarray) -> float:
    """A softening scale for a band without measurable noise (noiseless simulations): 1% of its bright end."""
    bright = float(np.percentile(np.abs(band_pixels), 99.0)) if band_pixels.size else 0.0
    return 0.01 * bright if bright > 0 else 1.0


@dataclass(frozen=True)
class Preprocess:
    """Fitted parameters of ``y = (asinh(x / scale) - mean) / std``, one value per band."""

    bands: tuple[str, ...]
    scale: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    # -- fitting --------------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, sample_nbhw, bands, softening: float = 1.0, border: int = DEFAULT_BORDER) -> "Preprocess":
        """Fit on a sample of raw cutouts (n, bands, H, W).

        scale_b = softening x the sky noise of band b (robust sigma of the cutouts' outer frames, so that the
        galaxies do not inflate it); mean_b and std_b are those of asinh(x / scale_b) over all sample pixels.
        """
        sample = np.asarray(sample_nbhw, dtype=np.float32)
        bands = tuple(str(b) for b in bands)
        _check_images(sample, len(bands), what="sample to fit the preprocessing on")
        if sample.shape[0] == 0:
            raise BadData("cannot fit the preprocessing on an empty sample", "give at least one cutout")
        if not softening > 0:
            raise BadData(f"softening must be positive, got {softening}")
        frame = border_pixels(sample, border)
        sky_sigma = robust_sigma(frame.transpose(1, 0, 2).reshape(len(bands), -1))
        scale = []
        for b in range(len(bands)):
            sigma = float(sky_sigma[b])
            scale.append(softening * sigma if np.isfinite(sigma) and sigma > 0 else _fallback_scale(sample[:, b]))
        compressed = np.arcsinh(sample / np.asarray(scale, dtype=np.float32)[None, :, None, None])
        mean = compressed.mean(axis=(0, 2, 3), dtype=np.float64)
        std = compressed.std(axis=(0, 2, 3), dtype=np.float64)
        std = np.where(std > 0, std, 1.0)  # a constant band stays constant instead of dividing by zero
        return cls(bands, tuple(float(s) for s in scale), tuple(float(m) for m in mean),
                   tuple(float(s) for s in std))

    # -- storage --------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({"kind": KIND, "version": FORMAT_VERSION, "bands": list(self.bands),
                           "scale": list(self.scale), "mean": list(self.mean), "std": list(self.std)},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Preprocess | Scaling":
        try:
            spec = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise BadData(f"preprocessing parameters are not valid JSON: {exc}",
                          "re-export the model with gal-train export") from None
        if isinstance(spec, dict) and spec.get("kind") == SCALING_KIND:
            return Scaling.from_json(text)          # an imported model's own scaling: the same interface
        if not isinstance(spec, dict) or spec.get("kind") != KIND:
            raise BadData(f"preprocessing parameters are not of kind {KIND!r}",
                          "re-export the model with gal-train export")
        if spec.get("version") != FORMAT_VERSION:
            raise BadData(f"preprocessing format version {spec.get('version')} is not {FORMAT_VERSION}",
                          "upgrade galtools or re-export the model")
        try:
            bands = tuple(str(b) for b in spec["bands"])
            values = {key: tuple(float(v) for v in spec[key]) for key in ("scale", "mean", "std")}
        except (KeyError, TypeError, ValueError) as exc:
            raise BadData(f"preprocessing parameters are incomplete: {exc}", "re-export the model") from None
        if any(len(v) != len(bands) for v in values.values()):
            raise BadData("preprocessing parameters do not have one value per band", "re-export the model")
        if not all(s > 0 and np.isfinite(s) for key in ("scale", "std") for s in values[key]):
            raise BadData("preprocessing scale and std must be positive and finite", "re-export the model")
        return cls(bands, values["scale"], values["mean"], values["std"])

    # -- band bookkeeping -----------------------------------------------------------------------------------
    def band_indices(self, available_bands) -> list[int]:
        """Where each of this model's bands sits in a table with ``available_bands`` (for band selection)."""
        available = [str(b) for b in available_bands]
        missing = [b for b in self.bands if b not in available]
        if missing:
            raise BadData(f"the table lacks band(s) {','.join(missing)} that the model needs",
                          f"the model was trained on bands {','.join(self.bands)}, the table has {','.join(available)}")
        return [available.index(b) for b in self.bands]

    # -- application ----------------------------------------------------------------------------------------
    def _columns(self):
        as_column = lambda values: np.asarray(values, dtype=np.float32)[None, :, None, None]  # noqa: E731
        return as_column(self.scale), as_column(self.mean), as_column(self.std)

    def apply_numpy(self, x_nbhw) -> np.ndarray:
        """float32 (n, bands, H, W) -> float32, the formula above (used by gal-embed before ONNX Runtime)."""
        x = np.asarray(x_nbhw, dtype=np.float32)
        _check_images(x, len(self.bands), what="images to preprocess")
        scale, mean, std = self._columns()
        return ((np.arcsinh(x / scale) - mean) / std).astype(np.float32, copy=False)

    def apply_torch(self, x_nbhw):
        """The same formula on a torch tensor, on its device (used by gal-train on whole batches)."""
        import torch  # torch only where torch is used: this module stays importable without it

        _check_images(x_nbhw, len(self.bands), what="images to preprocess")
        x = x_nbhw.to(torch.float32)
        scale, mean, std = self._columns_on(x.device)
        return (torch.asinh(x / scale) - mean) / std

    @functools.lru_cache(maxsize=4)
    def _columns_on(self, device):
        """The constants as tensors on ``device``, made once: not three host-to-device copies per batch."""
        import torch

        return tuple(torch.from_numpy(c).to(device) for c in self._columns())


SCALING_KIND = "scaling"
SCALING_VERSION = 1
# step -> {parameter: default}; every parameter is one value for all bands or one per band
SCALING_STEPS = {
    "identity": {},
    "linear": {"scale": 1.0, "offset": 0.0},
    "clip": {"lo": -np.inf, "hi": np.inf},
    "arcsinh": {"scale": 1.0},
    "log": {"offset": 0.0, "base": np.e},
}
SCALING_EXAMPLE = "e.g. --scaling clip:lo=0 --scaling log:offset=1e-3 --scaling linear:scale=0.5,0.6,0.7:offset=-1"


@dataclass(frozen=True)
class Scaling:
    """An imported model's own input scaling: ``steps`` applied in order, each (name, ((parameter, per-band
    values), ...)) with every parameter spelled out (defaults filled in)."""

    bands: tuple[str, ...]
    steps: tuple[tuple[str, tuple[tuple[str, tuple[float, ...]], ...]], ...]

    @classmethod
    def build(cls, bands, steps) -> "Scaling":
        """From ``[(name, {parameter: value or per-band values})]``: checked, defaults filled in, one value per band."""
        bands = tuple(str(b) for b in bands)
        built = []
        for name, given in steps:
            if name not in SCALING_STEPS:
                raise BadData(f"scaling step {name!r} is not one of {', '.join(SCALING_STEPS)}", SCALING_EXAMPLE)
            defaults = SCALING_STEPS[name]
            unknown = [k for k in given if k not in defaults]
            if unknown:
                raise BadData(f"scaling step {name} has no parameter {', '.join(unknown)} "
                              f"(it takes {', '.join(defaults) or 'none'})", SCALING_EXAMPLE)
            if name == "identity":
                continue
            params = []
            for key, default in defaults.items():
                values = given.get(key, default)
                values = [values] if np.isscalar(values) else list(values)
                try:
                    values = [float(v) for v in values]
                except (TypeError, ValueError):
                    raise BadData(f"scaling step {name}: {key}={values} is not a number or list of numbers",
                                  SCALING_EXAMPLE) from None
                if len(values) == 1:
                    values = values * len(bands)
                if len(values) != len(bands):
                    raise BadData(f"scaling step {name}: {key} has {len(values)} values for {len(bands)} bands "
                                  f"({','.join(bands)})", "give one value for all bands or one per band")
                params.append((key, tuple(values)))
            cls._check_step(name, dict(params))
            built.append((name, tuple(params)))
        return cls(bands, tuple(built))

    @staticmethod
    def _check_step(name: str, params: dict) -> None:
        finite = {k: v for k, v in params.items() if not (name == "clip")}
        if any(not np.isfinite(x) for values in finite.values() for x in values):
            raise BadData(f"scaling step {name} needs finite parameters, got {params}", SCALING_EXAMPLE)
        if name == "clip" and any(np.isnan(x) for values in params.values() for x in values):
            raise BadData("scaling step clip: lo and hi must be numbers", SCALING_EXAMPLE)
        if name == "clip" and any(lo > hi for lo, hi in zip(params["lo"], params["hi"])):
            raise BadData(f"scaling step clip has lo above hi ({params['lo']} > {params['hi']})", SCALING_EXAMPLE)
        if name == "arcsinh" and any(s <= 0 for s in params["scale"]):
            raise BadData("scaling step arcsinh needs a positive scale", SCALING_EXAMPLE)
        if name == "log" and any(b <= 0 or b == 1 for b in params["base"]):
            raise BadData("scaling step log needs a positive base other than 1", SCALING_EXAMPLE)

    @classmethod
    def parse(cls, specs, bands) -> "Scaling":
        """From ``--scaling`` texts, one step each: ``NAME[:PARAM=V[,V...]]...`` (one value for all bands, or one
        per band in the model's band order)."""
        steps = []
        for text in specs:
            name, *items = [part.strip() for part in str(text).strip().split(":")]
            given = {}
            for item in items:
                key, sep, values = item.partition("=")
                if not sep or not key.strip() or not values.strip():
                    raise BadData(f"--scaling {text!r}: {item!r} is not PARAM=VALUE[,VALUE...]", SCALING_EXAMPLE)
                if key.strip() in given:
                    raise BadData(f"--scaling {text!r} gives {key.strip()} twice", SCALING_EXAMPLE)
                given[key.strip()] = [v.strip() for v in values.split(",")]
            steps.append((name.lower(), given))
        if not steps:
            raise BadData("no scaling steps given", SCALING_EXAMPLE)
        return cls.build(bands, steps)

    # -- storage --------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({"kind": SCALING_KIND, "version": SCALING_VERSION, "bands": list(self.bands),
                           "steps": [{"op": name, **{k: [_json_number(x) for x in v] for k, v in params}}
                                     for name, params in self.steps]}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Scaling":
        spec = json.loads(text)
        if spec.get("version") != SCALING_VERSION:
            raise BadData(f"scaling format version {spec.get('version')} is not {SCALING_VERSION}",
                          "upgrade galtools or re-import the model")
        try:
            steps = [(step["op"], {k: [float(x) for x in v] for k, v in step.items() if k != "op"})
                     for step in spec["steps"]]
            return cls.build(spec["bands"], steps)
        except (KeyError, TypeError, AttributeError) as exc:
            raise BadData(f"scaling parameters are incomplete: {exc}", "re-import the model") from None

    def describe(self) -> str:
        return " then ".join(name for name, _ in self.steps) or "identity"

    band_indices = Preprocess.band_indices

    # -- application ----------------------------------------------------------------------------------------
    def _column(self, values):
        return np.asarray(values, dtype=np.float32)[None, :, None, None]

    def _apply(self, x, column, minimum, maximum, asinh, log):
        """The steps in order, with one array library's functions (numpy or torch: the same float32 formulas)."""
        for name, params in self.steps:
            p = {k: column(v) for k, v in params}
            if name == "linear":
                x = x * p["scale"] + p["offset"]
            elif name == "clip":
                x = minimum(maximum(x, p["lo"]), p["hi"])
            elif name == "arcsinh":
                x = asinh(x / p["scale"])
            elif name == "log":
                x = log(x + p["offset"]) / log(p["base"])
        return x

    def apply_numpy(self, x_nbhw) -> np.ndarray:
        """float32 (n, bands, H, W) -> float32, each step in float32 (used by gal-embed before ONNX Runtime)."""
        x = np.asarray(x_nbhw, dtype=np.float32)
        _check_images(x, len(self.bands), what="images to preprocess")
        with np.errstate(divide="ignore", invalid="ignore"):   # a log of non-positive values: caught as non-finite
            x = self._apply(x, self._column, np.minimum, np.maximum, np.arcsinh, np.log)
        return x.astype(np.float32, copy=False)

    def apply_torch(self, x_nbhw):
        """The same steps on a torch tensor, on its device."""
        import torch

        _check_images(x_nbhw, len(self.bands), what="images to preprocess")
        x = x_nbhw.to(torch.float32)
        column = lambda values: torch.from_numpy(self._column(values)).to(x.device)  # noqa: E731
        return self._apply(x, column, torch.minimum, torch.maximum, torch.asinh, torch.log)


def _json_number(x: float):
    """Infinite clip bounds as JSON can hold them (plain JSON has no Infinity)."""
    return x if np.isfinite(x) else ("inf" if x > 0 else "-inf")


def _check_images(images, n_bands: int, what: str) -> None:
    shape = tuple(images.shape)
    if len(shape) != 4:
        raise BadData(f"{what} must have shape (n, bands, H, W), got {shape}")
    if shape[1] != n_bands:
        raise BadData(f"{what} have {shape[1]} bands, expected {n_bands}",
                      "select the bands the model was trained on")
