"""Cutouts read one row at a time and drawn as PNG tiles, with a bounded cache.

The cutout table stays open while the viewer runs; only its ``object_id`` column is read whole (to find the row of
an id).  An image is read by row: a view of the memory-mapped file for Arrow IPC, a row read for FITS, and for
Parquet the block of rows around it (Parquet decodes whole pages, so a block is cached and its neighbours come
free).  Colours are those of the montages (:func:`galtools.viz.rgb_composite`: asinh stretch), with the planes
chosen by ``--rgb``.
"""
from __future__ import annotations

import io
import threading
from collections import OrderedDict

import numpy as np
import pyarrow as pa

from galtools.errors import BadData, UsageProblem
from galtools.io import IMAGE, images_of

PARQUET_BLOCK = 256        # rows decoded together from a Parquet file
BLOCKS_CACHED = 8
TILES_CACHED = 4096        # PNG tiles kept (a few kB each)


class _Cache:
    """A small least-recently-used mapping, safe across the server's threads."""

    def __init__(self, size: int):
        self.size = size
        self.items: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        return None

    def put(self, key, value) -> None:
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


def colour_planes_of(rgb: str | None, bands: list[str] | None, count: int) -> list[int] | None:
    """Plane indices for ``--rgb`` (three band names, or three 0-based plane numbers), red first; None: the
    montages' default choice."""
    if not rgb:
        return None
    names = [b.strip() for b in rgb.split(",")]
    if len(names) != 3:
        raise UsageProblem(f"--rgb {rgb!r} needs three bands, red first", "e.g. --rgb i,r,g")
    planes = []
    for name in names:
        if bands and name in bands:
            planes.append(bands.index(name))
        elif name.isdigit() and int(name) < count:
            planes.append(int(name))
        else:
            known = ", ".join(bands) if bands else f"planes 0 to {count - 1}"
            raise UsageProblem(f"--rgb: no band {name!r} in the cutouts", f"choose from {known}")
    return planes


def render_png(image: np.ndarray, bands: list[str] | None, planes: list[int] | None) -> bytes:
    """One (bands, H, W) cutout as an RGB PNG at its own resolution (the page scales it)."""
    from PIL import Image

    rgb = composite(image[None], bands, planes)[0]
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)   # a few kB either way; fast matters more
    return buffer.getvalue()


def composite(images: np.ndarray, bands: list[str] | None, planes: list[int] | None) -> np.ndarray:
    """(n, H, W, 3) uint8 pictures of (n, bands, H, W) cutouts, exactly as the tiles show them."""
    from galtools.viz import rgb_composite

    if planes is None:
        return rgb_composite(images, bands)
    return rgb_composite(images[:, planes], ["red", "green", "blue"])


class CutoutReader:
    """Images of a cutout table by object_id, read on demand.  ``table`` is an open galtools.io Table."""

    def __init__(self, table, rgb: str | None = None):
        self.shape = table.require_images()
        if table.num_rows is None:
            raise UsageProblem("--images cannot be a stream: the viewer reads it by row", "write it to a file first")
        if "object_id" not in table.schema.names:
            raise BadData(f"{table.name} has no 'object_id' column", "give the cutout table the embeddings came from")
        self.table = table
        self.name = table.name
        self.bands = table.bands
        self.planes = colour_planes_of(rgb, self.bands, self.shape[0])
        self._parts, offset = [], 0
        for part in table.parts:
            lo, hi = max(table.start - offset, 0), min(table.stop - offset, part.num_rows)
            if lo < hi:
                self._parts.append((offset + lo - table.start, part, lo, hi))
            offset += part.num_rows
        ids = [batch.column("object_id") for batch in table.iter_batches(columns=["object_id"])]
        self.ids = pa.concat_arrays(ids) if ids else pa.array([], table.schema.field("object_id").type)
        self._row_of = self._lookup(self.ids)
        self._blocks = _Cache(BLOCKS_CACHED)
        self._tiles = _Cache(TILES_CACHED)
        self._reading = threading.Lock()   # FITS and Parquet readers are not safe across threads

    @staticmethod
    def _lookup(ids: pa.Array):
        """What ``row_of`` asks: a mapping of id to row (the first of repeated ids wins)."""
        values = ids.to_pylist()
        return dict(zip(values[::-1], range(len(values) - 1, -1, -1)))

    @property
    def count(self) -> int:
        return len(self.ids)

    def row_of(self, object_id) -> int | None:
        return self._row_of.get(object_id)

    def image(self, row: int) -> np.ndarray:
        """The (bands, H, W) float32 cutout at ``row`` of the table."""
        with self._reading:
            return self._image(row)

    def _image(self, row: int) -> np.ndarray:
        for first, part, lo, hi in self._parts:
            if first <= row < first + hi - lo:
                local = lo + row - first
                if part.fmt != "parquet":
                    batch = next(part.iter_range(local, local + 1, 1, [IMAGE]))
                    return images_of(batch)[0]
                start = lo + (local - lo) // PARQUET_BLOCK * PARQUET_BLOCK
                key = (id(part), start)
                block = self._blocks.get(key)
                if block is None:
                    stop = min(hi, start + PARQUET_BLOCK)
                    batches = list(part.iter_range(start, stop, stop - start, [IMAGE]))
                    block = np.concatenate([images_of(b) for b in batches])
                    self._blocks.put(key, block)
                return block[local - start]
        raise IndexError(row)

    def tile(self, object_id) -> bytes | None:
        """PNG bytes of the cutout of ``object_id``, or None when the table has no such id."""
        cached = self._tiles.get(object_id)
        if cached is not None:
            return cached
        row = self.row_of(object_id)
        if row is None:
            return None
        png = render_png(self.image(row), self.bands, self.planes)
        self._tiles.put(object_id, png)
        return png


class SortedIds:
    """Rows of ids found by binary search in a sorted copy (16 bytes a row for integer ids, where a dict of Python
    objects takes ~100): the first row of a repeated id, or None."""

    def __init__(self, ids: pa.Array):
        values = ids.to_numpy(zero_copy_only=False)
        self.order = np.argsort(values, kind="stable")
        self.sorted = values[self.order]

    def get(self, value):
        try:
            at = int(np.searchsorted(self.sorted, value, side="left"))
        except TypeError:        # a number asked of text ids or the reverse: not there
            return None
        if at < len(self.sorted) and self.sorted[at] == value:
            return int(self.order[at])
        return None


class SurveyCutoutReader(CutoutReader):
    """A CutoutReader for survey-sized tables: ids found in a sorted array instead of a dict."""

    _lookup = staticmethod(SortedIds)
