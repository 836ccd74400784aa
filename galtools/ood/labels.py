"""A person's labels for the discovery loop: a plain table (CSV or any galtools table) of object_id, label, time.

    object_id,label,time
    1234,1,2026-12-07T05:40:00
    5678,no,2026-12-07T05:41:10

``label`` is 1/0, yes/no, true/false or y/n (any case); ``time`` (ISO 8601 text, a timestamp or a number) is
optional.  The file is a log that a person, a script or gal-view appends to, so one object may appear more than
once:

- the same label again is harmless;
- a different label with a later ``time`` replaces the earlier one (the person changed their mind);
- two different labels for one object with the same time, or without times, are a conflict: refused (BadData, 65).

Unknown object_ids, labels that are not yes/no, an unreadable time and a file with no label at all are refused
too (65).  :func:`append_label` writes one more label the crash-safe way: the whole new file to a temporary file
beside it, flushed to disk (fsync), then renamed over the old one, so a killed writer leaves the old file or the
new one, never a torn one.
"""
from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import os
import threading
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from galtools.errors import BadData, InputMissing, OutputError
from galtools.io.files import write_bytes

COLUMNS = ("object_id", "label", "time")
YES = {"1", "yes", "y", "true", "t", "1.0"}
NO = {"0", "no", "n", "false", "f", "0.0"}
LABELS_HINT = "a table of object_id,label[,time] with label 1/0 or yes/no"
_WRITE_LOCK = threading.Lock()


@dataclass
class Labels:
    """The resolved labels: one per object, in the order the objects were first labelled."""

    ids: list
    values: np.ndarray          # bool: True for a positive ("interesting")
    name: str = "labels"
    rows_read: int = 0

    @property
    def positives(self) -> int:
        return int(self.values.sum())

    @property
    def negatives(self) -> int:
        return int(len(self.values) - self.values.sum())


def parse_label(value, where: str) -> bool:
    """True for 1/yes/true/y, False for 0/no/false/n; BadData naming ``where`` otherwise."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower() if value is not None else ""
    if text in YES:
        return True
    if text in NO:
        return False
    raise BadData(f"{where}: label {value!r} is not yes or no", "write 1/0, yes/no or true/false")


def _time_key(value, where: str):
    """A comparable time: None when absent, else seconds (numbers) or a timezone-aware datetime."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    text = str(value).strip()
    with contextlib.suppress(ValueError):   # a number of seconds
        return float(text)
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadData(f"{where}: time {value!r} is neither ISO 8601 nor a number",
                      "write e.g. 2026-12-07T05:40:00, or leave it empty") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _is_table_file(path: str) -> bool:
    from galtools.io.sources import table_format

    with open(path, "rb") as handle:
        return table_format(handle.read(16)) is not None


def read_rows(path: str, name: str | None = None) -> list[tuple]:
    """The (object_id, label, time, where) rows of a labels file, in file order (ids as written: numbers stay
    numbers in a table, text in a CSV; they are matched to the embeddings' id type later)."""
    name = name or path
    if not os.path.exists(path):
        raise InputMissing(f"{name}: no such labels file", "create it with a header: object_id,label,time")
    if _is_table_file(path):
        from galtools.io import open_table

        with open_table(path) as table:
            columns = table.schema.names
            _check_columns(columns, name)
            data = table.read_all(columns=[c for c in COLUMNS if c in columns])
        ids = data.column("object_id").to_pylist()
        labels = data.column("label").to_pylist()
        times = data.column("time").to_pylist() if "time" in columns else [None] * len(ids)
        return [(i, v, t, f"{name} row {n + 1}") for n, (i, v, t) in enumerate(zip(ids, labels, times))]
    with open(path, "rb") as handle:
        text = handle.read().decode("utf-8", errors="replace")
    lines = list(csv.reader(io.StringIO(text)))
    if not lines or not any(cell.strip() for cell in lines[0]):
        raise BadData(f"{name} is empty", f"give {LABELS_HINT}, with a header line")
    header = [cell.strip() for cell in lines[0]]
    _check_columns(header, name)
    at = {c: header.index(c) for c in COLUMNS if c in header}
    rows = []
    for number, cells in enumerate(lines[1:], start=2):
        if not cells or not any(cell.strip() for cell in cells):
            continue
        where = f"{name} line {number}"
        if len(cells) != len(header):
            raise BadData(f"{where} has {len(cells)} fields where the header has {len(header)}",
                          "fix or remove that line (was it written halfway?)")
        rows.append((cells[at["object_id"]].strip(), cells[at["label"]], cells[at["time"]] if "time" in at else None,
                     where))
    return rows


def _check_columns(columns, name: str) -> None:
    missing = [c for c in ("object_id", "label") if c not in columns]
    if missing:
        raise BadData(f"{name} has no {' or '.join(missing)} column (columns: {', '.join(map(str, columns))})",
                      f"give {LABELS_HINT}")


