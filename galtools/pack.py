"""gal-pack's library: turn per-object stamps (FITS, PNG, JPEG) and a catalogue into a cutout table, or convert,
crop, resize and select the bands of an existing cutout table, in batches."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from galtools.errors import BadData, InputMissing, UsageProblem
from galtools.io import meta, sources
from galtools.io.tensor import IMAGE, images_of, tensor_column
from galtools.preprocess import centre_crop

STAMP_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz", ".fts", ".png", ".jpg", ".jpeg")
ID_CANDIDATES = ("object_id", "objid", "id")
RGB_BANDS, GRAY_BANDS = ["red", "green", "blue"], ["gray"]


# ------------------------------------------------------------------------------------------------- one stamp

def read_stamp(path: str, hdu: int | str | None = None) -> tuple[np.ndarray, bool]:
    """One stamp as float32 (bands, H, W) and whether it came from 8/16-bit integers (scaled to [0, 1]).
    ``hdu``: the FITS extension (number, 0 the primary, or EXTNAME); None when the file holds one image."""
    lower = path.lower()
    if lower.endswith((".png", ".jpg", ".jpeg")):
        if hdu is not None:
            raise BadData(f"{path}: an HDU ({hdu}) was named, but this is not a FITS file")
        return _read_picture(path), True
    return _read_fits_stamp(path, hdu), False


def split_extension(name: str) -> tuple[str, int | str | None]:
    """CFITSIO's ``file.fits[3]`` / ``file.fits[SCI]``: the file and the HDU (a number or an EXTNAME)."""
    if name.endswith("]") and "[" in name:
        path, spec = name[:-1].rsplit("[", 1)
        return path, parse_hdu(spec)
    return name, None


def parse_hdu(value) -> int | str | None:
    """An HDU as a catalogue gives it: a number (0 is the primary HDU), an EXTNAME, or nothing."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not float(value).is_integer():
            raise BadData(f"HDU number {value} is not a whole number", "give 0, 1, 2 ... or an EXTNAME")
        return int(value)
    text = str(value).strip()
    if not text:
        return None
    return int(text) if text.lstrip("+").isdigit() else text


def _read_picture(path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            picture.load()
            if picture.mode in ("RGBA", "P", "LA", "CMYK", "YCbCr"):
                picture = picture.convert("RGB" if picture.mode != "LA" else "L")
            array = np.asarray(picture)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise BadData(f"{path}: unreadable image ({' '.join(str(exc).split())[:80]})") from None
    scale = 65535.0 if array.dtype == np.uint16 or array.max(initial=0) > 255 else 255.0
    array = array.astype(np.float32) / np.float32(scale)
    return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)


def _read_fits_stamp(path: str, wanted: int | str | None = None) -> np.ndarray:
    import fitsio

    try:
        with fitsio.FITS(path) as fits:
            data = np.asarray(_chosen_hdu(fits, path, wanted).read(), dtype=np.float32)
    except (OSError, ValueError) as exc:
        raise BadData(f"{path}: unreadable FITS stamp ({' '.join(str(exc).split())[:80]})") from None
    if data.ndim == 2:
        return data[None]
    if data.ndim == 3:
        return data
    raise BadData(f"{path}: FITS stamp has {data.ndim} dimensions", "expected (H, W) or (bands, H, W)")


def _chosen_hdu(fits, path: str, wanted: int | str | None):
    """The image HDU asked for, or the only one; several images and no choice is an error, not a guess."""
    if wanted is not None:
        try:
            hdu = fits[wanted if isinstance(wanted, int) else str(wanted)]
        except (IndexError, KeyError, ValueError, OSError):
            names = ", ".join(f"{h.get_extnum()}" + (f" ({h.get_extname()})" if h.get_extname() else "") for h in fits)
            raise BadData(f"{path}: has no HDU {wanted!r} (HDUs: {names})", "check the HDU column or [..] suffix") from None
        if hdu.get_exttype() != "IMAGE_HDU" or not hdu.get_dims():
            raise BadData(f"{path}: HDU {wanted!r} holds no image", "name an image HDU")
        return hdu
    images = [h for h in fits if h.get_exttype() == "IMAGE_HDU" and h.get_dims()]
    if not images:
        raise BadData(f"{path}: FITS stamp holds no image")
    if len(images) > 1:
        listed = ", ".join(f"{h.get_extnum()}" + (f" ({h.get_extname()})" if h.get_extname() else "") for h in images)
        raise BadData(f"{path}: holds {len(images)} images (HDUs {listed}) and none was chosen",
                      "name one per row with --hdu-column COL, or as file.fits[N] or file.fits[EXTNAME] in the file column")
    return images[0]


# ------------------------------------------------------------------------------------------ crop and resample

def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of the fraction of each input pixel inside each output pixel, rows summing to 1."""
    scale = n_in / n_out
    lo = np.arange(n_out)[:, None] * scale
    hi = lo + scale
    pixel = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, pixel + 1) - np.maximum(lo, pixel), 0, None)
    return (overlap / scale).astype(np.float64)


