"""``open_output``: one writer for every tool. Atomic (temporary file, then rename), refuses to clobber without
``overwrite``, refuses binary output to a terminal, appends this run to the provenance history."""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile

import pyarrow as pa

from galtools.errors import GalError, OutputError, UsageProblem
from galtools.io import meta
from galtools.io.files import usual_mode

FORMATS = {".fits": "fits", ".fit": "fits", ".fits.gz": "fits", ".fit.gz": "fits",
           ".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".feather": "arrow", ".arrows": "arrow-stream"}
FORMAT_NAMES = ("fits", "parquet", "arrow", "arrow-stream")


def format_for(path: str, fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMAT_NAMES:
            raise UsageProblem(f"unknown --format '{fmt}'", f"choose one of {', '.join(FORMAT_NAMES)}")
        return fmt
    if path == "-":
        return "arrow-stream"
    lower = path.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if lower.endswith(suffix):
            return FORMATS[suffix]
    raise UsageProblem(f"cannot tell the output format of '{path}' from its extension",
                       "end it in .fits, .parquet or .arrow, or pass --format")


def check_output_path(path: str, overwrite: bool) -> None:
    """Fail early, before any work, when an output cannot or must not be written."""
    if path == "-":
        if sys.stdout.isatty():
            raise UsageProblem("refusing to write a binary table to the terminal",
                               "pass -o FILE, or pipe it into another tool such as gal-info -")
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputError(f"cannot write {path}: folder {os.path.dirname(path) or '.'} does not exist",
                          "create it first (mkdir -p)")
    if os.path.isdir(path):
        raise OutputError(f"cannot write {path}: it is a folder", "give a file name")
    if os.path.exists(path) and not overwrite:
        raise GalError(f"{path} already exists", "pass --overwrite to replace it")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"cannot write {path}: folder is not writable", "choose another output folder")


class _ArrowWriter:
    def __init__(self, sink, fmt: str):
        self._sink, self._fmt, self._writer, self.schema = sink, fmt, None, None

    def start(self, schema: pa.Schema):
        import pyarrow.parquet as pq

        self.schema = schema
        if self._fmt == "parquet":
            self._writer = pq.ParquetWriter(self._sink, schema, compression="zstd")
        elif self._fmt == "arrow":
            self._writer = pa.ipc.new_file(self._sink, schema)
        else:
            self._writer = pa.ipc.new_stream(self._sink, schema)

    def write(self, batch: pa.RecordBatch):
        if self._fmt == "parquet":
            self._writer.write_batch(batch, row_group_size=max(1, batch.num_rows))
        else:
            self._writer.write_batch(batch)

    def close(self):
        if self._writer is not None:
            self._writer.close()

    def discard(self):
        """Nothing to remove: an Arrow or Parquet writer keeps no side files."""


class Output:
    """A table being written. Use as a context manager: on an exception the partial output is removed."""

    def __init__(self, path: str, fmt: str | None = None, overwrite: bool = False,
                 metadata: dict | None = None, tool: str = "galtools", seed=None):
        self.path = path
        self.format = format_for(path, fmt)
        check_output_path(path, overwrite)
        self.metadata = meta.with_history(dict(metadata or {}), tool, seed)
        self.rows = 0
        self._schema = None
        self._to_stdout = path == "-"
        if self._to_stdout and self.format == "arrow-stream":
            self._target = None
            self._writer = _ArrowWriter(sys.stdout.buffer, self.format)
        else:
            self._target = self._temporary_path()
            self._writer = None

    def _temporary_path(self) -> str:
        if self._to_stdout:
            handle, tmp = tempfile.mkstemp(prefix="galtools-out-", suffix=".fits" if self.format == "fits" else ".tmp")
        else:
            folder, name = os.path.split(os.path.abspath(self.path))
            handle, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{''.join(_suffixes(name))}", dir=folder)
        os.close(handle)
        return tmp

    def _start(self, schema: pa.Schema):
        from galtools.io.fits import FitsWriter

        self._schema = schema.with_metadata(meta.encode(self.metadata))
        if self._writer is None:
            if self.format == "fits":
                self._writer = FitsWriter(self._target, self.metadata, schema)
            else:
                self._writer = _ArrowWriter(self._target, self.format)
        if isinstance(self._writer, _ArrowWriter):
            self._writer.start(self._schema)

    def write(self, data) -> None:
        """Write a RecordBatch or Table; later writes are cast to the first one's column types."""
        batches = data.to_batches() if isinstance(data, pa.Table) else [data]
        if self._schema is None and not batches:   # an empty table still fixes the columns
            self._start(data.schema)
        for batch in batches:
            if self._schema is None:
                self._start(batch.schema)
            elif not batch.schema.remove_metadata().equals(self._schema.remove_metadata()):
                batch = pa.Table.from_batches([batch]).cast(self._schema).to_batches()[0]
            if batch.num_rows:
                self._writer.write(batch.replace_schema_metadata(self._schema.metadata))
                self.rows += batch.num_rows

    def set_metadata(self, key: str, value: str) -> None:
        """Add metadata before the first write (after it, the schema is fixed): e.g. what gal-embed decided on the
        table's first cutouts."""
        if self._schema is not None:
            raise RuntimeError("metadata must be set before the first write")
        self.metadata[key] = value

    def commit(self, empty_schema: pa.Schema | None = None) -> None:
        if self._schema is None:
            if empty_schema is None:
                raise GalError("nothing to write: the input had no rows", "check the input and any --shard or filter")
            self._start(empty_schema)
        self._writer.close()
        if self._target is None:
            return
        if self._to_stdout:
            with open(self._target, "rb") as handle:
                shutil.copyfileobj(handle, sys.stdout.buffer, length=1 << 22)
            sys.stdout.buffer.flush()
            os.unlink(self._target)
        else:
            usual_mode(self._target)   # mkstemp made it private
            os.replace(self._target, self.path)
        self._writer.discard()

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError):   # cleaning up after a failure must not hide it
                self._writer.discard()
        if self._target is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._target)

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is None:
            try:
                self.commit(self._empty_schema)
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()
        return False

    _empty_schema = None

    def expect_schema(self, schema: pa.Schema) -> None:
        """The columns to write if no row ever comes (an empty shard): an empty table rather than an error."""
        self._empty_schema = schema


def _suffixes(name: str) -> list[str]:
    lower = name.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if lower.endswith(suffix):
            return [name[-len(suffix):]]
    return []


def open_output(path: str, overwrite: bool = False, fmt: str | None = None, metadata: dict | None = None,
                tool: str = "galtools", seed=None) -> Output:
    return Output(path, fmt=fmt, overwrite=overwrite, metadata=metadata, tool=tool, seed=seed)
