"""FITS cutout tables: an image HDU ``CUTOUTS`` (N, bands, H, W) plus a row-aligned BINTABLE ``CATALOG``.

Metadata lives in the primary header: the standard keys ``BANDS``, ``PIXSCALE``, ``BUNIT`` for other FITS readers
(repeated on ``CUTOUTS``), ``GTMETA`` (a long JSON string) for the exact galtools metadata and history, and HISTORY
cards a person can read, one command line per run. Catalogue columns of known meaning carry TUNIT (deg, mag, ...).
On input we also accept a BINTABLE whose image column has a TDIM, and a bare (N, H, W) or (N, B, H, W) cube.
"""
from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import pyarrow as pa

from galtools.errors import BadData
from galtools.io import meta
from galtools.io.tensor import IMAGE, is_tensor_type, tensor_column

HISTORY_PREFIX, HISTORY_CONTINUE = "galtools: ", "galtools+ "   # the JSON cards of earlier versions, still read
HISTORY_WIDTH = 70   # a HISTORY card holds 72 characters of text


def history_line(entry: dict) -> str:
    """One run as a person would type it: ``gal-embed 0.1.0 2026-12-01T20:35 --model run/encoder.onnx -o e.fits``."""
    import shlex

    when = str(entry.get("time", ""))[:16]
    words = [str(entry.get("tool", "?")), str(entry.get("version", "")), when]
    words += [shlex.quote(str(a)) for a in entry.get("argv", [])]
    if entry.get("seed") is not None and "--seed" not in entry.get("argv", []):
        words.append(f"(seed {entry['seed']})")
    return " ".join(w for w in words if w)


def _history_cards(entries: list[dict]) -> list[str]:
    """Each run's command line, wrapped at word boundaries; continuation lines are indented."""
    import textwrap

    cards = []
    for entry in entries:
        cards.extend(textwrap.wrap(history_line(entry), width=HISTORY_WIDTH, subsequent_indent="  ",
                                   break_long_words=True, break_on_hyphens=False) or [""])
    return cards


def _history_from_cards(cards: list[str]) -> list[dict]:
    texts: list[str] = []
    for card in cards:
        if card.startswith(HISTORY_PREFIX):
            texts.append(card[len(HISTORY_PREFIX):])
        elif card.startswith(HISTORY_CONTINUE) and texts:
            texts[-1] += card[len(HISTORY_CONTINUE):]
    entries = []
    for text in texts:
        try:
            entries.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return entries


def _header_metadata(header) -> dict[str, str]:
    out: dict[str, str] = {}
    if "GTMETA" in header:
        with contextlib.suppress(json.JSONDecodeError, TypeError):   # a foreign GTMETA: fall back to the keys below
            out.update(json.loads(header["GTMETA"]))
    for key, name in (("BANDS", meta.BANDS), ("PIXSCALE", meta.PIXSCALE), ("BUNIT", meta.FLUX_UNIT)):
        if name not in out and key in header:
            out[name] = str(header[key]).strip()
    if meta.HISTORY in out:
        return out
    history = []
    for record in header.records():
        if record.get("name") == "HISTORY":
            history.append(str(record.get("value", "")))
    entries = _history_from_cards(history)
    if entries:
        out[meta.HISTORY] = json.dumps(entries, separators=(",", ":"))
    return out


def _native(values: np.ndarray) -> np.ndarray:
    if values.dtype.byteorder not in ("=", "|"):
        values = values.astype(values.dtype.newbyteorder("="))
    return values


def structured_to_arrow(records: np.ndarray, tensor_columns=()) -> list[tuple[str, pa.Array]]:
    """FITS table rows (numpy structured array) to named Arrow arrays."""
    columns = []
    for name in records.dtype.names:
        values = records[name]
        if values.dtype.kind in "SU":
            text = values.astype(str) if values.dtype.kind == "S" else values
            array = pa.array(np.char.rstrip(text).tolist(), pa.string())
        else:
            values = _native(np.asarray(values))
            if name in tensor_columns or values.ndim >= 4:
                if values.ndim == 3:
                    values = values[:, None]
                array = tensor_column(values)
            elif values.ndim == 2:
                array = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values).reshape(-1)), values.shape[1])
            else:
                array = pa.array(values)
        columns.append((name, array))
    return columns


