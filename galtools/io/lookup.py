"""Reading parts of a table: a few columns, a list of ids (a table or a CSV), the images of chosen objects.

    read_columns("pred.parquet", {"truth": "z_spec"})    # ({"truth": float64 array}, metadata)
    read_ids("queries.csv")                                # object_id values of a table, a CSV or a plain list
    found = images_by_id("cutouts.fits", [12, 7])          # streamed in bounded batches, stops when all are found
    found.stack([12, 7])                                   # (2, bands, H, W) in the order asked
"""
from __future__ import annotations

import csv
import io
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from galtools.errors import BadData, InputMissing
from galtools.io import sources
from galtools.io.table import open_table
from galtools.io.tensor import IMAGE, images_of

OBJECT_ID = "object_id"
TAKE_BATCH = 4096          # rows decoded at a time by take_rows while it walks to a wanted row


def display_name(source: str) -> str:
    """How messages and metadata name an input: 'stdin' for '-', else the path as given."""
    return "stdin" if source == "-" else source


def read_columns(source: str, columns: dict[str, str | None], optional: dict[str, str] | None = None,
                 what: str | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Numeric columns of a table, whole, as float64 arrays (NaN for nulls), and the table's metadata.

    ``columns`` maps a role (e.g. ``truth``) to a column name (None: not wanted); ``optional`` roles are read only
    when the table has their column. A missing or non-numeric column is BadData (65) whose hint names the option
    ``--<role>`` that chooses it."""
    name = what or display_name(source)
    wanted = {role: column for role, column in columns.items() if column}
    with open_table(source) as table:
        names = table.schema.names
        wanted.update({role: column for role, column in (optional or {}).items()
                       if column in names and role not in wanted})
        for role, column in wanted.items():
            option = f"--{role.replace('_', '-')}"
            if column not in names:
                raise BadData(f"{name} has no '{column}' column (columns: {', '.join(names)})",
                              f"name the {role} column with {option}")
            kind = table.schema.field(column).type
            if not (pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind)):
                raise BadData(f"{name}: column '{column}' is {kind}, not numeric", f"name the {role} column with {option}")
        read = table.read_all(columns=list(dict.fromkeys(wanted.values())))
        metadata = dict(table.metadata)
    arrays = {role: np.asarray(read.column(column).to_numpy(), dtype=np.float64) for role, column in wanted.items()}
    return arrays, metadata


def read_ids(source: str, column: str = OBJECT_ID, what: str | None = None) -> list:
    """The ``column`` values of a galtools table, or of a CSV file with that column in its header, or of a plain
    list (one id a line). The kind is told from the file's first bytes, never guessed from an error."""
    name = what or display_name(source)
    if source == "-":
        source = sources.spool_to_file(sys.stdin.buffer, ".ids")
    elif not os.path.exists(source):
        raise InputMissing(f"{name}: no such file", "check the path")
    with open(source, "rb") as handle:
        head = handle.read(16)
    if sources.table_format(head) is not None:
        with open_table(source) as table:
            if column not in table.schema.names:
                raise BadData(f"{name} has no {column} column (columns: {', '.join(table.schema.names)})",
                              f"name the id column {column}")
            return table.read_all(columns=[column]).column(column).to_pylist()
    with open(source, "rb") as handle:
        text = handle.read().decode("utf-8", errors="replace")
    return _ids_of_text(text, column, name)


def _ids_of_text(text: str, column: str, name: str) -> list[str]:
    rows = [row for row in csv.reader(io.StringIO(text)) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise BadData(f"{name} is empty", f"list one {column} per line, or a CSV with an {column} column")
    header = [cell.strip() for cell in rows[0]]
    if column in header:
        at = header.index(column)
        return [row[at].strip() for row in rows[1:]]
    if len(header) == 1:
        return [row[0].strip() for row in rows]
    raise BadData(f"{name}: CSV without an {column} column (columns: {', '.join(header)})",
                  f"name the id column {column}")


@dataclass
class FoundImages:
    """Images (and chosen column values) of objects looked up by id, keyed by object_id."""

    source: str
    requested: list = field(default_factory=list)   # the ids asked for, in the table's id type and order
    images: dict = field(default_factory=dict)
    values: dict = field(default_factory=dict)     # {column: {object_id: value}}
    bands: list[str] | None = None

    def missing(self, ids) -> list:
        return [i for i in ids if i not in self.images]

    def stack(self, ids=None, hint: str = "give the cutout table the embeddings were made from") -> np.ndarray:
        """(len(ids), bands, H, W) in the order given (default: as requested); BadData (65) naming a missing one."""
        ids = self.requested if ids is None else ids
        missing = self.missing(ids)
        if missing:
            raise BadData(f"{len(missing)} objects are not in {self.source} (e.g. object_id {missing[0]!r})", hint)
        return np.stack([self.images[i] for i in ids])


def ids_in_type(ids, id_type: pa.DataType) -> tuple[pa.Array, list]:
    """Ids (strings from a command line, numbers, an Arrow array) in a table's id type, and those that cannot be of
    that type (so cannot be in the table), which are left out."""
    values = ids.to_pylist() if isinstance(ids, (pa.Array, pa.ChunkedArray)) else list(ids)
    if not pa.types.is_integer(id_type):
        return pa.array([str(v) for v in values], type=id_type), []
    numbers, impossible = [], []
    for value in values:
        try:
            numbers.append(int(value))
        except (TypeError, ValueError):
            impossible.append(value)
    return pa.array(numbers, type=id_type), impossible


def take_rows(table, rows, columns=None) -> pa.Table:
    """Rows of an open, unsharded table by row number, in the order asked (repeats allowed). Only the Parquet row
    groups or Arrow record batches (memory-mapped) that hold a wanted row are read, and of them only ``columns``:
    the few neighbors of a query cost a few row groups, never the whole table."""
    rows = np.asarray(rows, dtype=np.int64)
    names = list(table.schema.names) if columns is None else [c for c in table.schema.names if c in columns]
    schema = pa.schema([table.schema.field(c) for c in names])
    wanted = np.unique(rows)
    if wanted.size and (wanted[0] < 0 or table.total_rows is None or wanted[-1] >= table.total_rows):
        raise BadData(f"{table.name}: row {int(wanted[-1] if wanted[0] >= 0 else wanted[0])} is outside its "
                      f"{table.total_rows} rows", "give the table the index was built from")
    if not names:   # no column wanted (a table of ids and vectors only): as many rows, none of them read
        return pa.table({"rows": pa.nulls(len(rows))}).drop_columns(["rows"])
    pieces, offset = [], 0
    for part in table.parts:
        starts = getattr(part, "_starts", None) or [0, part.num_rows]   # row groups or record batches
        for group in range(len(starts) - 1):
            lo, hi = np.searchsorted(wanted, [offset + starts[group], offset + starts[group + 1]])
            if lo == hi:
                continue
            first, last = int(wanted[lo]) - offset, int(wanted[hi - 1]) - offset + 1
            # batches of at least TAKE_BATCH rows from the group's start: one-row batches cost a Python step for every
            # row before the first wanted one; reading stops after the last wanted row
            size = min(max(last - first, TAKE_BATCH), starts[group + 1] - starts[group])
            read = pa.Table.from_batches(list(part.iter_range(first, last, size, names)), schema=schema)
            pieces.append(read.take(pa.array(wanted[lo:hi] - offset - first)))
        offset += part.num_rows
    whole = pa.concat_tables(pieces) if pieces else schema.empty_table()
    return whole.take(pa.array(np.searchsorted(wanted, rows), type=pa.int64()))


def images_by_id(source: str, ids, columns=(), what: str | None = None) -> FoundImages:
    """The images of ``ids`` (and the values of ``columns`` present in the table) read from a cutout table in
    bounded batches, stopping once every id is found. Ids are matched in the table's id type (``"12"`` finds 12).
    The first row of a repeated id wins."""
    name = what or display_name(source)
    found = FoundImages(source=name)
    with open_table(source) as table:
        table.require_images()
        if OBJECT_ID not in table.schema.names:
            raise BadData(f"{name} has no object_id column", "give the cutout table the embeddings were made from")
        present = [c for c in columns if c in table.schema.names and c not in (OBJECT_ID, IMAGE)]
        found.values = {c: {} for c in present}
        found.bands = table.bands
        wanted, _ = ids_in_type(ids, table.schema.field(OBJECT_ID).type)
        found.requested = wanted.to_pylist()
        count = len(set(found.requested))
        if count == 0:
            return found
        for batch in table.iter_batches(columns=[OBJECT_ID, IMAGE, *present]):
            chosen = pc.is_in(batch.column(OBJECT_ID), value_set=wanted)
            if not pc.any(chosen).as_py():
                continue
            picked = batch.filter(chosen)
            keys = picked.column(OBJECT_ID).to_pylist()
            for key, image in zip(keys, images_of(picked)):
                found.images.setdefault(key, image.copy())
            for column in present:
                for key, value in zip(keys, picked.column(column).to_pylist()):
                    found.values[column].setdefault(key, value)
            if len(found.images) == count:
                break
    return found
