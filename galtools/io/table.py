"""``open_table``: one reader over a path, stdin, a folder or a glob of parts, optionally one shard of it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa

from galtools.errors import BadData, GalError, InputMissing
from galtools.io import meta, sources
from galtools.io.shard import Shard
from galtools.io.tensor import IMAGE, check_image_type, is_tensor_type

BATCH_BYTES = 64 << 20   # target size of one record batch: bounded memory, still large enough for fast I/O


@dataclass(frozen=True)
class ReadOptions:
    """How to read tables that do not say it themselves: an HDF5 file's image dataset, id column and band names;
    whether a partitioned folder's partition columns (HATS ``Norder``, ``Dir``, ``Npix``) are carried."""

    image_key: str | None = None
    id_column: str | None = None
    bands: tuple[str, ...] | None = None
    partition_columns: bool = True


def _open_source(path: str, options: ReadOptions | None = None):
    from galtools.io.arrow import ArrowFileSource, ParquetSource
    from galtools.io.fits import FitsSource

    try:
        fmt = sources.sniff_path(path.split("[", 1)[0])
    except IsADirectoryError:
        raise InputMissing(f"{path}: is a folder inside a folder of parts", "give the parts' folder or a glob") from None
    except OSError as exc:
        raise InputMissing(f"{path}: cannot be read ({exc.strerror})", "check the path and permissions") from None
    if fmt == sources.FITS:
        return FitsSource(path)
    if fmt == sources.PARQUET:
        return ParquetSource(path)
    if fmt == sources.ARROW_FILE:
        return ArrowFileSource(path)
    if fmt == sources.HDF5:
        from galtools.io.hdf5 import Hdf5Source

        return Hdf5Source(path, options)
    return ArrowFileSource(path, stream=True)   # an Arrow stream saved to a file