def area_resize(images: np.ndarray, size: int, sum_flux: bool = False) -> np.ndarray:
    """Area-weighted resample of (n, bands, H, W) to (n, bands, size, size). By default each output pixel is the
    mean of its footprint (a flat image stays flat: right for surface brightness and display values); with
    ``sum_flux`` it is the sum (the flux the footprint holds: the total flux of the image is kept)."""
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    rows, cols = area_weights(height, size), area_weights(width, size)
    if sum_flux:
        rows, cols = rows * (height / size), cols * (width / size)
    out = np.einsum("oh,nbhw,pw->nbop", rows, images.astype(np.float64), cols, optimize=True)
    return out.astype(np.float32)


# A pixel holds flux (nanomaggy, counts, e-/s: summed by --resize) unless its unit says it holds a surface
# brightness or a display value (averaged: those do not depend on the pixel's area).
_AVERAGED_UNITS = ("scaled to [0,1]", "/sr", "sr-1", "sr^-1", "sr**-1", "arcsec-2", "arcsec^-2", "arcsec**-2",
                   "/arcsec2", "/arcsec^2", "/arcsec**2", "mag/arcsec")


def resize_sums(unit: str | None) -> bool:
    """Whether --resize adds up (True) or averages the pixels an output pixel covers, for pixels in ``unit``."""
    text = (unit or "").lower()
    return not any(mark in text for mark in _AVERAGED_UNITS)


def scale_factor(height: int, width: int, crop: int | None, resize: int | None) -> float:
    """How much larger an output pixel is than an input pixel (a crop keeps the scale; a resize of the cropped
    N pixels to M multiplies it by N/M)."""
    size = crop or height
    return size / resize if resize else 1.0


# -------------------------------------------------------------------------------------------------- the plan

@dataclass
class PackOptions:
    crop: int | None = None
    resize: int | None = None
    bands: list[str] | None = None
    skip_bad: bool = False
    fill_nan: float | None = None
    jobs: int = 4
    pixscale: float | None = None
    batch_rows: int = 256


