"""gal-view over a survey too large to hold: search through a compressed gal-knn index, captions and pictures read
by row, the map (and its filters, colours and selections) over a random sample.

    base, index = load_for_index("survey-emb.parquet", "survey.faiss")      # ids in memory, the rest on disk
    catalogue = SurveyCatalogue(base, index, SurveyCutoutReader(cutouts), label="morph_class", sample=100_000)

Any object of the survey can be searched for, and its neighbors come from the whole survey (the index); their
captions (--label, --columns) and pictures are read by row, and their place on the map is the sample's PCA applied
to their vectors. A filter on the search reads the columns it names for the candidates only, asking the index for
more of them (at most MOST_FILTERED) until k pass. The map shows the sample, whose columns are in memory.
Memory: the ids (8 bytes a row) twice (the table's, and sorted for look-ups), the cutouts' ids likewise, the sample.
"""
from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from galtools.view.catalogue import JS_SAFE_INTEGER, Catalogue, UnknownId, _json_value

DEFAULT_SAMPLE = 100_000
MOST_FILTERED = 4096        # candidates a filtered search reads at most per query
DESCRIBED = 4096            # captions kept


class SurveyCatalogue(Catalogue):
    """A :class:`Catalogue` whose search runs over every row of a survey through a compressed index (``base`` from
    ``galtools.search.queries.load_for_index``) and whose map, filters and selections are those of a sample."""

    def __init__(self, base, index, cutouts, label: str | None = None, columns: tuple[str, ...] = (),
                 sample: int = DEFAULT_SAMPLE, seed: int = 0):
        from galtools.io.lookup import take_rows
        from galtools.maps.project import pca
        from galtools.search.table import EmbeddingSet
        from galtools.view.images import SortedIds

        self.base, self.index, self.cutouts = base, index, cutouts
        rows = np.sort(np.random.default_rng(seed).choice(base.count, min(sample, base.count), replace=False))
        vectors = index.vectors(rows)
        xy, info = pca(vectors)
        self._mean, self._axes = vectors.mean(axis=0, dtype=np.float64), info["components"]
        ids = base.ids.take(pa.array(rows))
        carried = take_rows(base.table, rows, base.carried.column_names)
        shown = EmbeddingSet(name=base.name, ids=ids, vectors=vectors, carried=carried, metadata=base.metadata,
                             dim=base.dim)
        self.sample = Catalogue(shown, cutouts, pa.table({"object_id": ids, "map_x": xy[:, 0], "map_y": xy[:, 1]}),
                                None, label, columns)
        self.label, self.columns = label, tuple(columns)
        self.table, self.xy, self.id_values = self.sample.table, self.sample.xy, self.sample.id_values
        self.map_method = f"pca of a {len(rows)}-object sample (computed by gal-view)"
        self.sample.map_method = self.map_method
        self.integer_ids = pa.types.is_integer(base.ids.type)
        low, high = (pc.min_max(base.ids)[name].as_py() for name in ("min", "max"))
        self.ids_as_text = self.integer_ids and base.count > 0 and max(abs(low), abs(high)) > JS_SAFE_INTEGER
        self._row_of = SortedIds(base.ids)            # for Catalogue.rows_of: every object of the survey
        self._index_lock = threading.Lock()
        self._described: dict[int, dict] = {}
        self._describing = threading.Lock()

    # -- the map, filters and selections: the sample's
    def points(self, expression: str | None = None, colour: str | None = None) -> dict:
        return self.sample.points(expression, colour)

    def selected_ids(self, expression: str | None) -> list:
        return self.sample.selected_ids(expression)

    def colourable(self) -> list[str]:
        return self.sample.colourable()

    def selection(self, expression: str | None):
        """The parsed filter of a search (applied to the candidates as they are read), or None."""
        from galtools.view.filters import Filter

        if not expression or not expression.strip():
            return None
        return Filter(expression, self.sample.table.schema)

    def info(self) -> dict:
        return {**super().info(), "search": f"FAISS {self.index.kind} index (compressed; the survey read by row)",
                "sample": len(self.sample.id_values)}

    # -- ids (rows_of is the Catalogue's, over the sorted ids)
    def _unknown(self, value) -> UnknownId:
        example = self.base.ids[0].as_py() if self.base.count else None
        return UnknownId(f"object_id {value!r} is not among the {self.count} objects of the survey",
                         f"e.g. {example!r}; search for an id of the embedding table")

    # -- search
    def neighbours(self, rows: np.ndarray, k: int, least: bool, selected):
        k = min(k, self.count - 1)
        queries = self.index.vectors(rows)
        if selected is None:
            with self._index_lock:
                found = self.index.search(queries, k, exclude=rows, largest=not least, normalized=True)
            indices, scores = found.indices, found.scores
        else:
            indices, scores = self._filtered_index_search(queries, rows, k, not least,
                                                          lambda candidates: self._passes(selected, candidates),
                                                          most=MOST_FILTERED)
        self._describe_rows(np.concatenate([rows, indices[indices >= 0]]))
        return indices, scores

    def _passes(self, selected, candidates: np.ndarray) -> np.ndarray:
        """Whether each candidate row passes the filter: the columns it names read by row for those rows."""
        from galtools.io.lookup import take_rows
        from galtools.view.filters import columns_of

        wanted = np.unique(candidates[candidates >= 0])
        names = sorted(columns_of(selected.tree) - {"object_id"})
        table = take_rows(self.base.table, wanted, names)
        table = table.add_column(0, "object_id", self.base.ids.take(pa.array(wanted)))
        keep = np.asarray(selected.mask(table), dtype=bool)
        at = np.searchsorted(wanted, np.maximum(candidates, 0))
        return (candidates >= 0) & keep[np.minimum(at, len(wanted) - 1)] if len(wanted) else candidates >= 0

    # -- captions, read by row
    def describe(self, row: int) -> dict:
        with self._describing:
            known = self._described.get(row)
        return known if known is not None else self._describe_rows(np.array([row]))[0]

    def _describe_rows(self, rows: np.ndarray) -> list[dict]:
        from galtools.io.lookup import take_rows

        shown = ([self.label] if self.label else []) + [c for c in self.columns if c != self.label]
        table = take_rows(self.base.table, rows, shown)
        xy = (self.index.vectors(rows).astype(np.float64) - self._mean) @ self._axes.T
        ids = self.base.ids.take(pa.array(rows)).to_pylist()
        described = []
        for i, row in enumerate(rows):
            cells = {c: _json_value(table.column(c)[i].as_py()) for c in shown}
            described.append({"id": self.json_id(ids[i]), "label": cells.pop(self.label) if self.label else None,
                              "columns": cells, "x": float(xy[i, 0]), "y": float(xy[i, 1]),
                              "has_image": self.cutouts.row_of(ids[i]) is not None})
        with self._describing:
            if len(self._described) > DESCRIBED:
                self._described.clear()
            self._described.update(zip((int(r) for r in rows), described))
        return described
