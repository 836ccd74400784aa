"""The gal-ood model: the reference embeddings, a strangeness statistic, and its calibration on held-out rows.

Every method keeps the reference rows it was fitted on (unit vectors and object_ids), so that each scored object
gets its nearest reference object.  The statistic ("raw", higher = stranger) is

- ``knn``:     the cosine distance (1 - cosine similarity) to the k-th nearest reference row, found with
               galtools.search (exact blocked search, or a FAISS flat/IVF/HNSW index built from the reference);
               or through a compressed gal-knn index of a reference table too large to keep (ood.reference: the
               model then holds no vectors);
- ``gmm``:     -log p(x) under a Gaussian mixture on a PCA projection of the unit vectors;
- ``iforest``: the isolation-forest anomaly score on the same projection.

Calibration: the statistic of reference rows held out of the fit (``calibration`` below, sorted) is the
in-distribution distribution; ``ood_score`` = the fraction of them strictly less strange than the object (0-1), and
an object is trusted when ``ood_score < coverage``, so that a fraction ``coverage`` of new in-distribution objects
is trusted.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from galtools.errors import UsageProblem
from galtools.heads import Head, load_head, save_head

log = logging.getLogger("galtools")

TOOL = "gal-ood"
METHODS = ("knn", "gmm", "iforest")
SEARCHES = ("exact", "flat", "ivf", "hnsw")
KINDS = tuple(f"ood-{m}" for m in METHODS)


@dataclass
class OodModel:
    method: str
    vectors: np.ndarray            # (n_reference, D) float32 unit rows: the reference the statistic is measured against
    ids: np.ndarray                # (n_reference,) int64 or unicode object_ids
    calibration: np.ndarray        # sorted statistic of the held-out reference rows
    k: int = 10
    search: str = "exact"
    density: dict[str, np.ndarray] = field(default_factory=dict)   # PCA / GMM / forest arrays
    model_sha256: str | None = None
    info: dict = field(default_factory=dict)
    seed: int = 0
    reference_index: str | None = None      # knn through a compressed gal-knn index of the reference (ood.reference)
    reference_table: str | None = None
    reference_fingerprint: str | None = None
    _searcher: object = field(default=None, repr=False)

    @property
    def embedding_dim(self) -> int:
        return int(self.vectors.shape[1])

    # -- the statistic
    def searcher(self):
        if self._searcher is None and self.reference_index:
            from galtools.ood.reference import IndexReference

            self._searcher = IndexReference(self.reference_index, self.reference_table, self.reference_fingerprint)
        elif self._searcher is None:
            self._searcher = ReferenceSearch(self.vectors, self.ids, self.search, self.seed)
        if self.reference_index:
            self.ids = self._searcher.ids     # the reference table's, read when the index is opened
        return self._searcher

    def use_index(self, path: str) -> None:
        """Search the reference through the index ``path`` (a moved copy of the one the model was fitted with; its
        table is the one its sidecar names): UsageProblem for a model that holds its reference."""
        if not self.reference_index:
            raise UsageProblem("--reference-index serves models fitted with --reference-index",
                               "this model holds its reference: drop the option")
        self.reference_index, self.reference_table, self._searcher = path, None, None

    def neighbours(self, unit: np.ndarray, k: int):
        return self.searcher().topk(unit, k)

    def statistic(self, unit: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(raw statistic, row of the nearest reference, cosine distance to it) of unit-length rows."""
        from galtools.ood.density import gmm_log_density, iforest_anomaly_score, project

        top = self.neighbours(unit, self.k if self.method == "knn" else 1)
        nearest_row = top.indices[:, 0]
        # float32 rounding can put the similarity of identical vectors a hair above 1: distances start at 0
        nearest_distance = np.clip(1.0 - top.scores[:, 0].astype(np.float64), 0.0, 2.0)
        if self.method == "knn":
            raw = np.clip(1.0 - top.scores[:, self.k - 1].astype(np.float64), 0.0, None)
        elif self.method == "gmm":
            raw = -gmm_log_density(project(unit, self.density), self.density)
        else:
            raw = iforest_anomaly_score(project(unit, self.density), self.density)
        return raw, nearest_row, nearest_distance

    def percentile(self, raw: np.ndarray) -> np.ndarray:
        """Fraction of held-out reference rows strictly less strange than each value (0 = typical, 1 = stranger
        than every one of them)."""
        return np.searchsorted(self.calibration, raw, side="left") / len(self.calibration)

    def threshold(self, coverage: float) -> float:
        """The raw value below which an object is trusted at ``coverage``."""
        index = min(len(self.calibration) - 1, int(np.ceil(coverage * len(self.calibration))) - 1)
        return float(self.calibration[max(index, 0)])

    # -- files
    def save(self, path: str, overwrite: bool = False) -> dict:
        arrays = {"reference_vectors": self.vectors.astype(np.float32), "reference_ids": self.ids,
                  "calibration": self.calibration.astype(np.float64), **self.density}
        task = {"method": self.method, "k": self.k, "search": self.search, "seed": self.seed}
        if self.reference_index:
            task.update(reference_index=self.reference_index, reference_table=self.reference_table,
                        reference_fingerprint=self.reference_fingerprint)
        return save_head(path, arrays, tool=TOOL, kind=f"ood-{self.method}", embedding_dim=self.embedding_dim,
                         model_sha256=self.model_sha256, task=task, info={"seed": self.seed, **self.info},
                         overwrite=overwrite)

    @classmethod
    def from_head(cls, head: Head) -> "OodModel":
        method = head.kind.removeprefix("ood-")
        density = {name: value for name, value in head.arrays.items()
                   if name.startswith(("pca_", "gmm_", "iforest_"))}
        task = head.task
        return cls(method=method, vectors=head["reference_vectors"], ids=head["reference_ids"],
                   calibration=head["calibration"], k=int(task.get("k", 1)), search=task.get("search", "exact"),
                   density=density, model_sha256=head.model_sha256, info=head.info, seed=int(task.get("seed", 0)),
                   reference_index=task.get("reference_index"), reference_table=task.get("reference_table"),
                   reference_fingerprint=task.get("reference_fingerprint"))

    @classmethod
    def load(cls, path: str) -> "OodModel":
        return cls.from_head(load_head(path, TOOL, KINDS))


class ReferenceSearch:
    """Top-k cosine neighbours among the reference rows, with galtools.search: exact (blocked, numpy) or a FAISS
    index built from the stored reference (flat = exact, ivf/hnsw = approximate)."""

    def __init__(self, vectors: np.ndarray, ids: np.ndarray, kind: str, seed: int = 0):
        from galtools.search import tie_ranks

        if kind not in SEARCHES:
            raise UsageProblem(f"unknown --search {kind!r}", f"use one of {', '.join(SEARCHES)}")
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.tie_rank = tie_ranks(ids, len(ids))
        self.kind = kind
        self.index = None
        if kind != "exact":
            from galtools.search import FaissIndex

            self.index = FaissIndex.build(self.vectors, kind, normalized=True, seed=seed)

    def topk(self, unit: np.ndarray, k: int):
        from galtools.search import exact_topk

        if self.index is None:
            return exact_topk(unit, self.vectors, k, tie_rank=self.tie_rank, normalized=True)
        return self.index.search(unit, k, normalized=True, tie_rank=self.tie_rank)