class Table:
    """A table read in record batches. ``num_rows`` is None only for an unsharded Arrow stream on stdin."""

    def __init__(self, parts: list, shard: Shard | None = None, name: str = "", shard_by_files: bool = False):
        self.parts = parts
        self.name = name or parts[0].name
        self.schema = parts[0].schema
        for part in parts[1:]:
            if not part.schema.equals(self.schema):
                raise BadData(f"{part.name}: its columns differ from {parts[0].name}'s",
                              "parts read as one table must come from the same command")
        self.metadata = dict(parts[0].metadata)
        self.parts_metadata = [p.metadata for p in parts]
        self.format = parts[0].fmt
        counts = [p.num_rows for p in parts]
        self.total_rows = None if None in counts else int(sum(counts))
        self.shard = shard
        if shard is not None and shard_by_files:   # whole files per shard: a partition per task
            first, last = shard.bounds(len(parts))
            self.start, self.stop = int(sum(counts[:first])), int(sum(counts[:last]))
        elif shard is not None and self.total_rows is not None:
            self.start, self.stop = shard.bounds(self.total_rows)
        else:
            self.start, self.stop = 0, self.total_rows
        self.num_rows = None if self.stop is None else self.stop - self.start

    # -- what the table holds
    @property
    def bands(self) -> list[str] | None:
        """The band of each image plane; BadData when the metadata contradicts the images (a table from an older
        or foreign writer)."""
        shape = self.image_shape
        meta.check_bands(self.metadata, shape[0] if shape else None, self.name)
        return meta.bands_of(self.metadata)

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        if IMAGE in self.schema.names and is_tensor_type(self.schema.field(IMAGE).type):
            return check_image_type(self.schema.field(IMAGE).type, self.name)
        return None

    @property
    def history(self) -> list[dict]:
        return meta.history_of(self.metadata)

    def default_batch_size(self, columns=None) -> int:
        row_bytes = 64
        for field in self.schema:
            if columns is not None and field.name not in columns:
                continue
            if is_tensor_type(field.type):
                row_bytes += int(np.prod(field.type.shape)) * 4
            elif pa.types.is_fixed_size_list(field.type):
                row_bytes += field.type.list_size * 4
            else:
                row_bytes += 16
        return max(1, min(65536, BATCH_BYTES // row_bytes))

    # -- reading
    def iter_batches(self, batch_size: int | None = None, columns=None) -> Iterator[pa.RecordBatch]:
        batch_size = batch_size or self.default_batch_size(columns)
        if self.stop is None:   # a stream: one part, read whole
            yield from self.parts[0].iter_range(0, None, batch_size, columns)
            return
        offset = 0
        for part in self.parts:
            lo, hi = max(self.start - offset, 0), min(self.stop - offset, part.num_rows)
            if lo < hi:
                yield from part.iter_range(lo, hi, batch_size, columns)
            offset += part.num_rows

    def read_all(self, columns=None) -> pa.Table:
        batches = list(self.iter_batches(columns=columns))
        schema = self.schema if columns is None else pa.schema([f for f in self.schema if f.name in columns])
        return pa.Table.from_batches(batches, schema=schema)

    def require_images(self) -> tuple[int, int, int]:
        shape = self.image_shape
        if shape is None:
            raise BadData(f"{self.name}: has no 'image' column (columns: {', '.join(self.schema.names)})",
                          "give a cutout table, e.g. from gal-pack or gal-sim")
        return shape

    def close(self):
        for part in self.parts:
            part.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_table(source: str, shard: Shard | None = None, options: ReadOptions | None = None) -> Table:
    """Open a path, ``-`` (stdin), a folder or glob of parts as one table; ``shard`` selects a contiguous slice.

    A partitioned Parquet folder (``key=value`` sub-folders, a HATS catalogue) reads as one table too, and a shard
    of it is a run of whole files."""
    from galtools.io.arrow import ArrowStreamSource

    if source == "-":
        fmt, stream_or_path = sources.open_stdin()
        if fmt == sources.ARROW_STREAM and shard is None:
            return _named_planes(Table([ArrowStreamSource(stream_or_path)], name="stdin"), options)
        if fmt == sources.ARROW_STREAM:   # a shard needs the row count: keep the stream in a file
            stream_or_path = sources.spool_to_file(stream_or_path, ".arrows")
        try:
            part = _open_source(stream_or_path, options)
        except GalError as exc:   # name what the user gave, not the temporary copy
            exc.what = exc.what.replace(stream_or_path, "stdin")
            raise
        part.name = "stdin"
        return _named_planes(Table([part], shard, name="stdin"), options)
    from galtools.io import hats, partitioned

    catalogue = hats.catalogue_root(source)   # a HATS collection reads as its primary catalogue
    if catalogue is None and os.path.isdir(source):
        hats.check_finished(source)
    root = partitioned.partition_root(catalogue or source) if os.path.isdir(source) else None
    if root is not None:
        files = partitioned.partition_files(root)
        if not files:
            raise InputMissing(f"{source}: partitioned folder holds no Parquet files", "check the path")
        partitioned.check_listed_partitions(source, root, files)
        carry = options is None or options.partition_columns
        parts = [partitioned.PartitionedSource(_open_source(path, options), values, carry) for path, values in files]
        return _named_planes(Table(parts, shard, name=source, shard_by_files=True), options)
    parts = [_open_source(path, options) for path in sources.expand_parts(source)]
    return _named_planes(Table(parts, shard, name=source), options)


def _named_planes(table: Table, options: ReadOptions | None) -> Table:
    """``--bands`` names the image planes of a table that does not name them itself (an HDF5 file, a bare FITS
    cube, a table from another program); a table that names them keeps its names (gal-pack selects by them)."""
    names = options.bands if options is not None else None
    shape = table.image_shape
    if not names or shape is None or meta.bands_of(table.metadata):
        return table
    if len(names) != shape[0]:
        from galtools.errors import UsageProblem

        raise UsageProblem(f"--bands names {len(names)} bands but {table.name}'s images have {shape[0]} planes",
                           f"give {shape[0]} names, one per plane in their order")
    table.metadata[meta.BANDS] = ",".join(names)
    return table
