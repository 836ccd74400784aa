"""Redshift as classification: ``n_bins`` equal bins over [0, zmax], and the summaries of a binned pdf.

Following Hayat et al. (2021) and Pasquet et al. (2019), the network predicts a probability for each of 180 bins
spanning 0 < z < 0.4; the point estimate is the pdf's mean over the bin centres, its spread the pdf's standard
deviation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RedshiftBins:
    n_bins: int = 180
    zmax: float = 0.4

    def __post_init__(self):
        if self.n_bins < 2:
            raise ValueError(f"need at least 2 bins, got {self.n_bins}")
        if not self.zmax > 0:
            raise ValueError(f"zmax must be positive, got {self.zmax}")

    @property
    def width(self) -> float:
        return self.zmax / self.n_bins

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(0.0, self.zmax, self.n_bins + 1)

    @property
    def centres(self) -> np.ndarray:
        return (np.arange(self.n_bins) + 0.5) * self.width

    def assign(self, z: np.ndarray) -> tuple[np.ndarray, int, int]:
        """Bin index of each (finite) redshift, and how many were clipped: (index, n_at_or_above_zmax, n_below_0).

        z >= zmax goes to the last bin and z < 0 (e.g. stars with a slightly negative z_spec) to the first, so that
        every labelled object still teaches the classifier something; the caller warns with the counts.
        """
        z = np.asarray(z, dtype=np.float64)
        index = np.floor(z / self.width).astype(np.int64)
        above = int(np.count_nonzero(z >= self.zmax))
        below = int(np.count_nonzero(z < 0))
        return np.clip(index, 0, self.n_bins - 1), above, below


def smoothing_kernel(bins: RedshiftBins, sigma_bins: float) -> np.ndarray:
    """(n_bins, n_bins) float32 soft targets: row k is a Gaussian of standard deviation ``sigma_bins`` bin widths
    centred on bin k, cut at [0, zmax] and normalised to sum to 1.

    With a few thousand labels, one-hot targets over 180 bins leave each bin's weights to be learnt from a handful
    of objects; spreading each label over its neighbours tells the head that nearby redshifts are nearly right.
    """
    if not sigma_bins > 0:
        return np.eye(bins.n_bins, dtype=np.float32)
    offset = np.arange(bins.n_bins)[None, :] - np.arange(bins.n_bins)[:, None]
    kernel = np.exp(-0.5 * (offset / sigma_bins) ** 2)
    return (kernel / kernel.sum(axis=1, keepdims=True)).astype(np.float32)


def summarise_pdf(pdf: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, mode, standard deviation) of each row of an (n, n_bins) pdf over the bin centres."""
    pdf = np.asarray(pdf, dtype=np.float64)
    total = pdf.sum(axis=1, keepdims=True)
    pdf = pdf / np.where(total > 0, total, 1.0)
    mean = pdf @ centres
    variance = pdf @ (centres ** 2) - mean ** 2
    std = np.sqrt(np.clip(variance, 0.0, None))
    mode = centres[np.argmax(pdf, axis=1)]
    return mean, mode, std
