"""Training data: the rows of one or more cutout tables, read in shuffled batches without loading the tables.

- FITS cubes (an uncompressed float32 ``CUTOUTS`` HDU) are memory-mapped: any row is a page-cache read, so an
  epoch is a full random permutation.
- Arrow IPC files are memory-mapped too (zero-copy columns), also fully permuted.
- Parquet (and anything else galtools.io reads) is read in blocks (Parquet row groups): an epoch visits the blocks
  in random order and shuffles rows inside windows of consecutive blocks, so each row group is decoded once per
  epoch and memory stays bounded by the window.

The order of an epoch is a pure function of (seed, epoch), so a resumed run reads exactly the batches that an
uninterrupted one would have.  Small catalogue columns (labels for monitoring, E(B-V), PSF widths) are read whole
at start-up; only the images stay on disk.
"""
from __future__ import annotations

import collections
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from galtools.errors import BadData, UsageProblem
from galtools.io import images_of, open_table
from galtools.preprocess import centre_crop  # noqa: F401  (training's unaugmented views: gal-embed's crop)

BLOCK_ROWS = 4096              # block size of sources without natural blocks
WINDOW_BYTES = 512 << 20       # shuffle window of block sources: bounds the decoded images held in memory


class MemmapCube:
    """Rows of an uncompressed float32 FITS image cube (N, bands, H, W), memory-mapped (FITS is big-endian)."""

    random_access = True

    def __init__(self, path: str, cube: np.memmap):
        self.name, self.cube = path, cube
        self.num_rows = cube.shape[0]
        self.blocks = _fixed_blocks(self.num_rows)

    @classmethod
    def open(cls, path: str):
        """The memory map of ``path``'s cutout cube, or None when the file cannot be mapped (compressed, scaled...)."""
        import fitsio

        if "[" in path or not os.path.isfile(path) or path.endswith((".gz", ".fz")):
            return None
        try:
            with fitsio.FITS(path) as fits:
                cube = None
                for hdu in fits:
                    if hdu.get_exttype() == "IMAGE_HDU" and len(hdu.get_dims()) in (3, 4):
                        if cube is None or hdu.get_extname().upper() == "CUTOUTS":
                            cube = hdu
                if cube is None or cube.is_compressed():
                    return None
                header = cube.read_header()
                if header.get("BITPIX") != -32 or header.get("BSCALE", 1) != 1 or header.get("BZERO", 0) != 0:
                    return None
                dims = tuple(int(d) for d in cube.get_dims())
                offset = cube.get_offsets()["data_start"]
        except (OSError, ValueError):
            return None
        if len(dims) == 3:
            dims = (dims[0], 1, dims[1], dims[2])
        return cls(path, np.memmap(path, dtype=">f4", mode="r", offset=offset, shape=dims))

    def read(self, rows: np.ndarray) -> np.ndarray:
        order = np.argsort(rows, kind="stable")          # ascending reads are kinder to the disk
        images = np.empty((len(rows), *self.cube.shape[1:]), np.float32)
        images[order] = self.cube[rows[order]]            # the assignment converts big-endian to native
        return images


class ArrowRows:
    """Rows of an Arrow IPC file, memory-mapped: a batch is a ``take`` of the image column."""

    random_access = True

    def __init__(self, path: str):
        self.name = path
        self._map = pa.memory_map(path, "r")
        self._images = pa.ipc.open_file(self._map).read_all().column("image")
        self.num_rows = len(self._images)
        self.blocks = _fixed_blocks(self.num_rows)

    def read(self, rows: np.ndarray) -> np.ndarray:
        taken = self._images.take(pa.array(rows))
        return np.array(images_of(pa.table({"image": taken})), dtype=np.float32)


