"""The tiled image map (as in Stein et al.'s and Hayat et al.'s pictures of the representation): the map's bounding
box is cut into a grid of cells, and each occupied cell shows the galaxy nearest to its centre, so similar galaxies
sit together and the picture is not buried under overlapping points.

The cutouts are read once, in record batches, and only the current best image of each cell is kept (at most
cells x cells images in memory), so CUTOUTS may be a large table or a pipe.  Distances are measured in cell
units; ties go to the object that comes first in the map.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from galtools.errors import BadData
from galtools.io import IMAGE, display_name, images_of, open_table

log = logging.getLogger("galtools")


@dataclass(frozen=True)
class Grid:
    """``cells`` x ``cells`` equal square cells over the box [lo, hi] of the map."""

    lo: np.ndarray
    hi: np.ndarray
    cells: int

    @classmethod
    def over(cls, xy: np.ndarray, cells: int) -> "Grid":
        """A square box around the map (its longer side), so the tiles keep the map's proportions."""
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        side = float(np.max(hi - lo)) or 1.0     # a single point still gets a grid
        centre = (lo + hi) / 2
        return cls(centre - side / 2, centre + side / 2, cells)

    def locate(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cell number = row_from_bottom x cells + column, distance to the cell's centre in cell units)."""
        scaled = (xy - self.lo) / (self.hi - self.lo) * self.cells
        index = np.clip(np.floor(scaled).astype(np.int64), 0, self.cells - 1)
        distance = np.hypot(*(scaled - (index + 0.5)).T)
        return index[:, 1] * self.cells + index[:, 0], distance


class TilePicker:
    """Keeps, for each cell, the image of the object nearest to its centre among those offered so far."""

    def __init__(self, grid: Grid, xy: np.ndarray):
        self.grid, self.xy = grid, xy
        size = grid.cells * grid.cells
        self.distance = np.full(size, np.inf)
        self.row = np.full(size, -1, dtype=np.int64)
        self.images: dict[int, np.ndarray] = {}

    def offer(self, map_rows: np.ndarray, images: np.ndarray) -> None:
        if len(map_rows) == 0:
            return
        cells, distance = self.grid.locate(self.xy[map_rows])
        order = np.lexsort((map_rows, distance, cells))      # by cell, then distance, then map order
        first = order[np.r_[True, cells[order][1:] != cells[order][:-1]]]
        for k in first:
            cell = cells[k]
            if (distance[k], map_rows[k]) < (self.distance[cell], self.row[cell]):
                self.distance[cell], self.row[cell] = distance[k], map_rows[k]
                self.images[cell] = np.array(images[k], dtype=np.float32)

    def render(self, bands: list[str] | None, tile: int) -> np.ndarray:
        """(cells x tile, cells x tile, 3) uint8 picture: thumbnails on black, the map's y axis pointing up."""
        from PIL import Image

        from galtools.viz import rgb_composite

        cells = self.grid.cells
        canvas = np.zeros((cells * tile, cells * tile, 3), dtype=np.uint8)
        chosen = sorted(self.images)
        if not chosen:
            return canvas
        pictures = rgb_composite(np.stack([self.images[c] for c in chosen]), bands)
        for cell, picture in zip(chosen, pictures):
            row_from_bottom, column = divmod(cell, cells)
            top = (cells - 1 - row_from_bottom) * tile
            thumbnail = Image.fromarray(picture).resize((tile, tile), Image.LANCZOS)
            canvas[top:top + tile, column * tile:(column + 1) * tile] = np.asarray(thumbnail)
        return canvas


def _map_rows_of(batch_ids, map_ids: pa.Array, name: str) -> np.ndarray:
    """Row in the map of each cutout's object_id (-1: not in the map)."""
    if not batch_ids.type.equals(map_ids.type):
        try:
            batch_ids = batch_ids.cast(map_ids.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise BadData(f"{name}: object_id is {batch_ids.type} but the embeddings' is {map_ids.type}",
                          "give the cutouts the embeddings were made from") from None
    rows = pc.index_in(batch_ids, value_set=map_ids)
    return np.asarray(rows.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)


def tile_map(xy: np.ndarray, map_ids: pa.Array, cutouts: str, cells: int, tile: int) -> tuple[np.ndarray, int]:
    """The tiled picture and the number of cells that got a galaxy."""
    name = display_name(cutouts)
    grid = Grid.over(xy, cells)
    picker = TilePicker(grid, xy)
    found = 0
    with open_table(cutouts) as table:
        for needed in ("object_id", IMAGE):
            if needed not in table.schema.names:
                raise BadData(f"{name} has no '{needed}' column (columns: {', '.join(table.schema.names)})",
                              "give the cutout table the embeddings were made from (gal-sim, gal-pack)")
        bands = table.bands
        for batch in table.iter_batches(columns=["object_id", IMAGE]):
            rows = _map_rows_of(batch.column("object_id"), map_ids, name)
            inside = np.flatnonzero(rows >= 0)
            found += len(inside)
            if len(inside):
                picker.offer(rows[inside], images_of(batch)[inside])
    if found == 0:
        raise BadData(f"none of the {len(xy)} objects of the map is in {name} (compared by object_id)",
                      "give the cutout table the embeddings were made from")
    if found < len(xy):
        log.info(f"{len(xy) - found} objects of the map have no cutout in {name}")
    return picker.render(bands, tile), len(picker.images)
