"""gal-view's discovery loop: marks written to a labels file at once, and the ranking of 'gal-ood rank' refreshed.

Each mark is appended to the labels file (object_id, label, time) by :func:`galtools.ood.labels.append_label`
before the request is answered: the whole new file is written beside the old one, fsync'ed and renamed over it,
so a server killed at any moment leaves every answered mark on disk.  The file is read again for every ranking,
so labels a script appends meanwhile count too.  The isolation-forest prior does not depend on the labels: it is
computed once, on the first ranking.
"""
from __future__ import annotations

import os
import threading

import numpy as np

from galtools.errors import OutputError
from galtools.ood.labels import append_label, parse_label, read_labels, rows_in
from galtools.ood.rank import KnnGraph, RankSettings, prior_scores, rank_vectors

MAX_PROPOSED = 100


class Labelling:
    """The labels file of one gal-view session over ``catalogue``."""

    def __init__(self, path: str, catalogue, seed: int = 0):
        self.path = path
        self.catalogue = catalogue
        self.settings = RankSettings(seed=seed)
        self._prior = None
        self._graph = None
        self._lock = threading.Lock()
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise OutputError(f"--labels {path}: no folder {folder}", "create it, or give another path")
        if os.path.exists(path):
            self.current()          # refuse a bad labels file at the start, not at the first click

    def current(self):
        """(rows of the positives, rows of the negatives, {row: label}) from the file as it is now."""
        if not os.path.exists(self.path):
            return np.empty(0, np.int64), np.empty(0, np.int64), {}
        labels = read_labels(self.path)
        rows = rows_in(labels, self.catalogue.base.ids, "the embeddings shown")
        return rows[labels.values], rows[~labels.values], dict(zip(rows.tolist(), labels.values.tolist()))

    def mark(self, id_text, label_text) -> dict:
        """Write one mark (after checking the id and the label); the counts of labels afterwards."""
        row = int(self.catalogue.rows_of([id_text])[0])
        label = parse_label(label_text, "the mark")
        append_label(self.path, self.catalogue.id_values[row], label)
        positives, negatives, _ = self.current()
        return {"id": self.catalogue.json_id(self.catalogue.id_values[row]), "label": label,
                "positives": int(len(positives)), "negatives": int(len(negatives))}

    def prior(self) -> np.ndarray:
        with self._lock:
            if self._prior is None:
                self._prior = prior_scores(self.catalogue.base.vectors, self.settings)
            return self._prior

    def graph(self) -> KnnGraph | None:
        """The kNN graph of label spreading, built at the first ranking and kept (it does not depend on the
        labels); None where rank_vectors builds its own (more objects than it covers whole)."""
        vectors = self.catalogue.base.vectors
        if not self.settings.graph_share or len(vectors) > self.settings.graph_rows:
            return None
        with self._lock:
            if self._graph is None:
                self._graph = KnnGraph.build(vectors, np.arange(len(vectors)), self.settings.neighbours)
            return self._graph

    def ranking(self, count: int = 20) -> dict:
        """The next ``count`` objects to label (the acquisition rule of 'gal-ood rank'); with no positive yet,
        the most unusual ones (the prior)."""
        count = max(1, min(int(count), MAX_PROPOSED))
        positives, negatives, marks = self.current()
        method = "auto" if len(positives) else "prior"
        settings = RankSettings(**{**self.settings.__dict__, "method": method, "propose": count})
        ranking = rank_vectors(self.catalogue.base.vectors, positives, negatives, settings, prior=self.prior(),
                               graph=self.graph() if method == "auto" else None)
        proposed = []
        for order, row in enumerate(ranking.proposed.tolist(), start=1):
            item = {**self.catalogue.describe(row), "proposed": order, "score": float(ranking.score[row])}
            if ranking.nearest_positive is not None:
                item["nearest_positive_id"] = self.catalogue.json_id(
                    self.catalogue.id_values[int(ranking.nearest_positive[row])])
                item["nearest_positive_similarity"] = float(ranking.similarity[row])
            proposed.append(item)
        return {"labels": os.path.basename(self.path), "method": method, "positives": int(len(positives)),
                "negatives": int(len(negatives)), "proposed": proposed,
                "marks": {str(self.catalogue.json_id(self.catalogue.id_values[r])): ("yes" if v else "no")
                          for r, v in marks.items()}}