@dataclass
class PackReport:
    written: int = 0
    skipped: list[tuple[object, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # what was not given and how it was chosen, said at the end


def reshape_images(images: np.ndarray, options: PackOptions, sum_flux: bool = True) -> np.ndarray:
    """Centre crop, then area-resample, a batch of (n, bands, H, W) images as the options ask (``sum_flux``: see
    area_resize). Resizing non-square images to a square would make the pixels non-square: refused."""
    if options.crop:
        images = centre_crop(images, options.crop, "--crop")
    if options.resize:
        height, width = images.shape[-2:]
        if height != width:
            raise BadData(f"{height}x{width} images resized to {options.resize}x{options.resize} would get "
                          "non-square pixels (two pixel scales)", f"crop them square first, e.g. --crop {min(height, width)}")
        images = area_resize(images, options.resize, sum_flux)
    return images


def handle_nonfinite(images: np.ndarray, options: PackOptions, ids, report: PackReport):
    """Fill, skip or refuse images with NaN/inf pixels; returns (images, keep mask)."""
    keep = np.ones(len(images), bool)
    bad = ~np.isfinite(images).reshape(len(images), -1).all(axis=1)
    if bad.any():
        if options.fill_nan is not None:
            images = np.where(np.isfinite(images), images, np.float32(options.fill_nan))
        elif options.skip_bad:
            for i in np.flatnonzero(bad):
                report.skipped.append((ids[i], "NaN or infinite pixels"))
            keep &= ~bad
        else:
            first = ids[int(np.argmax(bad))]
            raise BadData(f"{int(bad.sum())} images hold NaN or infinite pixels (first: object_id {first})",
                          "pass --fill-nan 0 to replace them, or --skip-bad to leave those objects out")
    return np.ascontiguousarray(images, dtype=np.float32), keep


def read_catalogue(path: str) -> pa.Table:
    """A catalogue as an Arrow table: CSV/TSV by text, or any galtools table (FITS, Parquet, Arrow)."""
    head = open(path, "rb").read(16) if os.path.isfile(path) else b""
    if sources.named_format(path):   # a .parquet or .fits that is not one: say so, not "not a CSV"
        sources.sniff(head, path)
    try:
        sources.sniff(head, path)
        is_table = True
    except BadData:
        is_table = False
    if is_table:
        from galtools.io import open_table

        with open_table(path) as table:
            return table.read_all()
    import pyarrow.csv as pacsv

    delimiter = "\t" if path.lower().endswith((".tsv", ".tab")) else ","
    try:
        return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter))
    except pa.ArrowInvalid as exc:
        raise BadData(f"{path}: not a readable CSV catalogue ({' '.join(str(exc).split())[:100]})",
                      "give a CSV with a header row, or a FITS/Parquet table") from None


def id_column_of(catalogue: pa.Table, requested: str | None) -> str | None:
    if requested:
        if requested not in catalogue.column_names:
            raise BadData(f"catalogue has no id column '{requested}' (columns: {', '.join(catalogue.column_names)})",
                          "name one with --id-column")
        return requested
    lower = {name.lower(): name for name in catalogue.column_names}
    return next((lower[c] for c in ID_CANDIDATES if c in lower), None)


@dataclass
class StampJob:
    object_id: object
    paths: list[str]   # one path, or one per band for a '{band}' pattern
    hdu: int | str | None = None   # the FITS extension of every path (None: the file's only image)

    def where(self) -> str:
        """The stamp as messages name it: its (first) file, and the HDU when one was chosen."""
        return self.paths[0] if self.hdu is None else f"{self.paths[0]}[{self.hdu}]"


def stamp_jobs(catalogue: pa.Table, folder: str, file_column: str, ids, band_names,
               hdu_column: str | None = None) -> list[StampJob]:
    """One job per catalogue row; a file name may end in CFITSIO's [N] or [EXTNAME], ``hdu_column`` names the
    HDU of each row (it wins over a [..] suffix)."""
    if file_column not in catalogue.column_names:
        raise BadData(f"catalogue has no file column '{file_column}' (columns: {', '.join(catalogue.column_names)})",
                      "name it with --file-column")
    if hdu_column is not None and hdu_column not in catalogue.column_names:
        raise BadData(f"catalogue has no HDU column '{hdu_column}' (columns: {', '.join(catalogue.column_names)})",
                      "name it with --hdu-column")
    hdus = catalogue.column(hdu_column).to_pylist() if hdu_column else [None] * catalogue.num_rows
    jobs = []
    for object_id, name, row_hdu in zip(ids, catalogue.column(file_column).to_pylist(), hdus):
        name, hdu = split_extension("" if name is None else str(name))
        hdu = parse_hdu(row_hdu) if row_hdu is not None else hdu
        if "{band}" in name:
            if not band_names:
                raise UsageProblem("the file column holds a '{band}' pattern but no band names were given",
                                   "pass --bands u,g,r,i,z")
            paths = [os.path.join(folder, name.replace("{band}", band)) for band in band_names]
        else:
            paths = [os.path.join(folder, name)]
        jobs.append(StampJob(object_id, paths, hdu))
    return jobs


def load_job(job: StampJob):
    """(images (bands, H, W), from_8bit) or an error string."""
    try:
        planes = [read_stamp(path, job.hdu) for path in job.paths]
    except BadData as exc:
        return exc.one_line()
    if len(planes) == 1:
        return planes[0]
    if any(p[0].shape[0] != 1 for p in planes):
        return f"{job.where()}: a per-band file holds more than one plane"
    shapes = {p[0].shape for p in planes}
    if len(shapes) > 1:
        return f"{job.where()}: per-band files differ in size {sorted(shapes)}"
    return np.concatenate([p[0] for p in planes]), planes[0][1]


