"""What photo-z fitting has of its own: the settings (bins, label smoothing, streaming), the labels read from the
redshift column and clipped into the bins, and the fingerprints of the rows a fit saw.

The fitting itself is galtools.heads.task's (``fit_table``: in memory, or streamed from a table whose labelled
embeddings exceed 2 GiB) with photo-z's head task (galtools.photoz.task.PhotozTask).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from galtools.errors import BadData, UsageProblem
from galtools.heads.train import TrainSettings
from galtools.io import open_table
from galtools.photoz.bins import RedshiftBins, smoothing_kernel

log = logging.getLogger("galtools")

Z_FIX = "name the spectroscopic redshift column with --z-column"


@dataclass
class FitSettings(TrainSettings):
    n_bins: int = 180
    zmax: float = 0.4
    stream: bool | None = None         # None: stream only when the labelled rows do not fit IN_MEMORY_BYTES
    label_smoothing: float = 0.0       # Gaussian sigma, in bins, that each label is spread over (0: one-hot)
    clip_labels: bool = False          # put labels at or above zmax in the last bin however many there are

    def validate(self) -> "FitSettings":
        if self.n_bins < 2:
            raise UsageProblem(f"--bins must be at least 2, got {self.n_bins}")
        if not self.zmax > 0:
            raise UsageProblem(f"--zmax must be positive, got {self.zmax}")
        super().validate()
        if not 0 <= self.label_smoothing <= self.n_bins:
            raise UsageProblem(f"--label-smoothing must be between 0 and the number of bins, got "
                               f"{self.label_smoothing}", "give a width in bins, e.g. 2")
        return self

    @property
    def bins(self) -> RedshiftBins:
        return RedshiftBins(self.n_bins, self.zmax)

    @property
    def kernel(self) -> np.ndarray | None:
        return smoothing_kernel(self.bins, self.label_smoothing) if self.label_smoothing > 0 else None


def labels_of(batch, z_column: str) -> np.ndarray:
    """The redshifts of a batch as float64, NaN where null."""
    return np.asarray(batch.column(z_column).to_numpy(zero_copy_only=False), dtype=np.float64)


def check_label_count(n_labelled: int, n_rows: int, z_column: str, name: str, n_bins: int) -> None:
    if n_labelled == 0:
        raise BadData(f"{name}: all {n_rows} values of '{z_column}' are NaN or null",
                      "give a table with spectroscopic redshifts, or name the right column with --z-column")
    if n_labelled < n_bins:
        raise BadData(f"{name}: only {n_labelled} rows have a '{z_column}', fewer than the {n_bins} redshift bins",
                      "give more labelled rows, or fewer --bins")


MAX_CLIPPED_FRACTION = 0.01   # labels at or above zmax tolerated (put in the last bin) without --clip-labels


def bin_labels(z: np.ndarray, bins: RedshiftBins, z_column: str, clip_labels: bool = True) -> tuple[np.ndarray, int, int]:
    """Bin index of each redshift; warns about the labels clipped into the first or last bin, and refuses
    (BadData) when more than MAX_CLIPPED_FRACTION of them lie at or above zmax, unless ``clip_labels``: the model
    could not tell those redshifts apart."""
    y, above, below = bins.assign(z)
    finite = np.asarray(z, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if above and not clip_labels and above > MAX_CLIPPED_FRACTION * len(finite):
        largest = float(finite.max())
        covering = round(float(np.ceil(largest * 20)) / 20, 2)   # the next multiple of 0.05 above the largest
        if covering <= largest:
            covering = round(covering + 0.05, 2)
        raise BadData(f"{above} of {len(finite)} labels ({100 * above / len(finite):.0f}%) have {z_column} >= "
                      f"--zmax {bins.zmax:g} (the largest is {largest:.3g}), and would all fall in the last bin",
                      f"--zmax {covering:g} covers them; pass --clip-labels to clip them anyway")
    if above:
        log.warning(f"{above} label(s) with {z_column} >= {bins.zmax:g} were put in the last bin "
                    "(raise --zmax to resolve them)")
    if below:
        log.warning(f"{below} label(s) with {z_column} < 0 were put in the first bin")
    return y, above, below


def settings_of(z_options: dict, training: dict, on_images: bool = False, probe: bool = True):
    """(the photo-z task, its FitSettings) from the command line's redshift and training options."""
    from galtools.photoz.task import PhotozTask

    settings = fit_settings(training, z_options, on_images, probe)
    return PhotozTask(z_options["z_column"], settings), settings


def fit_settings(training: dict, z_options: dict, on_images: bool = False, probe: bool = True) -> FitSettings:
    """FitSettings from the command line's training and redshift options: --batch-size and --lr default to the
    probe's or, ``on_images``, the network's values (``probe`` False: the network's whatever was given; see
    galtools.finetune.resolve_training)."""
    from galtools.finetune import resolve_training

    return FitSettings(**resolve_training(training, on_images, probe), n_bins=z_options["bins"],
                       zmax=z_options["zmax"], label_smoothing=z_options["label_smoothing"],
                       stream=z_options.get("stream"), clip_labels=z_options.get("clip_labels", False)).validate()


def training_fingerprints(path: str, z_column: str) -> np.ndarray | None:
    """The sorted fingerprints (galtools.io.ids.labelled_fingerprints) of the (object_id, redshift) pairs of the
    rows of ``path`` with a redshift: the rows a fit on it sees (training and validation). None for stdin or a
    table without ids."""
    from galtools.io.ids import OBJECT_ID, labelled_fingerprints

    if path == "-":
        return None
    with open_table(path) as table:
        if OBJECT_ID not in table.schema.names or z_column not in table.schema.names:
            return None
        parts = []
        for batch in table.iter_batches(columns=[OBJECT_ID, z_column]):
            labels = labels_of(batch, z_column)
            labelled = np.isfinite(labels)
            parts.append(labelled_fingerprints(batch.column(OBJECT_ID).filter(pa.array(labelled)), labels[labelled]))
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.uint64)
