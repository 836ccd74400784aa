"""From a table's raw cutouts to the encoder's input, exactly as in training:

    raw fluxes -> band selection and order -> centre crop to the model's size -> Preprocess (the fitted
    arcsinh + per-band normalisation stored in the model) -> float32 (n, bands, S, S)

The crop is galtools.preprocess's centre crop, the one training, gal-pack and the augmentations use, so that an
unaugmented training view and gal-embed's input are the same pixels.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from galtools.errors import BadData
from galtools.preprocess import Preprocess, centre_crop_window

FILL_HINT = "fill them first, e.g. gal-pack IN --fill-nan 0 -o OUT"


@dataclass(frozen=True)
class InputPlan:
    """Which planes and pixels of the table's images feed the model, and how they are normalised."""

    band_index: tuple[int, ...]      # position in the table's images of each model band, in the model's order
    rows: slice
    cols: slice
    preprocess: Preprocess

    @classmethod
    def for_table(cls, model, table_bands, image_shape, table_name: str, model_name: str,
                  band_map: dict | None = None) -> "InputPlan":
        """Match a table's (bands, H, W) images to a model; BadData (65) names both sides when they disagree.
        ``band_map`` ({model band: table band}, see embed.checks) feeds a model band from a differently named plane,
        on purpose (one plane may feed several model bands)."""
        from galtools.embed.checks import mapped_bands

        n_planes, height, width = image_shape
        size, model_bands = model.input_size, list(model.bands)
        if band_map:
            if table_bands is None:
                raise BadData(f"{table_name} does not name its image planes, so --band-map cannot pick among them",
                              "name them (gal-pack --bands, or --bands for an HDF5 file)")
            model_bands = mapped_bands(model_bands, band_map, model_name)
        if table_bands is None:
            # Unnamed planes are never matched by position: a g,r,z file fed to a z,r,g model would be embedded
            # with its colours swapped and the output's metadata would name bands it never had.
            raise BadData(f"{table_name} has {n_planes}-band images without band names and {model_name} needs "
                          f"{len(model_bands)} bands ({','.join(model_bands)}): which plane is which band would be "
                          "a guess", "name the planes in their order with --bands B1,B2,... (e.g. --bands "
                          f"{','.join(_example_bands(n_planes, model_bands))}), or once for all with "
                          "gal-pack IN --bands B1,B2,... -o OUT")
        else:
            table_bands = list(table_bands)
            if len(table_bands) != n_planes:
                raise BadData(f"{table_name} names {len(table_bands)} bands ({','.join(table_bands)}) for "
                              f"{n_planes}-plane images", "fix the table's galtools.bands metadata (gal-pack --bands)")
            missing = [b for b in model_bands if b not in table_bands]
            if missing:
                raise BadData(f"{table_name} has bands {','.join(table_bands)} but {model_name} needs "
                              f"{','.join(model_bands)} (missing {','.join(missing)})",
                              "embed cutouts with the bands the model was trained on, or feed a model band from "
                              "another plane on purpose with --band-map MODEL_BAND=TABLE_BAND")
            index = [table_bands.index(b) for b in model_bands]
        if height < size or width < size:
            raise BadData(f"{table_name} has {height}x{width} images but {model_name} needs at least {size}x{size}",
                          f"use cutouts of {size}x{size} pixels or more (gal-pack --resize), or a model trained "
                          "at this size")
        rows, cols = centre_crop_window(height, width, size)
        return cls(tuple(index), rows, cols, model.preprocess)

    @property
    def identity_bands(self) -> bool:
        return list(self.band_index) == list(range(len(self.band_index)))

    def select(self, images: np.ndarray) -> np.ndarray:
        """The model's bands and centre crop of (n, planes, H, W) images: a view unless bands are reordered."""
        cropped = images[:, :, self.rows, self.cols]
        return cropped if self.identity_bands else cropped[:, list(self.band_index)]

    def prepare_into(self, images: np.ndarray, out: np.ndarray) -> None:
        """Select, crop and preprocess ``images`` into ``out`` (n, bands, S, S) float32."""
        out[...] = self.preprocess.apply_numpy(self.select(images))


def _example_bands(n_planes: int, model_bands: list[str]) -> list[str]:
    """Band names to show in a hint: the model's own when the counts agree, else the first letters of ugriz."""
    return list(model_bands) if n_planes == len(model_bands) else list("ugrizy"[:n_planes]) or ["b0"]


class Preparer:
    """Prepares batches, splitting each over ``workers`` threads (numpy releases the GIL in its loops, so on a GPU
    node the preprocessing of one batch uses several cores and keeps up with the GPU)."""

    CHUNK_ROWS = 64

    def __init__(self, plan: InputPlan, workers: int = 1):
        self.plan = plan
        self.workers = max(1, workers)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="gal-embed-prep") if self.workers > 1 else None

    def _chunk(self, images: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Prepare rows into ``out``; which of them are finite (checked here, in the worker, while hot in cache)."""
        self.plan.prepare_into(images, out)
        return np.isfinite(out.reshape(len(out), -1)).all(axis=1)

    def __call__(self, images: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(prepared float32 (n, bands, S, S), per-row "all values finite")."""
        n = images.shape[0]
        size = self.plan.rows.stop - self.plan.rows.start
        if out is None:
            out = np.empty((n, len(self.plan.band_index), size, size), np.float32)
        if self._pool is None or n <= self.CHUNK_ROWS:
            return out, self._chunk(images, out)
        step = max(self.CHUNK_ROWS, -(-n // self.workers))
        jobs = [self._pool.submit(self._chunk, images[lo:lo + step], out[lo:lo + step]) for lo in range(0, n, step)]
        return out, np.concatenate([job.result() for job in jobs])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


# NaN or infinite pixels would give NaN embeddings without a word: galtools.io's check_finite refuses them, naming
# the first objects (the flags come from the preprocessed values, finite exactly when the pixels are, short of
# fluxes near float32's overflow).
NONFINITE_PIXELS = ("cutout(s) in a batch hold NaN or infinite pixels, or values the model's input scaling makes "
                    "so")
