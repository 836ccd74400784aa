"""Fetching the cutouts of a few objects (the strangest ones) from a cutout table, by object_id, streaming it."""
from __future__ import annotations

import numpy as np

from galtools.io import images_by_id


def images_for(source: str, ids: list) -> tuple[np.ndarray, list[str] | None]:
    """The (len(ids), bands, H, W) images of ``ids`` in the order given, and the table's band names."""
    found = images_by_id(source, ids)
    return found.stack(), found.bands
