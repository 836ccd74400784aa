"""Arrow IPC (file and stream) and Parquet sources: memory-mapped or row-group reads in record batches."""
from __future__ import annotations

import pyarrow as pa

from galtools.errors import BadData
from galtools.io import meta


def _corrupt(name: str, kind: str, exc: Exception) -> BadData:
    detail = " ".join(str(exc).split())[:120]
    return BadData(f"{name}: corrupt or truncated {kind} file ({detail})", "re-create it; a killed job can leave a partial file")


# What an Arrow IPC stream ends with: the continuation marker and a zero length (the format since Arrow 0.15), or
# the zero length alone (older writers). A stream cut between two batches (its writer killed, or failed mid-way)
# reads exactly like a whole one up to there; only this marker tells them apart.
END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"
LEGACY_END_OF_STREAM = b"\x00\x00\x00\x00"


def _unfinished(name: str, rows: int) -> BadData:
    return BadData(f"{name}: the Arrow stream ends after {rows:,} rows without its end-of-stream marker: it was cut "
                   "short and rows are missing", "the program that wrote it was killed or failed: rerun it")


def _check_end(name: str, tail: bytes, rows: int) -> None:
    """``tail``: the bytes that followed the last message read, up to the end of the input."""
    if tail in (END_OF_STREAM, LEGACY_END_OF_STREAM):
        return
    if tail.startswith(END_OF_STREAM) or (tail.startswith(LEGACY_END_OF_STREAM) and len(tail) > 4):
        raise BadData(f"{name}: data follows the end of the Arrow stream after {rows:,} rows (two streams "
                      "joined, e.g. by cat?)", "give the tool one stream at a time")
    raise _unfinished(name, rows)


class _Counted:
    """A binary stream that counts what has been read, and keeps the bytes read since the last ``mark()``
    (at most a few: the end-of-stream marker is 8 bytes), so the reader can tell a stream that ended from one
    that was cut."""

    def __init__(self, raw):
        self._raw = raw
        self.closed = False
        self.since_mark = b""

    def read(self, size=-1):
        data = self._raw.read(size)
        if len(self.since_mark) <= 16:
            self.since_mark += data[:17]
        return data

    def mark(self):
        self.since_mark = b""

    def readable(self):
        return True

    def close(self):
        """The stream belongs to the caller."""


def _select(batch: pa.RecordBatch, columns):
    if columns is None:
        return batch
    keep = [n for n in batch.schema.names if n in columns]
    return batch.select(keep)


class ArrowFileSource:
    """An Arrow IPC file, or an IPC stream saved to a file, memory-mapped: batches are views of the mapped file."""

    fmt = "arrow"

    def __init__(self, path: str, stream: bool = False):
        self.name = path
        try:
            self._map = pa.memory_map(path, "r")
            if stream:
                reader = pa.ipc.open_stream(self._map)
                self._batches = []
                while True:
                    end = self._map.tell()
                    try:
                        self._batches.append(reader.read_next_batch())
                    except StopIteration:
                        break
                self._map.seek(end)
                _check_end(path, self._map.read(16), sum(b.num_rows for b in self._batches))
            else:
                reader = pa.ipc.open_file(self._map)
                self._batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        except (pa.ArrowInvalid, OSError) as exc:
            raise _corrupt(path, "Arrow", exc) from None
        self.metadata = meta.decode(reader.schema.metadata)
        self.schema = reader.schema.remove_metadata()
        self._starts = [0]
        for batch in self._batches:
            self._starts.append(self._starts[-1] + batch.num_rows)
        self.num_rows = self._starts[-1]

    def iter_range(self, start, stop, batch_size, columns):
        for i, batch in enumerate(self._batches):
            lo, hi = self._starts[i], self._starts[i + 1]
            if hi <= start or lo >= stop:
                continue
            batch = _select(batch.slice(max(start, lo) - lo, min(stop, hi) - max(start, lo)), columns)
            for offset in range(0, batch.num_rows, batch_size):
                yield batch.slice(offset, batch_size)

    def close(self):
        self._batches = []
        self._map.close()


class ArrowStreamSource:
    """An Arrow IPC stream (a pipe): read once, front to back; the row count is known only at the end."""

    fmt = "arrow-stream"

    def __init__(self, stream, name: str = "stdin"):
        self.name = name
        self._stream = _Counted(stream)
        try:
            self._reader = pa.ipc.open_stream(self._stream)
        except (pa.ArrowInvalid, OSError) as exc:
            raise _corrupt(name, "Arrow stream", exc) from None
        self.metadata = meta.decode(self._reader.schema.metadata)
        self.schema = self._reader.schema.remove_metadata()
        self.num_rows = None

    def iter_range(self, start, stop, batch_size, columns):
        if start != 0 or stop is not None:
            raise RuntimeError("an Arrow stream can only be read whole")
        rows = 0
        while True:
            self._stream.mark()
            try:
                batch = self._reader.read_next_batch()
            except StopIteration:
                tail = self._stream.since_mark
                if tail in (END_OF_STREAM, LEGACY_END_OF_STREAM):
                    tail += self._stream.read(1)   # nothing may follow the marker
                _check_end(self.name, tail, rows)
                return
            except (pa.ArrowInvalid, OSError) as exc:
                raise _corrupt(self.name, "Arrow stream", exc) from None
            rows += batch.num_rows
            batch = _select(batch, columns)
            for offset in range(0, batch.num_rows, batch_size):
                yield batch.slice(offset, batch_size)

    def close(self):
        """The stream belongs to the caller (stdin): nothing to close here."""


class ParquetSource:
    fmt = "parquet"

    def __init__(self, path: str):
        import pyarrow.parquet as pq

        self.name = path
        try:
            self._file = pq.ParquetFile(path, memory_map=True)
        except (pa.ArrowInvalid, OSError) as exc:
            raise _corrupt(path, "Parquet", exc) from None
        arrow_schema = self._file.schema_arrow
        self.metadata = meta.decode(arrow_schema.metadata)
        self.schema = arrow_schema.remove_metadata()
        sizes = [self._file.metadata.row_group(i).num_rows for i in range(self._file.num_row_groups)]
        self._starts = [0]
        for size in sizes:
            self._starts.append(self._starts[-1] + size)
        self.num_rows = self._starts[-1]

    def iter_range(self, start, stop, batch_size, columns):
        groups = [i for i in range(self._file.num_row_groups)
                  if self._starts[i + 1] > start and self._starts[i] < stop]
        if not groups:
            return
        position = self._starts[groups[0]]
        names = None if columns is None else [n for n in self.schema.names if n in columns]
        try:
            for batch in self._file.iter_batches(batch_size=batch_size, row_groups=groups, columns=names):
                lo, hi = position, position + batch.num_rows
                position = hi
                if hi <= start:
                    continue
                if lo >= stop:
                    return
                yield batch.slice(max(start, lo) - lo, min(stop, hi) - max(start, lo))
        except (pa.ArrowInvalid, OSError) as exc:
            raise _corrupt(self.name, "Parquet", exc) from None

    def close(self):
        self._file.close()