class StampPacker:
    """Loads stamps in parallel threads (decoders release the GIL) and yields finished record batches."""

    def __init__(self, jobs: list[StampJob], extra: pa.Table | None, options: PackOptions, report: PackReport):
        self.jobs, self.extra, self.options, self.report = jobs, extra, options, report
        self.shape = None         # (bands, H, W) after crop/resize, fixed by the first good stamp
        self.raw_bands = None     # band count of the first good stamp
        self.from_8bit = None
        self.first_path = None
        self.pixscales = None     # each job's own output pixel scale (see plan_pixscales), or None
        self.sum_flux = True      # --resize adds up fluxes (False: the stamps' unit is a surface brightness)

    def check_missing(self) -> None:
        missing = [(job.object_id, path) for job in self.jobs for path in job.paths if not os.path.exists(path)]
        if not missing:
            return
        if not self.options.skip_bad:
            listed = ", ".join(p for _, p in missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise InputMissing(f"{len(missing)} stamp files are missing: {listed}",
                               "fix the paths (relative to the catalogue's folder) or pass --skip-bad")
        gone = {object_id for object_id, _ in missing}
        self.report.skipped.extend((object_id, "missing file") for object_id in sorted(gone, key=str))
        keep = [i for i, job in enumerate(self.jobs) if job.object_id not in gone]
        self.jobs = [self.jobs[i] for i in keep]
        if self.extra is not None:
            self.extra = self.extra.take(pa.array(keep, pa.int64()))

    def _accept(self, job: StampJob, loaded) -> np.ndarray | None:
        if isinstance(loaded, str):
            return self._reject(job, loaded)
        image, from_8bit = loaded
        where = job.where()
        if self.raw_bands is None:
            self.raw_bands, self.from_8bit, self.first_path = image.shape[0], from_8bit, where
        if image.shape[0] != self.raw_bands:
            return self._reject(job, f"{where} has {image.shape[0]} bands, but {self.first_path} has {self.raw_bands}")
        if from_8bit != self.from_8bit:
            kinds = ("an 8-bit picture", "a FITS image") if from_8bit else ("a FITS image", "an 8-bit picture")
            return self._reject(job, f"{where} is {kinds[0]} but {self.first_path} is {kinds[1]}: their pixels "
                                     "are not in one unit")
        crop = self.options.crop
        if crop and min(image.shape[1:]) < crop:
            return self._reject(job, f"{where} is {image.shape[1]}x{image.shape[2]} pixels, smaller than "
                                     f"--crop {crop}")
        try:
            finished = reshape_images(image[None], self.options, sum_flux=self.sum_flux and not from_8bit)
        except BadData as exc:
            return self._reject(job, f"{where}: {exc.one_line()}")
        if self.shape is None:
            self.shape = finished.shape[1:]
        if finished.shape[1:] != self.shape:
            return self._reject(job, f"{where} is {image.shape[1]}x{image.shape[2]} pixels, unlike "
                                     f"{self.first_path}; bring stamps to one size with --crop N and/or --resize N")
        return finished[0]

    def _reject(self, job: StampJob, reason: str):
        if not self.options.skip_bad:
            raise BadData(reason, "fix the stamp, or pass --skip-bad to leave such objects out")
        self.report.skipped.append((job.object_id, reason))
        return None

    def batches(self, advance=lambda n: None):
        size = self.options.batch_rows
        with ThreadPoolExecutor(max(1, self.options.jobs)) as pool:
            for lo in range(0, len(self.jobs), size):
                chunk = self.jobs[lo:lo + size]
                loaded = list(pool.map(load_job, chunk))
                kept_rows, images = [], []
                for offset, (job, item) in enumerate(zip(chunk, loaded)):
                    image = self._accept(job, item)
                    if image is not None:
                        kept_rows.append(lo + offset)
                        images.append(image)
                advance(len(chunk))
                if not images:
                    continue
                ids = [self.jobs[i].object_id for i in kept_rows]
                pixels, keep = handle_nonfinite(np.stack(images), self.options, ids, self.report)
                if keep.any():
                    yield self._batch([r for r, k in zip(kept_rows, keep) if k], pixels[keep])

    def _batch(self, rows: list[int], pixels: np.ndarray) -> pa.RecordBatch:
        columns = {"object_id": pa.array([self.jobs[i].object_id for i in rows])}
        if self.extra is not None:
            taken = self.extra.take(pa.array(rows, pa.int64()))
            for name in taken.column_names:
                columns[name] = taken.column(name).combine_chunks()
        if self.pixscales is not None:
            columns[PIXSCALE_COLUMN] = pa.array([self.pixscales[i] for i in rows], pa.float64())
        columns[IMAGE] = tensor_column(pixels)
        self.report.written += len(rows)
        return pa.RecordBatch.from_pydict(columns)


def band_names_for(count: int, requested: list[str] | None, from_8bit: bool) -> list[str]:
    if requested:
        if len(requested) != count:
            raise BadData(f"--bands names {len(requested)} bands but the stamps have {count}",
                          f"give {count} names, e.g. --bands {','.join('gri'[:count] if count <= 3 else 'ugriz'[:count])}")
        return requested
    if from_8bit and count == 3:
        return list(RGB_BANDS)
    if from_8bit and count == 1:
        return list(GRAY_BANDS)
    return [f"b{i}" for i in range(count)]


def select_bands(images: np.ndarray, have: list[str] | None, want: list[str] | None) -> np.ndarray:
    if not want:
        return images
    if not have:
        raise BadData("the input's bands are not named, so --bands cannot select among them",
                      "name them when packing (gal-pack --bands)")
    missing = [b for b in want if b not in have]
    if missing:
        raise BadData(f"band {missing[0]} is not in the input (bands: {','.join(have)})", "choose from those bands")
    return images[:, [have.index(b) for b in want]]


def converted_schema(table, options: PackOptions) -> pa.Schema:
    """The columns convert_batches writes, known before any row: an empty input gives an empty table of them."""
    bands, height, width = table.require_images()
    bands = len(options.bands) if options.bands else bands
    if options.resize and height != width and not options.crop:
        raise BadData(f"{table.name}: {height}x{width} images resized to {options.resize}x{options.resize} would "
                      "get non-square pixels (two pixel scales)", f"crop them square first, e.g. --crop {min(height, width)}")
    if options.crop:
        height = width = options.crop
    if options.resize:
        height = width = options.resize
    fields = [f for f in table.schema if f.name != IMAGE]
    if options.resize:
        fields = [pa.field(PIXSCALE_COLUMN, pa.float64()) if f.name == PIXSCALE_COLUMN else f for f in fields]
    return pa.schema(fields + [pa.field(IMAGE, pa.fixed_shape_tensor(pa.float32(), (bands, height, width)))])


def converted_metadata(table, options: PackOptions, input_pixscale: str | None = None) -> dict[str, str]:
    """The pixel scale of a converted table: the input's (``input_pixscale``, else its metadata) times the growth of
    a pixel by --crop/--resize; --pixscale (the output's) must agree with it, and stands alone where the input's
    scale is unknown."""
    _, height, width = table.require_images()
    own = table.metadata.get(meta.PIXSCALE)
    if input_pixscale is not None:
        try:
            own = float(input_pixscale)
        except ValueError:
            raise UsageProblem(f"--stamp-pixscale {input_pixscale}: converting a table takes one number (the "
                               "table's own pixel scale)", "give it in arcsec, e.g. --stamp-pixscale 0.262") from None
    try:
        own = float(own) if own is not None else None
    except ValueError:
        own = None
    if own is not None and own > 0:
        factor = scale_factor(height, width, options.crop, options.resize)
        scale = output_pixscale(own * factor, options.pixscale, f"{table.name} has after --crop/--resize "
                                                                f"({own:g} x {factor:g})")
    else:
        scale = options.pixscale
    return {meta.PIXSCALE: repr(float(scale))} if scale else {}


def convert_batches(table, options: PackOptions, report: PackReport):
    """Crop/resize/select bands of an existing cutout table, batch by batch; repeated object_ids are refused."""
    from galtools.io import UniqueIds

    seen = UniqueIds(table.name)
    sum_flux = resize_sums(table.metadata.get(meta.FLUX_UNIT))
    _, height, width = table.require_images()
    factor = scale_factor(height, width, options.crop, options.resize)
    for batch in table.iter_batches(batch_size=options.batch_rows):
        if "object_id" in batch.schema.names:
            seen.add(batch.column("object_id"))
        images = select_bands(images_of(batch), table.bands, options.bands)
        ids = batch.column("object_id").to_pylist() if "object_id" in batch.schema.names else list(range(batch.num_rows))
        images, keep = handle_nonfinite(reshape_images(images, options, sum_flux), options, ids, report)
        if factor != 1.0 and PIXSCALE_COLUMN in batch.schema.names:   # each object's own scale grows alike
            import pyarrow.compute as pc

            position = batch.schema.get_field_index(PIXSCALE_COLUMN)
            scaled = pc.multiply(batch.column(position).cast(pa.float64()), factor)
            batch = batch.set_column(position, pa.field(PIXSCALE_COLUMN, pa.float64()), scaled)
        batch = batch.drop_columns([IMAGE])
        if not keep.all():
            batch = batch.filter(pa.array(keep))
            images = images[keep]
        report.written += len(images)
        yield batch.append_column(IMAGE, tensor_column(images))


def stamps_in_folder(folder: str) -> list[str]:
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(STAMP_SUFFIXES) and not n.startswith("."))
    if not names:
        raise InputMissing(f"{folder}: holds no FITS, PNG or JPEG stamps", f"expected files ending {', '.join(STAMP_SUFFIXES)}")
    return names