class BlockRows:
    """Rows of any galtools.io source, read a block (Parquet row group) at a time through a small cache."""

    random_access = False

    def __init__(self, part, blocks: list[tuple[int, int]], row_bytes: int, columns=("image",)):
        self.name, self._part, self.blocks, self._columns = part.name, part, blocks, list(columns)
        self.num_rows = blocks[-1][1] if blocks else 0
        self._starts = np.array([lo for lo, _ in blocks], dtype=np.int64)
        largest = max((hi - lo for lo, hi in blocks), default=1)
        # Enough blocks for a shuffle window plus the batches being prefetched.
        self._capacity = max(4, 2 * WINDOW_BYTES // max(1, largest * row_bytes) + 4)
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._block_locks = collections.defaultdict(threading.Lock)

    def _block(self, index: int) -> np.ndarray:
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
            block_lock = self._block_locks[index]
        with block_lock:                                   # one decode per block even with several readers
            with self._lock:
                if index in self._cache:
                    return self._cache[index]
            lo, hi = self.blocks[index]
            batches = list(self._part.iter_range(lo, hi, hi - lo, self._columns))
            images = images_of(pa.Table.from_batches(batches)) if batches else np.zeros((0,), np.float32)
            with self._lock:
                self._cache[index] = images
                while len(self._cache) > self._capacity:
                    self._cache.popitem(last=False)
            return images

    def read(self, rows: np.ndarray) -> np.ndarray:
        block_of = np.searchsorted(self._starts, rows, side="right") - 1
        out = None
        for index in np.unique(block_of):
            chosen = np.nonzero(block_of == index)[0]
            images = self._block(int(index))
            if out is None:
                out = np.empty((len(rows), *images.shape[1:]), np.float32)
            out[chosen] = images[rows[chosen] - self.blocks[index][0]]
        return out


def _fixed_blocks(num_rows: int, size: int = BLOCK_ROWS) -> list[tuple[int, int]]:
    return [(lo, min(num_rows, lo + size)) for lo in range(0, num_rows, size)]


def _parquet_blocks(path: str) -> list[tuple[int, int]] | None:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except (pa.ArrowInvalid, OSError):
        return None
    blocks, start = [], 0
    for i in range(meta.num_row_groups):
        size = meta.row_group(i).num_rows
        if size:
            blocks.append((start, start + size))
        start += size
    return blocks


def _reader_for(part, row_bytes: int):
    """The fastest reader that galtools can give for one file of a table."""
    if part.fmt == "fits":
        cube = MemmapCube.open(part.name)
        if cube is not None and cube.num_rows == part.num_rows:
            return cube
        return BlockRows(part, _fixed_blocks(part.num_rows, 1024), row_bytes, columns=None)
    if part.fmt == "arrow" and os.path.isfile(part.name):
        # e.g. a stream saved to a file is no random-access Arrow file: read it in blocks instead (below)
        with contextlib.suppress(pa.ArrowInvalid, OSError):
            return ArrowRows(part.name)
    if part.fmt == "parquet":
        blocks = _parquet_blocks(part.name)
        if blocks is not None:
            return BlockRows(part, blocks, row_bytes)
    return BlockRows(part, _fixed_blocks(part.num_rows), row_bytes)


class _InMemory:
    """An Arrow stream from a pipe can be read only once: training reads it whole into memory."""

    random_access = True

    def __init__(self, name: str, images: np.ndarray):
        self.name, self.images, self.num_rows = name, images, len(images)
        self.blocks = _fixed_blocks(self.num_rows)

    def read(self, rows: np.ndarray) -> np.ndarray:
        return self.images[rows]


@dataclass
class Batch:
    step: int
    epoch: int
    rows: np.ndarray          # global row indices: the objects' keys for the augmentation streams
    images: object            # numpy (n, bands, H, W) float32, or a pinned torch tensor


class CutoutData:
    """Every input table as one sequence of rows: shapes, bands, catalogue columns, and batched image reads."""

    def __init__(self, sources: list[str]):
        self.tables = []
        try:
            for source in sources:
                self.tables.append(open_table(source))
        except BaseException:
            self.close()
            raise
        first = self.tables[0]
        self.image_shape = first.require_images()
        self.bands = first.bands or [f"band{i}" for i in range(self.image_shape[0])]
        self.metadata = dict(first.metadata)
        for table in self.tables[1:]:
            shape = table.require_images()
            if shape != self.image_shape:
                raise BadData(f"{table.name}: cutouts of shape {shape}, but {first.name} has {self.image_shape}",
                              "train on tables of the same bands and size")
            if (table.bands or self.bands) != self.bands:
                raise BadData(f"{table.name}: bands {','.join(table.bands)} differ from {','.join(self.bands)}",
                              "train on tables with the same bands in the same order")
        if len(self.bands) != self.image_shape[0]:
            raise BadData(f"{first.name}: metadata names {len(self.bands)} bands ({','.join(self.bands)}) but the "
                          f"images have {self.image_shape[0]}", "fix galtools.bands, e.g. re-pack with gal-pack")
        row_bytes = int(np.prod(self.image_shape)) * 4
        self.readers, starts = [], [0]
        for table in self.tables:
            if table.num_rows is None:   # an Arrow stream on stdin
                self.readers.append(_InMemory(table.name, images_of(table.read_all(columns=["image"]))))
            else:
                self.readers.extend(_reader_for(part, row_bytes) for part in table.parts)
        for reader in self.readers:
            starts.append(starts[-1] + reader.num_rows)
        self.starts = np.array(starts, dtype=np.int64)
        self.num_rows = int(self.starts[-1])
        if self.num_rows == 0:
            raise BadData(f"{', '.join(t.name for t in self.tables)}: no cutouts to train on (the table is empty)",
                          "check the command that made the table")
        self.columns: dict[str, np.ndarray] = {}
        self.random_access = all(r.random_access for r in self.readers)

    @property
    def names(self) -> list[str]:
        return list(self.tables[0].schema.names)

    def has_column(self, name: str) -> bool:
        return name in self.tables[0].schema.names

    def load_columns(self, wanted: list[str]) -> None:
        """Read the catalogue columns ``wanted`` (those that exist) whole into ``self.columns``."""
        wanted = [c for c in wanted if c in self.tables[0].schema.names and c not in self.columns]
        if not wanted:
            return
        parts = {c: [] for c in wanted}
        for table in self.tables:
            if table.num_rows is None:
                raise UsageProblem(f"{table.name}: catalogue columns cannot be read from a stream here",
                                   "give the table as a file")
            for batch in table.iter_batches(columns=wanted):
                for c in wanted:
                    parts[c].append(batch.column(c).to_numpy(zero_copy_only=False))
        self.columns.update({c: np.concatenate(v) if v else np.zeros(0) for c, v in parts.items()})

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Raw images of global ``rows`` (any order), float32 (n, bands, H, W); NaN/inf is bad data."""
        rows = np.asarray(rows, dtype=np.int64)
        part_of = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty((len(rows), *self.image_shape), np.float32)
        for p in np.unique(part_of):
            chosen = np.nonzero(part_of == p)[0]
            out[chosen] = self.readers[p].read(rows[chosen] - self.starts[p])
        finite = np.isfinite(out).reshape(len(rows), -1).all(axis=1)
        if not finite.all():
            bad = int(rows[np.argmin(finite)])
            p = int(np.searchsorted(self.starts, bad, side="right") - 1)
            raise BadData(f"{self.readers[p].name}: row {bad - int(self.starts[p])} holds NaN or infinite pixels",
                          "replace them (e.g. by 0 with a mask column) or drop the rows before training")
        return out

    # -- the order of an epoch ------------------------------------------------------------------------------
    def epoch_order(self, seed: int, epoch: int, batch_size: int) -> np.ndarray:
        """All row indices in this epoch's order: a pure function of (seed, epoch)."""
        rng = np.random.default_rng([seed, epoch])
        if self.random_access:
            return rng.permutation(self.num_rows)
        blocks = [(lo + int(self.starts[p]), hi + int(self.starts[p]))
                  for p, reader in enumerate(self.readers) for lo, hi in reader.blocks]
        row_bytes = int(np.prod(self.image_shape)) * 4
        window_rows = max(4 * batch_size, WINDOW_BYTES // row_bytes)
        order, window = [], []
        for b in rng.permutation(len(blocks)):
            window.append(np.arange(*blocks[b]))
            if sum(map(len, window)) >= window_rows:
                order.append(rng.permutation(np.concatenate(window)))
                window = []
        if window:
            order.append(rng.permutation(np.concatenate(window)))
        return np.concatenate(order)

    def close(self) -> None:
        for table in self.tables:
            table.close()


class BatchLoader:
    """Batches ``start_step .. total_steps-1`` of a run, read ahead by a pool of threads.

    Step s reads rows ``order(epoch)[i*B:(i+1)*B]`` (i = s mod steps_per_epoch) of the training rows, this
    rank's contiguous share of them; reads release the GIL (memory maps, Arrow decoding), so threads overlap
    reading with the training step.  ``pin`` puts batches in pinned memory for asynchronous copies to a GPU.
    """

    def __init__(self, data: CutoutData, train_rows: np.ndarray | None, batch_size: int, seed: int, start_step: int,
                 total_steps: int, rank: int = 0, world: int = 1, threads: int = 4, prefetch: int = 4,
                 pin: bool = False):
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.rank, self.world, self.pin = rank, world, pin
        self.start_step, self.total_steps = start_step, total_steps
        self.exclude = None if train_rows is None else np.setdiff1d(np.arange(data.num_rows), train_rows)
        self.num_train = data.num_rows if train_rows is None else len(train_rows)
        self.steps_per_epoch = self.num_train // batch_size
        self.threads, self.prefetch = max(1, threads), max(1, prefetch)
        self._orders: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def _order(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._orders:
                order = self.data.epoch_order(self.seed, epoch, self.batch_size)
                if self.exclude is not None and len(self.exclude):
                    order = order[~np.isin(order, self.exclude)]
                self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
                self._orders[epoch] = order
            return self._orders[epoch]

    def rows_of(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.steps_per_epoch)
        global_rows = self._order(epoch)[i * self.batch_size:(i + 1) * self.batch_size]
        share = self.batch_size // self.world
        return global_rows[self.rank * share:(self.rank + 1) * share]

    def _load(self, step: int) -> Batch:
        rows = self.rows_of(step)
        images = self.data.read(rows)
        if self.pin:
            import torch
            images = torch.from_numpy(images).pin_memory()
        return Batch(step, step // self.steps_per_epoch, rows, images)

    def __iter__(self):
        pending: collections.deque = collections.deque()
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="gal-train-reader")
        try:
            next_step = self.start_step
            while next_step < self.total_steps and len(pending) < self.prefetch:
                pending.append(pool.submit(self._load, next_step))
                next_step += 1
            while pending:
                batch = pending.popleft().result()
                if next_step < self.total_steps:
                    pending.append(pool.submit(self._load, next_step))
                    next_step += 1
                yield batch
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def ahead(items, prepare, background: bool = True):
    """``(item, prepare(item))`` for each of ``items``, with ``prepare`` of the next item running in a background
    thread while the caller works on the current one (torch and numpy release the GIL in their kernels: on a CPU
    the next batch's augmentations overlap the training step).  ``background=False``: in the caller's thread."""
    if not background:
        for item in items:
            yield item, prepare(item)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="gal-train-views") as pool:
        pending = None
        for item in items:
            future = pool.submit(prepare, item)
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = (item, future)
        if pending is not None:
            yield pending[0], pending[1].result()
