"""Fitting the photo-z head on embeddings: cross-entropy over redshift bins (galtools.heads' training loop).

Two ways to feed the training rows, with the same optimisation:
- in memory: the labelled embeddings (n x D float32) fit under ``IN_MEMORY_BYTES`` (or come from a pipe);
  every pass is a full random permutation;
- streamed: the table is re-read once per pass (galtools.heads.rows.StreamedRows); the validation rows are kept
  in memory.

What is photo-z's own: the bins, the labels clipped into them, and the optional Gaussian label smoothing.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from galtools.errors import BadData, UsageProblem
from galtools.heads.rows import InMemoryRows, StreamedRows, read_labelled, validation_split
from galtools.heads.source import check_finite_rows, check_numeric_column, open_embeddings
from galtools.heads.train import TrainSettings, train_head
from galtools.io import EMBEDDING, open_table, vectors_of
from galtools.photoz.bins import RedshiftBins, smoothing_kernel
from galtools.photoz.model import PhotozModel

log = logging.getLogger("galtools")

IN_MEMORY_BYTES = 2 << 30      # labelled embeddings up to this size are held in memory
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


# ------------------------------------------------------------------------------------------------ entry points

def fit_arrays(x: np.ndarray, z: np.ndarray, settings: FitSettings, model_sha256: str | None = None,
               name: str = "the labels", z_column: str = "z") -> PhotozModel:
    """Fit on labelled embeddings held in memory (rows with a non-finite z are dropped)."""
    settings.validate()
    labelled = np.isfinite(z)
    check_label_count(int(labelled.sum()), len(z), z_column, name, settings.n_bins)
    x, z = np.ascontiguousarray(x[labelled], dtype=np.float32), z[labelled]
    check_finite_rows(x, name)
    y, above, below = bin_labels(z, settings.bins, z_column, settings.clip_labels)
    val = validation_split(len(y), settings.val_fraction, settings.seed)
    log.info(f"fitting on {int((~val).sum())} labelled rows, validating on {int(val.sum())}")
    linear, record = train_head(InMemoryRows(x[~val], y[~val]), x[val], y[val], x.shape[1], settings.n_bins,
                                settings, settings.kernel)
    info = _info(settings, int((~val).sum()), int(val.sum()), above, below, z_column, record, streamed=False)
    return PhotozModel(linear, settings.bins, model_sha256, info)


def read_redshifts(source, z_column: str, n_bins: int, with_ids: bool = False):
    """The labelled rows of an open EmbeddingSource: (embeddings, redshifts, object_ids or None)."""
    check_numeric_column(source.table.schema, z_column, source.name, Z_FIX)

    def finite(batch):
        z = labels_of(batch, z_column)
        keep = np.flatnonzero(np.isfinite(z))
        return keep, z[keep]

    rows = read_labelled(source, [z_column], finite, with_ids)
    check_label_count(rows.count, rows.n_rows, z_column, source.name, n_bins)
    return rows.x, np.concatenate(rows.labels), rows.ids


def read_labelled_table(path: str, z_column: str, n_bins: int, with_ids: bool = False):
    """(embeddings, redshifts, encoder sha256, object_ids or None) of the labelled rows of a table, in memory."""
    with open_embeddings(path) as source:
        x, z, ids = read_redshifts(source, z_column, n_bins, with_ids)
        return x, z, source.model_sha256, ids


def fit_table(path: str, z_column: str, settings: FitSettings, progress=None) -> PhotozModel:
    """Fit on an embedding table (a file, a folder of parts, or '-'), streaming it when it is large."""
    settings.validate()
    with open_embeddings(path) as source:
        check_numeric_column(source.table.schema, z_column, source.name, Z_FIX)
        if path == "-" and settings.stream:
            raise UsageProblem("--stream needs a file: a pipe cannot be read once per pass",
                               "write the embeddings to a file first")
        if path == "-" or settings.stream is False:
            x, z, _ = read_redshifts(source, z_column, settings.n_bins)
            return fit_arrays(x, z, settings, source.model_sha256, source.name, z_column)
        z = np.concatenate([labels_of(b, z_column) for b in source.table.iter_batches(columns=[z_column])]
                           or [np.empty(0)])
        name, dim, model_sha256 = source.name, source.dim, source.model_sha256
    n_labelled = int(np.isfinite(z).sum())
    check_label_count(n_labelled, len(z), z_column, name, settings.n_bins)
    stream = settings.stream if settings.stream is not None else n_labelled * dim * 4 > IN_MEMORY_BYTES
    if not stream:
        with open_embeddings(path) as source:
            x, z, _ = read_redshifts(source, z_column, settings.n_bins)
        return fit_arrays(x, z, settings, model_sha256, name, z_column)
    return _fit_streamed(path, name, z, z_column, dim, model_sha256, settings, progress)


def _fit_streamed(path, name, z, z_column, dim, model_sha256, settings, progress) -> PhotozModel:
    labelled_rows = np.flatnonzero(np.isfinite(z))
    y, above, below = bin_labels(z[labelled_rows], settings.bins, z_column, settings.clip_labels)
    val = validation_split(len(labelled_rows), settings.val_fraction, settings.seed)
    label_of_row = np.full(len(z), -1, dtype=np.int16)
    label_of_row[labelled_rows[~val]] = y[~val]
    val_rows = labelled_rows[val]
    val_x = np.empty((len(val_rows), dim), dtype=np.float32)
    with open_table(path) as table:     # one pass: collect the validation rows and check for NaNs
        start, filled = 0, 0
        for batch in table.iter_batches(columns=[EMBEDDING]):
            stop = start + batch.num_rows
            x = vectors_of(batch)
            labelled_here = labelled_rows[(labelled_rows >= start) & (labelled_rows < stop)] - start
            check_finite_rows(x[labelled_here], name)
            here = val_rows[(val_rows >= start) & (val_rows < stop)] - start
            val_x[filled:filled + len(here)] = x[here]
            filled += len(here)
            start = stop
    rows = StreamedRows(path, label_of_row, dim)
    log.info(f"fitting on {rows.count} labelled rows (streamed from {name}), validating on {len(val_rows)}")
    linear, record = train_head(rows, val_x, y[val], dim, settings.n_bins, settings, settings.kernel, progress)
    info = _info(settings, rows.count, len(val_rows), above, below, z_column, record, streamed=True)
    return PhotozModel(linear, settings.bins, model_sha256, info)


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


def _info(settings, n_train, n_val, above, below, z_column, record, streamed) -> dict:
    return {"z_column": z_column, "n_train": n_train, "n_val": n_val, "n_clipped_above_zmax": above,
            "n_clipped_below_zero": below, "streamed": streamed, "settings": asdict(settings), "training": record,
            "seed": settings.seed}