def ids_from_names(names: list[str]) -> list:
    stems = []
    for name in names:
        stem = name
        for suffix in sorted(STAMP_SUFFIXES, key=len, reverse=True):
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        stems.append(stem)
    if all(s.lstrip("-").isdigit() for s in stems):
        return [int(s) for s in stems]
    return stems


def stamp_metadata(bands: list[str], from_8bit: bool, pixscale: float | None, unit: str | None = None) -> dict[str, str]:
    out = {meta.BANDS: ",".join(bands),
           meta.FLUX_UNIT: meta.EIGHT_BIT_UNIT if from_8bit else unit or "as in the stamps"}
    if pixscale:
        out[meta.PIXSCALE] = repr(float(pixscale))
    return out


# ------------------------------------------------------------------ pixel scales: the input's, after crop and resize

PIXSCALE_COLUMN = "pixscale_arcsec"
PIXSCALE_AGREEMENT = 0.01   # a --pixscale this close to the derived scale is the same scale


def header_pixscale(header) -> float | None:
    """A FITS header's pixel scale in arcsec: PIXSCALE (arcsec), else the WCS CD matrix or CDELT (degrees)."""
    try:
        if "PIXSCALE" in header:
            return abs(float(header["PIXSCALE"])) or None
        if "CD1_1" in header or "CD1_2" in header:
            return float(np.hypot(float(header.get("CD1_1", 0.0)), float(header.get("CD2_1", 0.0)))) * 3600 or None
        if "CDELT1" in header:
            return abs(float(header["CDELT1"])) * 3600 or None
    except (TypeError, ValueError):
        return None
    return None


