"""Where a table's embeddings come from: the encoder recorded by each part, and the check that there is one."""
from __future__ import annotations

from galtools.errors import BadData
from galtools.io.meta import MODEL_SHA256


def model_hashes_of(table) -> list[str | None]:
    """``galtools.model_sha256`` of each part of a galtools.io Table (one entry per part)."""
    parts_metadata = getattr(table, "parts_metadata", None) or [table.metadata]
    return [m.get(MODEL_SHA256) or None for m in parts_metadata]


def check_single_model(table) -> None:
    """BadData when the parts of one table were embedded by different models: their vectors do not compare."""
    hashes = model_hashes_of(table)
    distinct = list(dict.fromkeys(hashes))
    if len(distinct) > 1:
        names = [getattr(p, "name", "?") for p in getattr(table, "parts", [])] or ["?"] * len(hashes)
        seen = {h: names[hashes.index(h)] for h in distinct}
        listed = ", ".join(f"{(h or 'none')[:12]} in {name}" for h, name in seen.items())
        raise BadData(f"{table.name} mixes embeddings of {len(distinct)} models ({listed})",
                      "embed all parts with the same encoder.onnx, or search each model's table separately")
