"""Metadata: every key the tools write or read, in tables and in model files, and the provenance history every
write appends to.  Writers and readers name a key by its constant here, never by its string.

Metadata is a flat ``dict[str, str]`` (Arrow schema metadata is bytes->bytes; FITS gets it as header cards; an
encoder.onnx keeps it as metadata_props).
"""
from __future__ import annotations

import datetime as _dt
import json
import sys

# -- cutout tables (and the encoder.onnx, which states the bands, pixel scale and unit it was trained on)
BANDS = "galtools.bands"
PIXSCALE = "galtools.pixscale_arcsec"
FLUX_UNIT = "galtools.flux_unit"
EIGHT_BIT_UNIT = "8-bit scaled to [0,1]"   # the flux unit of images gal-pack read from 8-bit files (JPEG, PNG)
HISTORY = "galtools.history"
SIM = "galtools.sim"                        # gal-sim's settings (JSON)
AUGMENT = "galtools.augment"                # the augmentation spec (gal-augment's output; an encoder's training)
AUGMENT_VIEWS = "galtools.augment_views"    # views per cutout in gal-augment's output

# -- encoder.onnx metadata_props (gal-train export and import; read by gal-embed)
INPUT_SIZE = "galtools.input_size"
PREPROCESS = "galtools.preprocess"
EMBEDDING_DIM = "galtools.embedding_dim"    # also in an embedding table
ARCH = "galtools.arch"
VERSION = "galtools.version"
TRAIN_CONFIG = "galtools.train_config"
TTA = "galtools.tta"

# -- embedding tables (gal-embed)
MODEL = "galtools.model"
MODEL_ARCH = "galtools.model_arch"
MODEL_SHA256 = "galtools.model_sha256"
EMBED_INPUT = "galtools.embed.input"
EMBED_PROVIDER = "galtools.embed.provider"
EMBED_PRECISION = "galtools.embed.precision"
EMBED_PRECISION_REQUESTED = "galtools.embed.precision_requested"
EMBED_PARITY = "galtools.embed.parity"
EMBED_AUTO = "galtools.embed.auto"
EMBED_CALIBRATION = "galtools.embed.calibration"
EMBED_BAND_MAP = "galtools.embed.band_map"

# -- the settings of the tools that write derived tables (JSON)
KNN = "galtools.knn"
OOD = "galtools.ood"
MAP = "galtools.map"
HATS_BUILD = "galtools.hats.build"

# Arrow keeps its own schema in Parquet under this key; it is not ours to copy between files.
_FOREIGN_KEYS = ("ARROW:schema", "pandas", "table_meta_yaml")   # the last: astropy's column units, re-made per write


def decode(raw: dict | None) -> dict[str, str]:
    """Arrow schema metadata (bytes) to a plain str dict, dropping keys that belong to the writer library."""
    if not raw:
        return {}
    out = {}
    for key, value in raw.items():
        key = key.decode() if isinstance(key, bytes) else str(key)
        if key in _FOREIGN_KEYS:
            continue
        out[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return out


def bands_of(metadata: dict[str, str]) -> list[str] | None:
    text = metadata.get(BANDS, "").strip()
    return [b.strip() for b in text.split(",") if b.strip()] or None


# Units of the columns the tools make or commonly carry (astropy/FITS spellings), by exact name ...
_UNITS_BY_NAME = {"ra": "deg", "dec": "deg", "ebv": "mag", "z_true": "", "half_light_arcsec": "arcsec",
                  "position_angle_deg": "deg", "separation_arcsec": "arcsec"}
# ... and by how a name begins or ends.
_UNIT_PREFIXES = (("mag_", "mag"), ("abs_mag_", "mag"), ("flux_", "nanomaggy"), ("psf_fwhm_", "arcsec"))
_UNIT_SUFFIXES = (("_deg", "deg"), ("_arcsec", "arcsec"), ("_mag", "mag"), ("_nmgy", "nanomaggy"),
                  ("_ra", "deg"), ("_dec", "deg"))


def unit_of(column: str) -> str | None:
    """The physical unit of a column named by convention (ra, dec, mag_r, ..._arcsec), or None."""
    name = column.lower()
    if name in _UNITS_BY_NAME:
        return _UNITS_BY_NAME[name] or None
    for prefix, unit in _UNIT_PREFIXES:
        if name.startswith(prefix):
            return unit
    for suffix, unit in _UNIT_SUFFIXES:
        if name.endswith(suffix):
            return unit
    return None


def flux_unit_of(metadata: dict[str, str]) -> str | None:
    """The pixel unit when it is a physical unit FITS readers understand (not e.g. '8-bit scaled to [0,1]')."""
    text = metadata.get(FLUX_UNIT, "").strip()
    return text if text and " " not in text and "[" not in text else None


def check_bands(metadata: dict[str, str], planes: int | None, name: str) -> None:
    """Refuse metadata whose band names repeat or do not match the image planes (``planes`` None: no images)."""
    from galtools.errors import BadData

    bands = bands_of(metadata)
    if not bands:
        return
    repeated = sorted({b for b in bands if bands.count(b) > 1})
    if repeated:
        raise BadData(f"{name}: band names repeat ({', '.join(repeated)} in {','.join(bands)})",
                      "name each image plane once, e.g. --bands g,r,i")
    if planes is not None and len(bands) != planes:
        raise BadData(f"{name}: the images have {planes} plane(s) but the metadata names {len(bands)} band(s) "
                      f"({','.join(bands)})", f"give --bands with {planes} name(s), one per plane")


def history_of(metadata: dict[str, str]) -> list[dict]:
    text = metadata.get(HISTORY)
    if not text:
        return []
    try:
        entries = json.loads(text)
    except json.JSONDecodeError:
        return []
    return entries if isinstance(entries, list) else []


def history_entry(tool: str, seed=None, argv: list[str] | None = None) -> dict:
    from galtools import __version__

    return {
        "tool": tool,
        "version": __version__,
        "argv": list(sys.argv[1:] if argv is None else argv),
        "seed": seed,
        "time": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }


def with_history(metadata: dict[str, str], tool: str, seed=None, argv=None) -> dict[str, str]:
    """A copy of ``metadata`` whose history ends with this run of ``tool``."""
    out = dict(metadata)
    entries = history_of(metadata) + [history_entry(tool, seed, argv)]
    out[HISTORY] = json.dumps(entries, separators=(",", ":"))
    return out


def encode(metadata: dict[str, str]) -> dict[bytes, bytes]:
    return {k.encode(): str(v).encode() for k, v in metadata.items()}
