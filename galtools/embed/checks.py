"""Where a table meets a model: pixel scale and flux unit compared with the encoder's metadata, and the band map.

A band the model needs and the table lacks is an error (embed.inputs).  A pixel scale more than 10% from the
model's, or another flux unit, is a warning naming both values (an error when ``strict``): a model trained at
1.31"/pixel sees 0.03"/pixel stamps as galaxies 40 times larger, and says nothing.  Either side may not say: then
there is nothing to compare.  Per-object scales (a ``pixscale_arcsec`` column, written by gal-pack --resize of
stamps of several sizes) are compared row by row.
"""
from __future__ import annotations

import logging

import numpy as np

from galtools.errors import BadData, UsageProblem
from galtools.io import meta

PIXSCALE_TOLERANCE = 0.10
PIXSCALE_COLUMN = "pixscale_arcsec"
STRICT_HINT = "resample or re-pack the cutouts to match the model, or leave out --strict to go on regardless"
_log = logging.getLogger("galtools")


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


def _unit(text) -> str | None:
    text = " ".join(str(text).split()).lower() if text is not None else ""
    return text or None


class ConditionCheck:
    """Compares what a table says about its pixels with what a model was trained on; ``warn`` gets each message
    once (an error instead when ``strict``)."""

    def __init__(self, model_metadata: dict, table_name: str, model_name: str, strict: bool = False, warn=None):
        self.model_pixscale = _number(model_metadata.get(meta.PIXSCALE))
        self.model_unit = model_metadata.get(meta.FLUX_UNIT)
        self.table_name, self.model_name, self.strict = table_name, model_name, strict
        self.warn = warn or _log.warning
        self.messages: list[str] = []
        self._said_rows = False

    def _say(self, message: str) -> None:
        if self.strict:
            raise BadData(message, STRICT_HINT)
        self.messages.append(message)
        self.warn(message)

    def _far(self, scale: float) -> bool:
        return abs(scale / self.model_pixscale - 1.0) > PIXSCALE_TOLERANCE

    def check_table(self, table_metadata: dict) -> None:
        scale = _number(table_metadata.get(meta.PIXSCALE))
        if scale is not None and self.model_pixscale is not None and self._far(scale):
            self._say(f"{self.table_name} has {scale:g} arcsec/pixel but {self.model_name} was trained at "
                      f"{self.model_pixscale:g} arcsec/pixel (more than {PIXSCALE_TOLERANCE:.0%} apart)")
        unit = table_metadata.get(meta.FLUX_UNIT)
        if _unit(unit) and _unit(self.model_unit) and _unit(unit) != _unit(self.model_unit):
            self._say(f"{self.table_name} has pixels in '{unit}' but {self.model_name} was trained on "
                      f"'{self.model_unit}'")

    def check_rows(self, scales: np.ndarray, object_ids=None) -> None:
        """Per-object pixel scales of one batch (a ``pixscale_arcsec`` column)."""
        if self.model_pixscale is None or self._said_rows:
            return
        scales = np.asarray(scales, dtype=np.float64)
        far = np.isfinite(scales) & (np.abs(scales / self.model_pixscale - 1.0) > PIXSCALE_TOLERANCE)
        if far.any():
            self._said_rows = True
            first = int(np.argmax(far))
            who = f"object_id {object_ids[first]}" if object_ids is not None else f"row {first} of a batch"
            self._say(f"{self.table_name}: {int(far.sum())} object(s) in a batch have pixel scales more than "
                      f"{PIXSCALE_TOLERANCE:.0%} from the {self.model_pixscale:g} arcsec/pixel {self.model_name} was "
                      f"trained at (first: {who} at {scales[first]:g})")


def parse_band_map(text: str | None) -> dict[str, str]:
    """``'g=F814W,r=F814W,i=F814W'`` -> {model band: table band}."""
    if not text:
        return {}
    mapping: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        if item.count("=") != 1:
            raise UsageProblem(f"--band-map item '{item.strip()}' is not MODEL_BAND=TABLE_BAND",
                               "e.g. --band-map 'g=F814W,r=F814W,i=F814W'")
        model_band, table_band = (s.strip() for s in item.split("="))
        if not model_band or not table_band:
            raise UsageProblem(f"--band-map item '{item.strip()}' names no band on one side",
                               "e.g. --band-map 'g=F814W,r=F814W,i=F814W'")
        if model_band in mapping:
            raise UsageProblem(f"--band-map names model band {model_band} twice", "give each model band once")
        mapping[model_band] = table_band
    return mapping


def mapped_bands(model_bands, band_map: dict[str, str], model_name: str) -> list[str]:
    """The table band feeding each model band: its own name unless the map says otherwise."""
    unknown = [b for b in band_map if b not in model_bands]
    if unknown:
        raise UsageProblem(f"--band-map names band(s) {','.join(unknown)} that {model_name} does not have "
                           f"(its bands: {','.join(model_bands)})", "map the model's bands: MODEL_BAND=TABLE_BAND")
    return [band_map.get(b, b) for b in model_bands]
