"""Table metadata: the keys the tools share and the provenance history every write appends to.

Metadata is a flat ``dict[str, str]`` (Arrow schema metadata is bytes->bytes; FITS gets it as header cards).
"""
from __future__ import annotations

import datetime as _dt
import json
import sys

BANDS = "galtools.bands"
PIXSCALE = "galtools.pixscale_arcsec"
FLUX_UNIT = "galtools.flux_unit"
HISTORY = "galtools.history"
MODEL_SHA256 = "galtools.model_sha256"

# Arrow keeps its own schema in Parquet under this key; it is not ours to copy between files.
_FOREIGN_KEYS = ("ARROW:schema", "pandas")


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
