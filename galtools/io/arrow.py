"""Arrow IPC (file and stream) and Parquet sources: memory-mapped or row-group reads in record batches."""
from __future__ import annotations

import pyarrow as pa

from galtools.errors import BadData
from galtools.io import meta


def _corrupt(name: str, kind: str, exc: Exception) -> BadData:
    detail = " ".join(str(exc).split())[:120]
    return BadData(f"{name}: corrupt or truncated {kind} file ({detail})", "re-create it; a killed job can leave a partial file")


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
                self._batches = list(reader)
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
        try:
            self._reader = pa.ipc.open_stream(stream)
        except (pa.ArrowInvalid, OSError) as exc:
            raise _corrupt(name, "Arrow stream", exc) from None
        self.metadata = meta.decode(self._reader.schema.metadata)
        self.schema = self._reader.schema.remove_metadata()
        self.num_rows = None

    def iter_range(self, start, stop, batch_size, columns):
        if start != 0 or stop is not None:
            raise RuntimeError("an Arrow stream can only be read whole")
        while True:
            try:
                batch = self._reader.read_next_batch()
            except StopIteration:
                return
            except (pa.ArrowInvalid, OSError) as exc:
                raise _corrupt(self.name, "Arrow stream", exc) from None
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