def resolve(rows: list[tuple], name: str = "labels") -> Labels:
    """One label per object from a log of rows: the latest time wins; a disagreement without a later time is a
    conflict (BadData)."""
    latest: dict = {}    # id -> (time key, label, where)
    order: list = []
    for object_id, raw_label, raw_time, where in rows:
        if object_id is None or (isinstance(object_id, str) and not object_id):
            raise BadData(f"{where}: no object_id", "every label needs the object it is about")
        label = parse_label(raw_label, where)
        when = _time_key(raw_time, where)
        key = object_id
        if key not in latest:
            latest[key] = (when, label, where)
            order.append(key)
            continue
        old_when, old_label, old_where = latest[key]
        if label == old_label:
            if when is not None and (old_when is None or _later(when, old_when, where)):
                latest[key] = (when, label, where)
            continue
        if when is not None and old_when is not None and _later(when, old_when, where):
            latest[key] = (when, label, where)
        elif when is not None and old_when is not None and _later(old_when, when, where):
            continue
        else:
            raise BadData(f"conflicting labels for object_id {object_id!r}: {_word(old_label)} ({old_where}) and "
                          f"{_word(label)} ({where})", "keep one, or give the one that counts a later time")
    if not order:
        raise BadData(f"{name} holds no label", f"give {LABELS_HINT}")
    return Labels(ids=order, values=np.array([latest[k][1] for k in order], dtype=bool), name=name,
                  rows_read=len(rows))


def _later(a, b, where: str) -> bool:
    try:
        return a > b
    except TypeError:
        raise BadData(f"{where}: times mix numbers and dates", "write every time the same way") from None


def _word(label: bool) -> str:
    return "yes" if label else "no"


def read_labels(path: str, name: str | None = None) -> Labels:
    """Read and resolve a labels file (see the module's rules)."""
    name = name or path
    return resolve(read_rows(path, name), name)


def rows_in(labels: Labels, ids: pa.Array, name: str = "the embeddings") -> np.ndarray:
    """Row of each labelled object in ``ids`` (the embedding table's object_id column); BadData naming the
    first labelled id that is not there."""
    import pyarrow.compute as pc

    wanted = labels.ids
    if pa.types.is_integer(ids.type):
        converted = []
        for value in wanted:
            try:
                converted.append(int(str(value).strip()) if not isinstance(value, (int, np.integer)) else int(value))
            except ValueError:
                raise BadData(f"{labels.name}: object_id {value!r} is not a number like the ids of {name}",
                              "label objects of this embedding table") from None
        query = pa.array(converted, type=pa.int64()).cast(ids.type, safe=False)
    else:
        query = pa.array([str(v) for v in wanted], type=pa.string()).cast(ids.type)
    rows = pc.index_in(query, value_set=ids)
    if rows.null_count:
        first = wanted[int(np.flatnonzero(rows.is_null().to_numpy(zero_copy_only=False))[0])]
        raise BadData(f"{labels.name}: {rows.null_count} labelled object_id(s) are not in {name} (e.g. {first!r})",
                      "label objects of this embedding table, or give the table they came from")
    return rows.to_numpy(zero_copy_only=False).astype(np.int64)


# ---------------------------------------------------------------------------------------------- writing a mark

def now_text() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def append_label(path: str, object_id, label: bool, when: str | None = None) -> None:
    """Add one label to ``path`` (created with a header when absent) so that it survives a crash the moment this
    returns: the whole new file goes to a temporary file in the same folder, is fsync'ed, renamed over ``path``,
    and the folder is fsync'ed.  A CSV keeps its text byte for byte plus the new line; a table file is rewritten
    as the same format (Parquet or Arrow) with one more row."""
    when = when or now_text()
    with _WRITE_LOCK:
        if os.path.exists(path) and _is_table_file(path):
            data = _table_with_row(path, object_id, label, when)
        else:
            data = _csv_with_row(path, object_id, label, when)
        _replace_durably(path, data)


def _csv_with_row(path: str, object_id, label: bool, when: str) -> bytes:
    old = b""
    if os.path.exists(path):
        with open(path, "rb") as handle:
            old = handle.read()
    if not old.strip():
        old = b"object_id,label,time\n"
    elif not old.endswith(b"\n"):
        old += b"\n"
    header = next(csv.reader(io.StringIO(old.decode("utf-8", errors="replace").splitlines()[0])))
    header = [c.strip() for c in header]
    values = {"object_id": str(object_id), "label": "1" if label else "0", "time": when}
    if "object_id" not in header or "label" not in header:
        raise BadData(f"{path} has no object_id and label columns", f"give {LABELS_HINT}")
    line = io.StringIO()
    csv.writer(line, lineterminator="\n").writerow([values.get(c, "") for c in header])
    return old + line.getvalue().encode()


def _table_with_row(path: str, object_id, label: bool, when: str) -> bytes:
    import pyarrow.parquet as pq

    from galtools.io.sources import PARQUET, sniff_path

    with open(path, "rb") as handle:
        raw = handle.read()
    parquet = sniff_path(path) == PARQUET
    table = pq.read_table(pa.BufferReader(raw)) if parquet else pa.ipc.open_file(pa.BufferReader(raw)).read_all()
    row = {}
    for field in table.schema:
        value = {"object_id": object_id, "label": label, "time": when}.get(field.name)
        if field.name == "label" and not pa.types.is_boolean(field.type):
            value = int(label) if (pa.types.is_integer(field.type) or pa.types.is_floating(field.type)) \
                else ("1" if label else "0")
        if field.name == "time" and pa.types.is_timestamp(field.type):
            value = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
        if field.name == "object_id" and pa.types.is_integer(field.type):
            value = int(object_id)
        row[field.name] = pa.array([value]).cast(field.type) if value is not None else pa.nulls(1, field.type)
    table = pa.concat_tables([table, pa.table(row, schema=table.schema)])
    sink = pa.BufferOutputStream()
    if parquet:
        pq.write_table(table, sink)
    else:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _replace_durably(path: str, data: bytes) -> None:
    try:
        write_bytes(path, data, durable=True)
    except OSError as exc:
        raise OutputError(f"cannot write the labels to {path}: {exc.strerror or exc}",
                          "check that the folder exists and is writable, and the disk") from None
