"""A gal-ood reference searched through a compressed gal-knn index (ivfpq, ivfsq8) instead of held in the model.

    model = fit_through_index("ref.parquet", "ref.faiss", settings)    # knn only: calibrated leave-one-out through the index
    model.save("ood.model")                              # holds no vectors: the index and its table are the reference

The reference is the whole table the index was built from (its sidecar names it): every one of its rows, read by
row (the ids in memory, 8 bytes a row; vectors only as the index's float16 refine rows). Calibration: a random
fraction of the reference rows (``calibration_fraction``) are searched as queries with their own row left out, so
each gets the k-th neighbor distance among the other N - 1 rows, as a new object gets it among the N.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from galtools.errors import BadData, InputMissing, UsageProblem

log = logging.getLogger("galtools")


class IndexReference:
    """Top-k cosine neighbors among the rows of the table a compressed index was built from."""

    def __init__(self, index_path: str, table_path: str | None = None, fingerprint: str | None = None):
        from galtools.search.queries import load_for_index
        from galtools.search.scale import is_scale_sidecar, read_sidecar

        meta = read_sidecar(index_path)
        if not os.path.exists(index_path):
            raise InputMissing(f"reference index {index_path} not found", "check the path, or refit the model")
        if meta is None or not is_scale_sidecar(meta):
            raise UsageProblem(f"{index_path} is not an ivfpq/ivfsq8 index with its sidecar",
                               "build one: gal-knn index REFERENCE --kind ivfsq8")
        if fingerprint is not None and meta.get("fingerprint") != fingerprint:
            raise BadData(f"reference index {index_path} indexes another table than the model was calibrated on",
                          "give the index the model was fitted with, or refit the model")
        source = table_path or meta.get("source")
        if not source or not os.path.exists(source):
            raise InputMissing(f"the reference table {source} of index {index_path} is missing",
                               "put it back where the index was built from, or rebuild the index")
        self.path, self.table_path = os.path.abspath(index_path), os.path.abspath(source)
        self.base, self.index = load_for_index(source, index_path)
        self.fingerprint = meta["fingerprint"]
        from galtools.ood.fit import ids_as_numpy

        self.ids = ids_as_numpy(self.base.ids)

    @property
    def count(self) -> int:
        return self.base.count

    def topk(self, unit: np.ndarray, k: int, exclude=None):
        return self.index.search(unit, k, exclude=exclude, normalized=True)


def fit_through_index(table_path: str, index_path: str, settings, source: str | None = None):
    """A knn OodModel whose reference is the table ``table_path`` through its index ``index_path`` (see the
    module); refused (65) when the index was built from another table."""
    from galtools.ood.fit import split_calibration
    from galtools.ood.model import OodModel

    settings.validate()
    if settings.method != "knn":
        raise UsageProblem(f"--reference-index serves --method knn, not {settings.method}",
                           "drop --reference-index, or use --method knn")
    reference = IndexReference(index_path, table_path)
    n = reference.count
    _, calibration = split_calibration(n, settings.calibration_fraction, settings.seed, settings.k + 1, "knn")
    top = reference.topk(reference.index.vectors(calibration), settings.k, exclude=calibration)
    raw = np.clip(1.0 - top.scores[:, settings.k - 1].astype(np.float64), 0.0, None)
    model = OodModel(method="knn", vectors=np.empty((0, reference.base.dim), np.float32), ids=np.empty(0, np.int64),
                     calibration=np.sort(raw), k=settings.k, search="index",
                     model_sha256=reference.base.model_sha256, seed=settings.seed,
                     reference_index=reference.path, reference_table=reference.table_path,
                     reference_fingerprint=reference.fingerprint)
    model._searcher = reference
    model.info = {"n_reference": int(n), "n_calibration": int(len(calibration)), "source": source,
                  "calibration": "leave-one-out through the index",
                  "calibration_quantiles": {str(q): float(np.quantile(raw, q)) for q in (0.5, 0.9, 0.95, 0.99)}}
    log.info(f"knn through {index_path}: {n} reference rows, calibrated on {len(calibration)} of them (each left "
             f"out of its own search); 95% below {model.threshold(0.95):.4g}")
    return model
