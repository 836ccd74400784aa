"""HDF5 cutout files (Galaxy10 DECaLS, the SDSS and Legacy Survey sets of Hayat et al. and Stein et al.,
Multimodal Universe) as tables.

One image dataset (``images``, ``image``, ``cutouts``, ``cube`` or ``image_array``, or the one named by
``ReadOptions.image_key``) gives the ``image`` column: (N, C, H, W) or channel-last (N, H, W, C), or (N, H, W) for
one band; 8/16-bit integers (signed or not) are mapped from their type's range to [0, 1] as gal-pack does for
PNG/JPEG stamps.  Every other dataset of
length N becomes a column: 1-D as scalars or strings, 2-D as fixed-size vectors.  Rows are read in slices, never
the whole file; compressed datasets (gzip, lzf, and hdf5plugin's filters when that package is installed) decode
chunk by chunk.
"""
from __future__ import annotations

import contextlib
import logging

import numpy as np
import pyarrow as pa

from galtools.errors import BadData, UsageProblem
from galtools.io import meta
from galtools.io.tensor import IMAGE, tensor_column

IMAGE_KEYS = ("images", "image", "cutouts", "cube", "image_array")
BAND_ATTRS = ("bands", "band_names", "filters", meta.BANDS)
PIXSCALE_ATTRS = ("pixscale_arcsec", "pixscale", "pixel_scale", meta.PIXSCALE)
UNIT_ATTRS = ("flux_unit", "bunit", "unit", "units", meta.FLUX_UNIT)
SIGNATURE = b"\x89HDF\r\n\x1a\n"
_log = logging.getLogger("galtools")
_NOTED: set = set()


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return ",".join(_text(v) for v in value.reshape(-1))
    return str(value)


def _attr(objects, names) -> str | None:
    for obj in objects:
        lower = {k.lower(): k for k in obj.attrs.keys()}
        for name in names:
            if name in lower:
                text = _text(obj.attrs[lower[name]]).strip()
                if text:
                    return text
    return None


def _datasets(handle) -> dict:
    import h5py

    found = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            found[name] = obj

    handle.visititems(visit)
    return found


def _column_name(path: str) -> str:
    return path.replace("/", ".")


def _is_channel_last(shape) -> bool:
    """(N, H, W, C) rather than (N, C, H, W): the last axis is the short one (bands), the second is not."""
    return shape[3] < shape[1] and shape[3] <= 16