def _check_complete(path: str, hdu) -> None:
    data_end = hdu.get_offsets()["data_end"]
    size = os.path.getsize(path.split("[", 1)[0])
    if data_end > size:
        raise BadData(f"{path}: FITS file is truncated ({size} bytes, HDU {hdu.get_extnum()} needs {data_end})",
                      "the job writing it was probably killed; re-create it")


class FitsSource:
    fmt = "fits"

    def __init__(self, path: str):
        import fitsio

        self.name = path
        try:
            self._fits = fitsio.FITS(path)
        except (OSError, ValueError) as exc:
            raise BadData(f"{path}: not a readable FITS file ({' '.join(str(exc).split())[:120]})",
                          "the file may be truncated or not FITS; re-create it") from None
        self._cube = self._catalog = None
        self._tensor_in_table = None
        for hdu in self._fits:
            kind = hdu.get_exttype()
            name = hdu.get_extname().upper()
            if kind == "IMAGE_HDU":
                dims = hdu.get_dims()
                if len(dims) in (3, 4) and (self._cube is None or name == "CUTOUTS"):
                    self._cube = hdu
            elif self._catalog is None or name == "CATALOG":
                self._catalog = hdu
        if self._cube is None and self._catalog is None:
            stamp = any(h.get_exttype() == "IMAGE_HDU" and len(h.get_dims()) == 2 for h in self._fits)
            if stamp:   # one object's image: a stamp, which gal-pack turns into a table
                raise BadData(f"{path}: a FITS image of one object (a stamp), not a cutout table",
                              "pack stamps into a table with gal-pack, e.g. gal-pack STAMPS_FOLDER/ -o cutouts.fits")
            raise BadData(f"{path}: FITS file has no image cube and no table", "expected HDUs CUTOUTS and CATALOG")
        for hdu in (self._cube, self._catalog):
            if hdu is not None:
                _check_complete(path, hdu)
        self._primary_header = self._fits[0].read_header()
        self.metadata = _header_metadata(self._primary_header)
        if self._cube is not None:
            self.metadata = {**_header_metadata(self._cube.read_header()), **self.metadata}
        self._find_table_tensor()
        self.num_rows = self._count_rows()
        self.schema = self._make_schema()

    def _find_table_tensor(self) -> None:
        if self._cube is not None or self._catalog is None:
            return
        dtype = self._catalog.get_rec_dtype()[0]
        for name in dtype.names:
            shape = dtype[name].shape
            if len(shape) == 3 or (name.lower() == IMAGE and len(shape) == 2):
                self._tensor_in_table = name
                return

    def _count_rows(self) -> int:
        catalog_rows = self._catalog.get_nrows() if self._catalog is not None else None
        if self._cube is None:
            return catalog_rows
        cube_rows = self._cube.get_dims()[0]
        if catalog_rows is not None and catalog_rows != cube_rows:
            raise BadData(f"{self.name}: the cube has {cube_rows} images but the catalogue {catalog_rows} rows",
                          "the CUTOUTS and CATALOG HDUs must be row-aligned")
        return cube_rows

    def _make_schema(self) -> pa.Schema:
        first = next(self.iter_range(0, min(1, self.num_rows), 1, None), None)
        if first is not None:
            return first.schema.remove_metadata()
        fields = []  # an empty table: derive the types from the header alone
        if self._catalog is not None:
            empty = np.zeros(0, dtype=self._catalog.get_rec_dtype()[0])
            fields = [pa.field(n, a.type) for n, a in structured_to_arrow(empty)]
        elif self._cube is not None:
            fields = [pa.field("object_id", pa.int64())]
        shape = None
        if self._cube is not None:
            dims = self._cube.get_dims()
            shape = tuple(dims[1:]) if len(dims) == 4 else (1, *dims[1:])
        elif "GTSHAPE" in self._primary_header:
            shape = tuple(int(n) for n in str(self._primary_header["GTSHAPE"]).split(","))
        if shape is not None:
            fields.append(pa.field(IMAGE, pa.fixed_shape_tensor(pa.float32(), shape)))
        return pa.schema(fields)

    def _cube_rows(self, start: int, stop: int) -> np.ndarray:
        ndim = len(self._cube.get_dims())
        images = self._cube[(slice(start, stop),) + (slice(None),) * (ndim - 1)]
        images = _native(np.asarray(images)).astype(np.float32, copy=False)
        return images[:, None] if images.ndim == 3 else images

    def iter_range(self, start, stop, batch_size, columns):
        for lo in range(start, stop, batch_size):
            hi = min(stop, lo + batch_size)
            arrays: list[tuple[str, pa.Array]] = []
            if self._catalog is not None:
                wanted = None
                if columns is not None:
                    names = self._catalog.get_colnames()
                    wanted = [n for n in names if n in columns] or None
                if wanted is not None or columns is None:
                    records = self._catalog.read(columns=wanted, rows=np.arange(lo, hi))
                    tensors = (self._tensor_in_table,) if self._tensor_in_table else ()
                    arrays = structured_to_arrow(records, tensors)
                    if self._tensor_in_table and self._tensor_in_table != IMAGE:
                        arrays = [(IMAGE if n == self._tensor_in_table else n, a) for n, a in arrays]
            elif columns is None or "object_id" in columns:
                arrays = [("object_id", pa.array(np.arange(lo, hi, dtype=np.int64)))]
            if self._cube is not None and (columns is None or IMAGE in columns):
                arrays.append((IMAGE, tensor_column(self._cube_rows(lo, hi))))
            if columns is not None:
                arrays = [(n, a) for n, a in arrays if n in columns]
            yield pa.RecordBatch.from_arrays([a for _, a in arrays], names=[n for n, _ in arrays])

    def close(self):
        self._fits.close()