@dataclass
class StampGeometry:
    size: tuple[int, int] | None = None     # (H, W), None when the stamp cannot be read (the packer says why later)
    pixscale: float | None = None           # arcsec/pixel from the header
    unit: str | None = None                 # BUNIT


def stamp_geometry(job: StampJob) -> StampGeometry:
    """Size, header pixel scale and unit of a job's stamp, from its headers alone: of the HDU the job names."""
    path = job.paths[0]
    try:
        if path.lower().endswith((".png", ".jpg", ".jpeg")):
            from PIL import Image

            with Image.open(path) as picture:
                return StampGeometry((picture.size[1], picture.size[0]))
        import fitsio

        with fitsio.FITS(path) as fits:
            hdu = _chosen_hdu(fits, path, job.hdu)
            dims, header = hdu.get_dims(), hdu.read_header()
    except (OSError, ValueError, BadData):
        return StampGeometry()
    unit = str(header["BUNIT"]).strip() if "BUNIT" in header else None
    return StampGeometry((int(dims[-2]), int(dims[-1])) if len(dims) >= 2 else None, header_pixscale(header),
                         unit or None)


@dataclass
class PixscalePlan:
    """What gal-pack writes as the stamps' pixel scale: one value (``single``, for the metadata), one per object
    (``per_object``, a pixscale_arcsec column, None where unknown), or nothing known (both None)."""
    single: float | None = None
    per_object: list | None = None
    unknown: int = 0
    sizes: set = field(default_factory=set)
    unit: str | None = None        # the stamps' BUNIT when they all say the same


