"""Partitioned Parquet folders (Hive ``key=value`` folders, HATS catalogues) read as one table.

A HATS catalogue is Parquet partitioned by HEALPix pixel: ``CATALOG/dataset/Norder=K/Dir=D/Npix=N.parquet`` (or
``Npix=N/`` folders of files), beside ``properties``, ``partition_info.csv``, ``_metadata`` files and a
``point_map.fits`` that are not rows.  The files are read in the order of their partition values, as numbers where
they are numbers; the partition columns (``Norder``, ``Dir``, ``Npix``) are carried as int64 columns unless the
reader is asked to drop them.  ``--shard`` gives each task whole files (see Table).
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa

PARQUET_SUFFIXES = (".parquet", ".pq")


def _partition_value(text: str):
    return int(text) if text.lstrip("-").isdigit() else text


def _key_value(name: str) -> tuple[str, object] | None:
    stem = name
    for suffix in PARQUET_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    if "=" not in stem:
        return None
    key, value = stem.split("=", 1)
    return (key, _partition_value(value)) if key else None


def partition_root(folder: str) -> str | None:
    """The folder whose sub-folders are ``key=value`` partitions (``folder`` or its ``dataset/``), else None."""
    for root in (folder, os.path.join(folder, "dataset")):
        if os.path.isdir(root) and any(_key_value(n) and os.path.isdir(os.path.join(root, n))
                                       for n in os.listdir(root)):
            return root
    return None


def partition_files(root: str) -> list[tuple[str, dict]]:
    """Every Parquet file under ``root`` with its partition values, in partition order (numbers as numbers)."""
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [s for s in subfolders if not s.startswith((".", "_"))]
        relative = os.path.relpath(folder, root)
        steps = [] if relative == "." else relative.split(os.sep)
        for name in names:
            if name.startswith((".", "_")) or not name.lower().endswith(PARQUET_SUFFIXES):
                continue
            values = {}
            for step in steps + [name]:
                pair = _key_value(step)
                if pair:
                    values[pair[0]] = pair[1]
            found.append((os.path.join(folder, name), values))

    def order(item):
        path, values = item
        return tuple((0, v, "") if isinstance(v, int) else (1, 0, str(v)) for v in values.values()), path

    return sorted(found, key=order)


class PartitionedSource:
    """One file of a partitioned folder with its partition values as constant columns (or without them)."""

    def __init__(self, inner, values: dict, carry: bool = True):
        self._inner = inner
        self.name, self.fmt = inner.name, "parquet-partitioned"
        self.metadata, self.num_rows = inner.metadata, inner.num_rows
        self._add = {k: v for k, v in values.items() if k not in inner.schema.names} if carry else {}
        # a column of the folder's name inside the file (HATS files carry Norder, Dir, Npix): it must agree
        self._agree = {k: v for k, v in values.items() if k in inner.schema.names} if carry else {}
        self._drop = [] if carry else [k for k in values if k in inner.schema.names]
        fields = [f for f in inner.schema if f.name not in self._drop]
        fields += [pa.field(k, pa.int64() if isinstance(v, int) else pa.string()) for k, v in self._add.items()]
        self.schema = pa.schema(fields)

    def iter_range(self, start, stop, batch_size, columns):
        for batch in self._inner.iter_range(start, stop, batch_size, columns):
            self._check_agree(batch)
            if self._drop:
                batch = batch.drop_columns([n for n in self._drop if n in batch.schema.names])
            for key, value in self._add.items():
                if columns is None or key in columns:
                    array = (pa.array(np.full(batch.num_rows, value, np.int64)) if isinstance(value, int)
                             else pa.array([value] * batch.num_rows, pa.string()))
                    batch = batch.append_column(key, array)
            yield batch

    def _check_agree(self, batch: pa.RecordBatch) -> None:
        import pyarrow.compute as pc

        for key, value in self._agree.items():
            if key not in batch.schema.names:
                continue
            other = [v for v in pc.unique(batch.column(key)).to_pylist() if str(v) != str(value)]
            if other:
                from galtools.errors import BadData

                raise BadData(f"{self.name}: its column {key} holds {other[0]!r} but the file lies in the folder "
                              f"{key}={value}", "the column and the folder must agree: fix the file or move it, or "
                              "read it with --drop-partition-columns to take neither")

    def close(self):
        self._inner.close()


def check_listed_partitions(source: str, root: str, files: list[tuple[str, dict]]) -> None:
    """A HATS catalogue's ``partition_info.csv`` lists every partition (Norder, Npix): one without its file is a
    catalogue copied or written in part, refused (BadData) rather than read as a whole without its rows."""
    import csv

    root = root.rstrip(os.sep)
    places = [os.path.join(root, "partition_info.csv")]
    if os.path.basename(root) == "dataset":   # CATALOG/partition_info.csv beside CATALOG/dataset/
        places.insert(0, os.path.join(os.path.dirname(root), "partition_info.csv"))
    listing = next((p for p in places if os.path.isfile(p)), None)
    if listing is None:
        return
    try:
        with open(listing, newline="") as handle:
            rows = list(csv.DictReader(handle))
        listed = {(int(r["Norder"]), int(r["Npix"])) for r in rows}
    except (OSError, KeyError, ValueError, TypeError, csv.Error):
        return   # not a listing we can read: nothing to compare against
    present = {(v.get("Norder"), v.get("Npix")) for _, v in files}
    missing = sorted(listed - present)
    if missing:
        from galtools.errors import BadData

        order, npix = missing[0]
        raise BadData(f"{source}: {len(missing)} of the {len(listed)} partitions listed in partition_info.csv have "
                      f"no file (first: Norder={order}/Npix={npix})",
                      "the catalogue is incomplete: copy or write it again")