# ----------------------------------------------------------------------------------------------------------- writing

def _arrow_to_structured(table: pa.Table) -> np.ndarray:
    """Catalogue columns to a numpy structured array that fitsio writes as a BINTABLE."""
    fields, values = [], []
    for name, column in zip(table.column_names, table.columns):
        kind = column.type
        if pa.types.is_dictionary(kind):
            column = column.cast(kind.value_type)
            kind = column.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            text = np.array([s if s is not None else "" for s in column.to_pylist()], dtype=str)
            width = max(1, max((len(s.encode()) for s in text), default=1))
            data = np.char.encode(text, "utf-8").astype(f"S{width}")
        elif pa.types.is_fixed_size_list(kind):
            flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
            data = flat.reshape(len(column), kind.list_size)
        elif pa.types.is_boolean(kind):
            data = np.asarray(column.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
        elif pa.types.is_floating(kind):
            data = column.to_numpy(zero_copy_only=False)
        elif pa.types.is_integer(kind):
            if column.null_count:
                raise BadData(f"column '{name}' has {column.null_count} missing integers, which FITS cannot hold",
                              "fill them, or write Parquet instead")
            data = column.to_numpy(zero_copy_only=False)
            if data.dtype == np.uint64:
                data = data.astype(np.int64)
        else:
            raise BadData(f"column '{name}' of type {kind} cannot be written to FITS", "write Parquet instead (-o out.parquet)")
        fields.append((name, data.dtype, data.shape[1:]) if data.ndim > 1 else (name, data.dtype))
        values.append(data)
    records = np.zeros(table.num_rows, dtype=fields)
    for (name, *_), data in zip(fields, values):
        records[name] = data
    return records


class FitsWriter:
    """Spools images to a raw file and catalogue rows in memory, then writes the FITS file at close.

    FITS needs the cube's size in its header before the data, and a stream does not say how many rows will come;
    spooling keeps memory bounded by the catalogue, not the images.
    """

    def __init__(self, path: str, metadata: dict[str, str], schema: pa.Schema | None = None):
        self.path = path
        self.metadata = metadata
        self._catalog_batches: list[pa.RecordBatch] = []
        self._schema = schema
        self._image_shape = None
        if schema is not None and IMAGE in schema.names and is_tensor_type(schema.field(IMAGE).type):
            self._image_shape = tuple(schema.field(IMAGE).type.shape)
        self._rows = 0
        self._spool_path = path + ".images"
        self._spool = None

    def write(self, batch: pa.RecordBatch) -> None:
        names = batch.schema.names
        if IMAGE in names and is_tensor_type(batch.schema.field(IMAGE).type):
            from galtools.io.tensor import images_of

            images = images_of(batch)
            if self._spool is None:
                self._spool = open(self._spool_path, "wb")
                self._image_shape = images.shape[1:]
            images.astype(">f4").tofile(self._spool)
            batch = batch.drop_columns([IMAGE])
        self._rows += batch.num_rows
        self._catalog_batches.append(batch)

    def close(self) -> None:
        import fitsio

        cards = [{"name": "GTMETA", "value": json.dumps(self.metadata, separators=(",", ":")),
                  "comment": "galtools metadata and history (JSON)"}]
        cards += self._image_cards()
        with fitsio.FITS(self.path, "rw", clobber=True) as fits:
            fits.write(None, header=cards)
            for card in _history_cards(meta.history_of(self.metadata)):
                fits[0].write_history(card)
            if self._spool is not None:
                self._spool.close()
                self._write_cube(fits)
            elif self._image_shape is not None:   # no rows: keep the image shape for readers
                fits[0].write_key("GTSHAPE", ",".join(str(n) for n in self._image_shape), "image shape of an empty table")
            if self._catalog_batches:
                table = pa.Table.from_batches(self._catalog_batches)
            elif self._schema is not None:   # (pyarrow cannot make an empty tensor column with a permutation)
                table = pa.schema([f for f in self._schema if f.name != IMAGE]).empty_table()
            else:
                table = None
            if table is not None and table.num_columns:
                units = [meta.unit_of(name) or "" for name in table.column_names]
                fits.write(_arrow_to_structured(table), extname="CATALOG",
                           units=units if any(units) else None)

    def _image_cards(self) -> list[dict]:
        """BANDS, PIXSCALE and BUNIT, for the primary header and the CUTOUTS HDU."""
        cards = []
        if meta.BANDS in self.metadata:
            cards.append({"name": "BANDS", "value": self.metadata[meta.BANDS], "comment": "band of each image plane"})
        if meta.PIXSCALE in self.metadata:
            cards.append({"name": "PIXSCALE", "value": float(self.metadata[meta.PIXSCALE]), "comment": "arcsec/pixel"})
        unit = meta.flux_unit_of(self.metadata)   # a physical unit only: other readers parse BUNIT
        if unit:
            cards.append({"name": "BUNIT", "value": unit, "comment": "pixel unit"})
        return cards

    def _write_cube(self, fits) -> None:
        dims = [self._rows, *self._image_shape]
        spooled = np.memmap(self._spool_path, dtype=">f4", mode="r", shape=tuple(dims)) if self._rows else None
        header = [{"name": "EXTNAME", "value": "CUTOUTS"}] + self._image_cards()
        if self._rows == 0:
            fits.write(np.zeros((0, *self._image_shape), np.float32), extname="CUTOUTS", header=header[1:])
            return
        fits.create_image_hdu(dims=dims, dtype="f4", extname="CUTOUTS")
        hdu = fits[-1]
        hdu.write_keys(header[1:])
        step = max(1, (64 << 20) // max(1, int(np.prod(self._image_shape)) * 4))
        for lo in range(0, self._rows, step):
            chunk = np.asarray(spooled[lo:lo + step], dtype=np.float32)
            hdu.write(chunk, start=[lo, 0, 0, 0])
        del spooled

    def discard(self) -> None:
        if self._spool is not None and not self._spool.closed:
            self._spool.close()
        cleanup(self._spool_path)


def cleanup(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