def output_pixscale(derived: float, given: float | None, what: str) -> float:
    """The scale derived from the input's; a --pixscale that disagrees by more than 1% is refused."""
    if given is not None and abs(given / derived - 1.0) > PIXSCALE_AGREEMENT:
        raise UsageProblem(f"--pixscale {given:g} disagrees with the {derived:.6g} arcsec/pixel {what}",
                           "leave out --pixscale (gal-pack writes the output's scale itself), or give the input's "
                           "own scale with --stamp-pixscale")
    return derived


def native_pixscales(packer: "StampPacker", stamp_pixscale: str | None) -> list | None:
    """The stamps' own pixel scales from --stamp-pixscale, one per job: one number for all, or a catalogue column
    (None where a row has none); None without the option (then each stamp's FITS header says it)."""
    if stamp_pixscale is None:
        return None
    try:
        return [float(stamp_pixscale)] * len(packer.jobs)
    except ValueError:
        if packer.extra is None or stamp_pixscale not in packer.extra.column_names:
            raise BadData(f"--stamp-pixscale {stamp_pixscale}: neither a number nor a catalogue column",
                          "give the stamps' pixel scale in arcsec, or the column holding it") from None
    native = packer.extra.column(stamp_pixscale).to_pylist()
    wrong = next((v for v in native if v is not None and not _is_number(v)), None)
    if wrong is not None:
        raise BadData(f"--stamp-pixscale {stamp_pixscale}: the column holds {wrong!r}, not a pixel scale",
                      "give a column of numbers (arcsec per pixel)")
    return [None if v is None else float(v) for v in native]


def _is_number(value) -> bool:
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False


def plan_pixscales(jobs: list[StampJob], options: PackOptions, native: list | None) -> PixscalePlan:
    """Each stamp's pixel scale after --crop/--resize: its own scale (``native``: --stamp-pixscale as one value or a
    catalogue column, per job; else its FITS header) times the crop size (else its height) over --resize. One
    value when they agree, else one per object; --pixscale (the output's scale) must agree with them."""
    pictures = all(job.paths[0].lower().endswith((".png", ".jpg", ".jpeg")) for job in jobs)
    if pictures and native is None and not (options.pixscale is not None and options.resize and not options.crop):
        return PixscalePlan(single=options.pixscale)   # pictures carry no scale, and their sizes change nothing here
    with ThreadPoolExecutor(max(1, options.jobs)) as pool:
        geometries = list(pool.map(stamp_geometry, jobs))
    units = {g.unit for g in geometries if g.size is not None}
    plan = PixscalePlan(sizes={g.size for g in geometries if g.size is not None},
                        unit=units.pop() if len(units) == 1 else None)
    scales = []
    for i, geometry in enumerate(geometries):
        own = native[i] if native is not None and native[i] is not None else geometry.pixscale
        if own is None or geometry.size is None:
            scales.append(None)
        else:
            scales.append(float(own) * scale_factor(*geometry.size, options.crop, options.resize))
    known = [s for s in scales if s is not None]
    plan.unknown = len(scales) - len(known)
    factors_differ = options.resize and not options.crop and len(plan.sizes) > 1
    agree = bool(known) and max(known) <= min(known) * (1 + 1e-9)
    if agree and (plan.unknown == 0 or options.pixscale is not None):
        plan.single = output_pixscale(known[0], options.pixscale, "the stamps have after --crop/--resize")
    elif known or factors_differ:
        plan.per_object = scales
    elif options.pixscale is not None:
        plan.single = options.pixscale
    return plan
