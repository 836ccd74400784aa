"""Fetching the cutouts of a few objects (the strangest ones) from a cutout table, by object_id, streaming it."""
from __future__ import annotations

import numpy as np

from galtools.io import images_by_id


def images_for(source: str, ids: list) -> tuple[np.ndarray, list[str] | None]:
    """The (len(ids), bands, H, W) images of ``ids`` in the order given, and the table's band names."""
    found = images_by_id(source, ids)
    return found.stack(), found.bands


def draw_objects(source: str, ids: list, captions: list[str], path: str, title: str, columns: int = 8) -> None:
    """A montage of the objects ``ids`` (their cutouts in ``source``) in the order given, one caption each."""
    from galtools.viz import rgb_composite, save_montage

    pictures, bands = images_for(source, ids)
    rgb = rgb_composite(pictures, bands)
    grid = [list(rgb[i:i + columns]) for i in range(0, len(rgb), columns)]
    caption_grid = [captions[i:i + columns] for i in range(0, len(captions), columns)]
    save_montage(grid, path, captions=caption_grid, title=title)
