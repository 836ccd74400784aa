"""``open_output``: one writer for every tool. Atomic (temporary file, then rename), refuses to clobber without
``overwrite``, refuses binary output to a terminal, appends this run to the provenance history.

A FIFO, a character device (``/dev/null``) or ``/dev/stdout`` is written into, as ``> path`` would: it is never
replaced, and needs no ``overwrite``. A full disk or quota is an :class:`OutputError` naming the file system."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import sys
import tempfile

import pyarrow as pa

from galtools.errors import BadData, GalError, OutputError, UsageProblem
from galtools.io import meta
from galtools.io.files import Temporary, write_failure

FORMATS = {".fits": "fits", ".fit": "fits", ".fits.gz": "fits", ".fit.gz": "fits",
           ".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".feather": "arrow", ".arrows": "arrow-stream",
           ".csv": "csv", ".tsv": "tsv"}
FORMAT_NAMES = ("fits", "parquet", "arrow", "arrow-stream", "csv", "tsv")
TEXT_FORMATS = {"csv": ",", "tsv": "\t"}   # plain tables only: no image or vector columns


STDOUT_NAMES = ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1")


def output_kind(path: str) -> str:
    """'stdout' for '-' and /dev/stdout, 'stream' for a FIFO, a device or another open descriptor (written into,
    never replaced), 'file' for everything else (written beside, then renamed onto)."""
    if path == "-" or os.path.abspath(path) in STDOUT_NAMES:
        return "stdout"
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "file"
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        return "stream"
    if os.path.islink(path) and os.path.realpath(path).startswith(("/proc/", "/dev/fd/")):
        return "stream"   # /dev/stderr, /dev/fd/N: someone else's open file, not ours to rename onto
    return "file"


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
    if output_kind(path) != "file":
        return "arrow-stream"   # a pipe or a device without an extension, like stdout
    raise UsageProblem(f"cannot tell the output format of '{path}' from its extension",
                       "end it in .fits, .parquet, .arrow, .csv or .tsv, or pass --format")


def check_output_path(path: str, overwrite: bool) -> None:
    """Fail early, before any work, when an output cannot or must not be written."""
    kind = output_kind(path)
    if kind == "stdout":
        if sys.stdout.isatty():
            raise UsageProblem("refusing to write a binary table to the terminal",
                               "pass -o FILE, or pipe it into another tool such as gal-info -")
        return
    if kind == "stream":   # written into, never replaced: nothing to overwrite
        if not os.access(path, os.W_OK):
            raise OutputError(f"cannot write {path}: permission denied", "choose another output")
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputError(f"cannot write {path}: folder {os.path.dirname(path) or '.'} does not exist",
                          "create it first (mkdir -p)")
    if os.path.isdir(path):
        raise OutputError(f"cannot write {path}: it is a folder", "give a file name")
    if os.path.lexists(path) and not overwrite:   # a dangling symlink is there too, and would be replaced
        what = "" if os.path.exists(path) else f" (a symlink to {os.readlink(path)}, which does not exist)"
        raise GalError(f"{path} already exists{what}", "pass --overwrite to replace it")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"cannot write {path}: folder is not writable", "choose another output folder")


def with_units(schema: pa.Schema) -> pa.Schema:
    """Units of known columns in each field's metadata (``unit``), and in the ``table_meta_yaml`` that astropy's
    Parquet reader takes column units from."""
    fields, described = [], []
    for field in schema:
        unit = meta.unit_of(field.name)
        if unit:
            field = field.with_metadata({**(field.metadata or {}), b"unit": unit.encode()})
        fields.append(field)
        described.append({"name": field.name, **({"unit": unit} if unit else {})})
    extra = {b"table_meta_yaml": json.dumps({"datatype": described}).encode()} if any("unit" in d for d in described) else {}
    return pa.schema(fields, metadata={**(schema.metadata or {}), **extra})


def check_plain(schema: pa.Schema, fmt: str, name: str) -> None:
    """CSV and TSV hold one value per cell: refuse image and vector columns, naming them."""
    nested = [f.name for f in schema if pa.types.is_nested(f.type) or isinstance(f.type, pa.BaseExtensionType)]
    if nested:
        raise BadData(f"{name}: {fmt.upper()} cannot hold the image or vector column(s) {', '.join(nested)}",
                      "leave them out (e.g. --drop-vectors, --drop-embedding or --no-pdf where the tool has it), "
                      "or write .parquet or .fits")


class _TextWriter:
    """CSV or TSV with a header row (pyarrow's writer: quoting and number formats it gets right)."""

    def __init__(self, sink, fmt: str):
        self._sink, self._delimiter, self._writer = sink, TEXT_FORMATS[fmt], None

    def start(self, schema: pa.Schema):
        import pyarrow.csv as pacsv

        self._writer = pacsv.CSVWriter(self._sink, schema.remove_metadata(),
                                       write_options=pacsv.WriteOptions(delimiter=self._delimiter))

    def write(self, batch: pa.RecordBatch):
        self._writer.write_batch(batch.replace_schema_metadata(None))

    def close(self):
        if self._writer is not None:
            self._writer.close()

    def discard(self):
        """Nothing to remove: the CSV writer keeps no side files."""


class _ArrowWriter:
    def __init__(self, sink, fmt: str):
        self._sink, self._fmt, self._writer, self.schema = sink, fmt, None, None

    def start(self, schema: pa.Schema):
        import pyarrow.parquet as pq

        self.schema = schema = with_units(schema)
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
        self._kind = output_kind(path)
        self._to_stdout = self._kind != "file"   # stdout, a FIFO or a device: written into, not renamed onto
        self._stream = None                       # the FIFO or device, once opened
        self._target = self._writer = self._temporary = None
        if not (self._to_stdout and self.format in ("arrow-stream", *TEXT_FORMATS)):
            self._target = self._temporary_path()

    def _sink(self):
        """Where a streamed output goes: stdout's buffer, or the FIFO/device opened for writing."""
        if self._kind == "stdout":
            return sys.stdout.buffer
        if self._stream is None:
            try:
                self._stream = open(self.path, "wb")
            except OSError as exc:
                raise write_failure(exc, self.path) from None
        return self._stream

    def _where(self) -> str:
        """The folder whose file system receives the bytes (for reporting a full disk)."""
        if self._temporary is not None:
            return self._temporary.folder
        if self._target is not None:
            return os.path.dirname(self._target)
        return os.path.dirname(os.path.abspath(self.path)) if self._kind == "stream" else os.getcwd()

    def _temporary_path(self) -> str:
        try:
            if self._to_stdout:
                handle, tmp = tempfile.mkstemp(prefix="galtools-out-",
                                               suffix=".fits" if self.format == "fits" else ".tmp")
                os.close(handle)
                return tmp
            # unnamed where possible (a killed run leaves nothing); FITS: fitsio recreates the file by its name and
            # spools the images beside it, so a named one
            self._temporary = Temporary(self.path, "".join(_suffixes(os.path.basename(self.path))),
                                        named=self.format == "fits")
            return self._temporary.path
        except OSError as exc:
            raise write_failure(exc, self.path) from None

    def _failed(self, exc: OSError, into_stream: bool = False) -> OutputError:
        """The error for a failed write: into a temporary file (naming its file system), or into stdout, a pipe
        or a device (``into_stream``)."""
        if into_stream:
            name = "standard output" if self._kind == "stdout" else self.path
            return write_failure(exc, name, device="device")
        return write_failure(exc, self.path, self._where())

    def _start(self, schema: pa.Schema):
        from galtools.io.fits import FitsWriter

        self._check_images(schema)
        if self.format in TEXT_FORMATS:
            check_plain(schema, self.format, "standard output" if self._kind == "stdout" else self.path)
        self._schema = schema.with_metadata(meta.encode(self.metadata))
        writer_class = _TextWriter if self.format in TEXT_FORMATS else _ArrowWriter
        if self._writer is None and self._target is None:
            self._writer = writer_class(self._sink(), self.format)
        if self._writer is None:
            if self.format == "fits":
                self._writer = FitsWriter(self._target, self.metadata, schema)
            else:
                self._writer = writer_class(self._target, self.format)
        if isinstance(self._writer, (_ArrowWriter, _TextWriter)):
            self._writer.start(self._schema)

    def _check_images(self, schema: pa.Schema) -> None:
        """A table must not contradict itself: image planes and band names agree, each band named once."""
        from galtools.io.tensor import IMAGE, check_image_type, is_tensor_type

        name = "standard output" if self._kind == "stdout" else self.path
        planes = None
        if IMAGE in schema.names and is_tensor_type(schema.field(IMAGE).type):
            planes = check_image_type(schema.field(IMAGE).type, name)[0]
        meta.check_bands(self.metadata, planes, name)

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
                try:
                    self._writer.write(batch.replace_schema_metadata(self._schema.metadata))
                except BrokenPipeError:
                    raise   # the reader went away (| head): not a failure of ours
                except OSError as exc:
                    raise self._failed(exc, into_stream=self._target is None) from None
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
                raise BadData("nothing to write: the input had no rows", "check the input and any --shard or filter")
            self._start(empty_schema)
        try:
            self._writer.close()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise self._failed(exc, into_stream=self._target is None) from None
        try:
            self._finish()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise self._failed(exc, into_stream=self._to_stdout) from None

    def _finish(self) -> None:
        if self._target is None:
            self._sink().flush()
            self._close_stream()
            return
        if self._to_stdout:
            with open(self._target, "rb") as handle:
                sink = self._sink()
                shutil.copyfileobj(handle, sink, length=1 << 22)
                sink.flush()
            self._close_stream()
            os.unlink(self._target)
        else:
            self._temporary.commit()
        self._writer.discard()

    def _close_stream(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.close()

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError):   # cleaning up after a failure must not hide it
                self._writer.discard()
        if self._temporary is not None:
            with contextlib.suppress(OSError):
                self._temporary.discard()
        elif self._target is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._target)
        with contextlib.suppress(OSError):
            self._close_stream()

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
                tool: str = "galtools", seed=None, source: str | None = None, shard=None):
    """An :class:`Output`; or, when ``source`` (the input) is a HATS catalogue and ``path`` a folder, a
    galtools.io.hats.CatalogueOutput writing ``shard``'s partitions of the same catalogue layout."""
    if source is not None:
        from galtools.io import hats

        if hats.wants_catalogue(source, path, fmt):
            return hats.CatalogueOutput(source, path, overwrite=overwrite, metadata=metadata, tool=tool, seed=seed,
                                        shard=shard)
    return Output(path, fmt=fmt, overwrite=overwrite, metadata=metadata, tool=tool, seed=seed)
