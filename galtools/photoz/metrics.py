"""The photometric-redshift metrics of the literature (e.g. Pasquet et al. 2019; Hayat et al. 2021).

With dz = (z_phot - z_spec) / (1 + z_spec):
  bias      = median(dz)
  sigma_MAD = 1.4826 x median(|dz - median(dz)|)   (a robust standard deviation)
  eta       = percentage of objects with |dz| > 0.05 (catastrophic outliers)
"""
from __future__ import annotations

import numpy as np

MAD_TO_SIGMA = 1.4826
OUTLIER_DZ = 0.05


def normalised_residuals(z_phot: np.ndarray, z_spec: np.ndarray) -> np.ndarray:
    z_phot = np.asarray(z_phot, dtype=np.float64)
    z_spec = np.asarray(z_spec, dtype=np.float64)
    return (z_phot - z_spec) / (1.0 + z_spec)


def photoz_metrics(z_phot: np.ndarray, z_spec: np.ndarray, outlier_dz: float = OUTLIER_DZ) -> dict:
    """{n, bias, sigma_mad, eta, mean_abs_dz} over the objects with finite z_phot and z_spec (NaN when none)."""
    dz = normalised_residuals(z_phot, z_spec)
    dz = dz[np.isfinite(dz)]
    if dz.size == 0:
        return {"n": 0, "bias": float("nan"), "sigma_mad": float("nan"), "eta": float("nan"),
                "mean_abs_dz": float("nan")}
    bias = float(np.median(dz))
    return {
        "n": int(dz.size),
        "bias": bias,
        "sigma_mad": float(MAD_TO_SIGMA * np.median(np.abs(dz - bias))),
        "eta": float(100.0 * np.count_nonzero(np.abs(dz) > outlier_dz) / dz.size),
        "mean_abs_dz": float(np.mean(np.abs(dz))),
    }


def binned_metrics(z_phot: np.ndarray, z_spec: np.ndarray, by: np.ndarray, edges: np.ndarray,
                   outlier_dz: float = OUTLIER_DZ) -> list[dict]:
    """The metrics in bins of ``by`` (z_spec, a magnitude ...): one dict per bin [lo, hi), the last bin closed."""
    by = np.asarray(by, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    rows = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        last = i == len(edges) - 2
        inside = (by >= lo) & ((by <= hi) if last else (by < hi))
        rows.append({"lo": float(lo), "hi": float(hi),
                     **photoz_metrics(np.asarray(z_phot)[inside], np.asarray(z_spec)[inside], outlier_dz)})
    return rows


def quantile_edges(values: np.ndarray, count: int) -> np.ndarray:
    """``count`` bins holding about equal numbers of objects (for magnitudes, whose range is not known ahead)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.array([0.0, 1.0])
    edges = np.unique(np.quantile(values, np.linspace(0, 1, count + 1)))
    return edges if edges.size >= 2 else np.array([values.min(), values.min() + 1.0])