class Hdf5Source:
    fmt = "hdf5"

    def __init__(self, path: str, options=None):
        import h5py

        with contextlib.suppress(ImportError):
            import hdf5plugin  # noqa: F401  (registers the Blosc, Zstd, LZ4, ... filters with h5py)
        self.name = path
        image_key = getattr(options, "image_key", None)
        id_column = getattr(options, "id_column", None)
        try:
            # a chunk cache that holds a batch's chunks: a compressed chunk is decoded once, not once per batch
            self._file = h5py.File(path, "r", rdcc_nbytes=64 << 20)
        except OSError as exc:
            raise BadData(f"{path}: not a readable HDF5 file ({' '.join(str(exc).split())[:120]})",
                          "the file may be truncated; re-create it") from None
        datasets = _datasets(self._file)
        listed = ", ".join(f"{k} {v.shape}" for k, v in list(datasets.items())[:12]) or "none"
        self._image = self._find_image(datasets, image_key, listed)
        shape = self._image.shape
        self.num_rows = int(shape[0])
        self._channel_last = len(shape) == 4 and _is_channel_last(shape)
        planes = 1 if len(shape) == 3 else shape[3] if self._channel_last else shape[1]
        self._image_shape = (int(planes), *(int(n) for n in (shape[1:3] if self._channel_last or len(shape) == 3
                                                              else shape[2:4])))
        # 8- and 16-bit integers, signed or not, map their type's range linearly onto [0, 1] (as PNG/JPEG stamps)
        self._scale = self._offset = None
        if self._image.dtype.kind in "iu" and self._image.dtype.itemsize <= 2:
            limits = np.iinfo(self._image.dtype)
            self._offset, self._scale = float(limits.min), float(limits.max) - float(limits.min)

        wrong = {k: v.shape for k, v in datasets.items()
                 if v is not self._image and v.ndim >= 1 and v.shape[0] != self.num_rows}
        if wrong:
            named = ", ".join(f"{k} has {s[0]}" for k, s in list(wrong.items())[:6])
            raise BadData(f"{path}: datasets differ in length: {self._image.name.lstrip('/')} has {self.num_rows} "
                          f"rows but {named}", "every dataset must hold one entry per image")
        self._columns: list[tuple[str, object]] = []   # (column name, dataset)
        for key, dataset in datasets.items():
            if dataset is self._image or dataset.ndim == 0:
                continue
            if dataset.ndim > 2:
                _log.info(f"{path}: dataset {key} {dataset.shape} is neither the image nor a column; left out")
                continue
            if dataset.dtype.kind not in "biufSUO":
                _log.info(f"{path}: dataset {key} of type {dataset.dtype} left out")
                continue
            self._columns.append((_column_name(key), dataset))
        self._ids = None
        if id_column:
            matches = [c for c in self._columns if c[0] == id_column]
            if not matches or matches[0][1].ndim != 1:
                raise BadData(f"{path}: no 1-D dataset '{id_column}' for --id-column (datasets: {listed})",
                              "name one of the file's 1-D datasets")
            self._ids = matches[0]
        elif any(c[0] == "object_id" and c[1].ndim == 1 for c in self._columns):
            self._ids = next(c for c in self._columns if c[0] == "object_id")
        elif path not in _NOTED:       # once per file, though a tool may open it twice
            _NOTED.add(path)
            _log.info(f"{path}: no object_id dataset (name one with --id-column): object_id is the row number")
        self._columns = [c for c in self._columns if c is not self._ids]
        self.metadata = self._metadata(options)
        self.schema = self._make_schema()

    def _find_image(self, datasets: dict, image_key: str | None, listed: str):
        if image_key:
            key = image_key.strip("/")
            if key not in datasets:
                raise BadData(f"{self.name}: no dataset '{image_key}' (datasets: {listed})",
                              "name the image dataset with --image-key")
            dataset = datasets[key]
        else:
            candidates = [d for k, d in datasets.items() if k.rsplit("/", 1)[-1].lower() in IMAGE_KEYS]
            if not candidates:
                raise BadData(f"{self.name}: HDF5 file has no image dataset named {', '.join(IMAGE_KEYS)} "
                              f"(datasets: {listed})", "name it with --image-key")
            dataset = candidates[0]
        if dataset.ndim not in (3, 4) or dataset.dtype.kind not in "iuf":
            raise BadData(f"{self.name}: dataset {dataset.name.lstrip('/')} is {dataset.dtype} {dataset.shape}, not "
                          "images (N, C, H, W), (N, H, W, C) or (N, H, W)", "name the image dataset with --image-key")
        return dataset

    def _metadata(self, options) -> dict[str, str]:
        holders = [self._image, self._file]
        out: dict[str, str] = {}
        bands = _attr(holders, BAND_ATTRS)
        names = [b.strip() for b in bands.split(",") if b.strip()] if bands else None
        if names is not None and len(names) != self._image_shape[0]:
            _log.warning(f"{self.name}: attribute bands {','.join(names)} do not match the "
                         f"{self._image_shape[0]} image planes; ignored")
            names = None
        requested = getattr(options, "bands", None)
        if names is None and requested:
            if len(requested) != self._image_shape[0]:
                raise UsageProblem(f"--bands names {len(requested)} bands but {self.name}'s images have "
                                   f"{self._image_shape[0]} planes", f"give {self._image_shape[0]} names")
            names = list(requested)
        if names:
            out[meta.BANDS] = ",".join(names)
        pixscale = _attr(holders, PIXSCALE_ATTRS)
        if pixscale:
            out[meta.PIXSCALE] = pixscale
        unit = _attr(holders, UNIT_ATTRS)
        if self._scale is not None:
            unit = f"{8 * self._image.dtype.itemsize}-bit scaled to [0,1]"
        if unit:
            out[meta.FLUX_UNIT] = unit
        return out

    def _make_schema(self) -> pa.Schema:
        fields = [pa.field("object_id", pa.int64() if self._ids is None else self._arrow(self._ids[1][:0]).type)]
        fields += [pa.field(name, self._arrow(dataset[:0]).type) for name, dataset in self._columns]
        fields.append(pa.field(IMAGE, pa.fixed_shape_tensor(pa.float32(), self._image_shape)))
        return pa.schema(fields)

    @staticmethod
    def _arrow(values: np.ndarray) -> pa.Array:
        if values.dtype.kind in "SO":
            return pa.array([_text(v) for v in values], pa.string())
        if values.dtype.kind == "U":
            return pa.array(values.tolist(), pa.string())
        values = np.asarray(values)
        if values.dtype.byteorder not in ("=", "|"):
            values = values.astype(values.dtype.newbyteorder("="))
        if values.ndim == 2:
            return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values).reshape(-1)),
                                                     values.shape[1])
        return pa.array(values)

    def _rows(self, dataset, lo: int, hi: int) -> np.ndarray:
        try:
            return dataset[lo:hi]
        except OSError as exc:
            raise BadData(f"{self.name}: cannot read rows {lo}-{hi} of dataset {dataset.name.lstrip('/')} "
                          f"({' '.join(str(exc).split())[:120]})",
                          "a dataset compressed with a plugin filter needs 'pip install hdf5plugin'; otherwise the "
                          "file is damaged") from None

    def read_images(self, lo: int, hi: int) -> np.ndarray:
        """Rows lo:hi of the image dataset as float32 (n, C, H, W)."""
        raw = self._rows(self._image, lo, hi)
        if raw.ndim == 3:
            raw = raw[:, None]
        elif self._channel_last:
            raw = np.moveaxis(raw, -1, 1)
        images = np.empty(raw.shape, np.float32)    # C-contiguous, as the tensor column needs: one copy, not two
        np.copyto(images, raw, casting="unsafe")
        if self._scale is not None:
            if self._offset:
                images -= np.float32(self._offset)
            images /= np.float32(self._scale)
        return images

    def iter_range(self, start, stop, batch_size, columns):
        wanted = lambda name: columns is None or name in columns  # noqa: E731
        for lo in range(start, stop, batch_size):
            hi = min(stop, lo + batch_size)
            arrays: list[tuple[str, pa.Array]] = []
            if wanted("object_id"):
                ids = (pa.array(np.arange(lo, hi, dtype=np.int64)) if self._ids is None
                       else self._arrow(self._rows(self._ids[1], lo, hi)))
                arrays.append(("object_id", ids))
            arrays += [(name, self._arrow(self._rows(dataset, lo, hi))) for name, dataset in self._columns
                       if wanted(name)]
            if wanted(IMAGE):
                arrays.append((IMAGE, tensor_column(self.read_images(lo, hi))))
            yield pa.RecordBatch.from_arrays([a for _, a in arrays], names=[n for n, _ in arrays])

    def close(self):
        self._file.close()
