"""Fitting gal-ood on a reference embedding table: split off calibration rows, fit the statistic, calibrate it."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from galtools.errors import BadData, UsageProblem
from galtools.ood.model import METHODS, SEARCHES, OodModel

log = logging.getLogger("galtools")

MIN_CALIBRATION_ROWS = 20     # below this a percentile is too coarse to call anything 'the 95th'


@dataclass
class OodSettings:
    method: str = "knn"
    k: int = 10
    search: str = "exact"
    calibration_fraction: float = 0.2
    pca: int = 32              # PCA components for gmm and iforest
    components: int = 8        # Gaussian mixture components
    trees: int = 200           # isolation-forest trees
    seed: int = 0

    def validate(self) -> "OodSettings":
        if self.method not in METHODS:
            raise UsageProblem(f"unknown --method {self.method!r}", f"use one of {', '.join(METHODS)}")
        if self.search not in SEARCHES:
            raise UsageProblem(f"unknown --search {self.search!r}", f"use one of {', '.join(SEARCHES)}")
        if not 0 < self.calibration_fraction < 1:
            raise UsageProblem(f"--calibration-fraction must be between 0 and 1, got {self.calibration_fraction}")
        for name, value in (("-k", self.k), ("--pca", self.pca), ("--components", self.components),
                            ("--trees", self.trees)):
            if value < 1:
                raise UsageProblem(f"{name} must be at least 1, got {value}")
        return self


def ids_as_numpy(ids) -> np.ndarray:
    """object_ids as int64 or unicode numpy (both load back without pickle)."""
    import pyarrow as pa

    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        if pa.types.is_integer(ids.type):
            return ids.cast(pa.int64()).to_numpy(zero_copy_only=False)
        return np.array([str(v) for v in ids.to_pylist()], dtype=str)
    return np.asarray(ids)


def split_calibration(n: int, fraction: float, seed: int, k: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(reference rows, calibration rows), both sorted; BadData when too few rows remain for either."""
    n_calibration = int(round(fraction * n))
    n_reference = n - n_calibration
    needed = k if method == "knn" else 2
    if n_calibration < MIN_CALIBRATION_ROWS or n_reference < needed:
        least = max(int(np.ceil(MIN_CALIBRATION_ROWS / fraction)), int(np.ceil(needed / (1 - fraction))))
        what = f"k={k}" if method == "knn" else f"--method {method}"
        raise BadData(f"too few reference rows: {n} rows give {n_reference} to search and {n_calibration} to "
                      f"calibrate on; {what} needs at least {needed} and {MIN_CALIBRATION_ROWS}",
                      f"give at least {least} reference rows, or a smaller -k")
    order = np.random.default_rng([seed, 13]).permutation(n)
    return np.sort(order[n_calibration:]), np.sort(order[:n_calibration])


def fit_reference(unit: np.ndarray, ids, settings: OodSettings, model_sha256: str | None = None,
                  source: str | None = None) -> OodModel:
    """Fit on unit-length reference embeddings ``unit`` (n, D) with their object_ids."""
    from galtools.ood import density

    settings.validate()
    ids = ids_as_numpy(ids)
    reference, calibration = split_calibration(len(unit), settings.calibration_fraction, settings.seed, settings.k,
                                               settings.method)
    arrays: dict[str, np.ndarray] = {}
    if settings.method != "knn":
        arrays.update(density.fit_pca(unit[reference], settings.pca, settings.seed))
        projected = density.project(unit[reference], arrays).astype(np.float32)
        if settings.method == "gmm":
            arrays.update(density.fit_gmm(projected, settings.components, settings.seed))
        else:
            arrays.update(density.fit_iforest(projected, settings.trees, settings.seed))
    model = OodModel(method=settings.method, vectors=np.ascontiguousarray(unit[reference], dtype=np.float32),
                     ids=ids[reference], calibration=np.empty(0), k=settings.k, search=settings.search,
                     density=arrays, model_sha256=model_sha256, seed=settings.seed)
    raw, _, _ = model.statistic(unit[calibration])
    model.calibration = np.sort(raw)
    model.info = {"n_reference": int(len(reference)), "n_calibration": int(len(calibration)),
                  "settings": asdict(settings), "source": source,
                  "calibration_quantiles": {str(q): float(np.quantile(raw, q)) for q in (0.5, 0.9, 0.95, 0.99)}}
    log.info(f"{settings.method}: {len(reference)} reference rows, calibrated on {len(calibration)} held-out rows; "
             f"95% of them below {model.threshold(0.95):.4g}")
    return model
