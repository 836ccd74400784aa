"""What gal-view shows: the embeddings (for search), their columns (for filters and captions), the 2-D map and
the cutouts, joined by object_id.

Search is the project's own: :func:`galtools.search.exact_topk` over the unit vectors, or a gal-knn FAISS index
(checked against the table like gal-knn checks it).  Neighbours are ordered as gal-knn orders them (best first, ties
by object_id), the query itself left out.  A filter restricts the candidates: exact search then runs over the
matching rows only; through an index it asks for more neighbours until enough of them match.
"""
from __future__ import annotations

import logging
import math
import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from galtools.errors import BadData, UsageProblem
from galtools.view.filters import Filter
from galtools.viz import MAX_CATEGORIES, category_colours, rank_categories

log = logging.getLogger("galtools")

MAX_K = 500
JS_SAFE_INTEGER = 2**53 - 1   # larger integers lose digits as JavaScript numbers (doubles): sent as text
MAX_QUERIES = 100
MAP_COLUMNS = ("map_x", "map_y")


class UnknownId(BadData):
    """An object_id the viewer was not given."""


def _json_value(value):
    """A cell as JSON can hold it: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > JS_SAFE_INTEGER:
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return None   # vectors and arrays are not shown
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


class Catalogue:
    """Everything one gal-view session serves.

    ``embeddings``: a :class:`galtools.search.table.EmbeddingSet` (from ``load_embeddings``); ``cutouts``: a
    :class:`galtools.view.images.CutoutReader`; ``map_table``: a pyarrow Table with object_id, map_x, map_y (from
    gal-map), or None for a PCA map computed here; ``index``: a loaded FaissIndex or None.
    """

    def __init__(self, embeddings, cutouts, map_table: pa.Table | None = None, index=None, label: str | None = None,
                 columns: tuple[str, ...] = ()):
        self.base = embeddings
        self.cutouts = cutouts
        self.index = index
        if index is not None:
            index.check_matches(embeddings_checksum=embeddings.checksum, model_sha256=embeddings.model_sha256,
                                count=embeddings.count, dim=embeddings.dim, name="the index")
        table = embeddings.carried.drop_columns([c for c in MAP_COLUMNS if c in embeddings.carried.column_names])
        self.label = label
        self.columns = tuple(columns)
        map_names = map_table.column_names if map_table is not None else []
        known = ["object_id"] + table.column_names + [c for c in map_names if c not in table.column_names
                                                       and c not in MAP_COLUMNS and c != "object_id"]
        for name in ((label,) if label else ()) + self.columns:
            if name not in known:
                raise BadData(f"no column {name!r} in the embeddings or the map", f"columns: {', '.join(known)}")
        self.xy, self.map_method, extra = self._map_of(map_table)
        for name in extra.column_names:
            if name not in table.column_names:
                table = table.append_column(name, extra.column(name))
        self.table = table.add_column(0, "object_id", embeddings.ids)
        self.integer_ids = pa.types.is_integer(embeddings.ids.type)
        self.id_values = embeddings.ids.to_pylist()
        # SDSS objids and the like do not fit a JavaScript number: such a table's ids are sent as JSON strings
        self.ids_as_text = self.integer_ids and bool(self.id_values) and \
            max(abs(min(self.id_values)), abs(max(self.id_values))) > JS_SAFE_INTEGER
        self._row_of = dict(zip(self.id_values[::-1], range(self.count - 1, -1, -1)))  # first of repeated ids wins
        self._index_lock = threading.Lock()   # a FAISS search sets parameters on the shared index
        self._image_rows = self._rows_in_cutouts(cutouts)
        missing = int((self._image_rows < 0).sum())
        if missing == self.count:
            raise BadData(f"none of the {self.count} object_ids of the embeddings is in {cutouts.name}",
                          "give the cutout table the embeddings were made from")
        if missing:
            log.warning(f"{missing} of {self.count} objects have no cutout in {cutouts.name}: they show no image")

    @property
    def count(self) -> int:
        return self.base.count

    def _rows_in_cutouts(self, cutouts) -> np.ndarray:
        """Row of each embedded object in the cutout table, -1 where it has none."""
        try:
            value_set = cutouts.ids.cast(self.base.ids.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise BadData(f"the object_ids of {cutouts.name} ({cutouts.ids.type}) are not those of the embeddings "
                          f"({self.base.ids.type})", "give the cutout table the embeddings were made from") from None
        rows = pc.index_in(self.base.ids, value_set=value_set)
        return pc.fill_null(rows, -1).to_numpy(zero_copy_only=False).astype(np.int64)

    # -- the map
    def _map_of(self, map_table):
        """(n, 2) coordinates row-aligned with the embeddings, how they were made, and the map's other columns."""
        if map_table is None:
            from galtools.maps.project import pca

            xy, info = pca(self.base.vectors)
            log.info("no --map: PCA of the embeddings, axes explain {:.1%} and {:.1%} of the variance".format(
                *info["explained_variance_ratio"]))
            return xy.astype(np.float32), "pca (computed by gal-view)", pa.table({})
        for needed in ("object_id",) + MAP_COLUMNS:
            if needed not in map_table.column_names:
                raise BadData(f"the map has no {needed!r} column (columns: {', '.join(map_table.column_names)})",
                              "give a table made by gal-map")
        map_ids = map_table.column("object_id").combine_chunks()
        try:
            rows = pc.index_in(self.base.ids, value_set=map_ids.cast(self.base.ids.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise BadData("the map's object_id column does not match the embeddings'", "give the map of these "
                          "embeddings (gal-map EMB -o MAP)") from None
        absent = rows.null_count
        if absent:
            first = self.base.ids[int(np.flatnonzero(rows.is_null().to_numpy(zero_copy_only=False))[0])].as_py()
            raise BadData(f"the map lacks {absent} of the {self.base.count} embedded objects (e.g. {first!r})",
                          "make the map from the same embeddings: gal-map EMB -o MAP")
        take = rows.to_numpy(zero_copy_only=False).astype(np.int64)
        xy = np.column_stack([map_table.column(c).to_numpy().astype(np.float32)[take] for c in MAP_COLUMNS])
        if not np.isfinite(xy).all():
            raise BadData("the map holds NaN or infinite coordinates", "remake it with gal-map")
        others = [c for c in map_table.column_names if c not in ("object_id",) + MAP_COLUMNS]
        extra = pa.table({c: map_table.column(c).take(pa.array(take)) for c in others})
        return xy, "gal-map", extra

    # -- filters
    def selection(self, expression: str | None) -> np.ndarray | None:
        """Boolean mask of the rows a filter keeps, or None for no filter."""
        if not expression or not expression.strip():
            return None
        return Filter(expression, self.table.schema).mask(self.table)

    def selected_ids(self, expression: str | None) -> list:
        mask = self.selection(expression)
        return self.id_values if mask is None else [self.id_values[i] for i in np.flatnonzero(mask)]

    # -- ids
    def json_id(self, value):
        """An object_id as the JSON answers carry it: a number, or text for integers beyond 2^53."""
        return str(value) if self.ids_as_text else value

    def parse_id(self, text):
        """The object_id for a request's text (numbers for integer ids); UnknownId when the viewer lacks it."""
        if self.integer_ids:
            try:
                value = int(str(text).strip())
            except ValueError:
                raise self._unknown(text) from None
        else:
            value = str(text).strip()
        return value

    def rows_of(self, texts) -> np.ndarray:
        """Rows of the requested ids (text, as typed; the first row of a repeated id); UnknownId naming the first
        the viewer lacks."""
        values = [self.parse_id(t) for t in texts]
        rows = [self._row_of.get(v) for v in values]
        if None in rows:
            raise self._unknown(values[rows.index(None)])
        return np.array(rows, dtype=np.int64)

    def _unknown(self, value) -> UnknownId:
        example = self.id_values[0] if self.id_values else None
        return UnknownId(f"object_id {value!r} is not among the {self.count} objects shown",
                         f"e.g. {example!r}; search for an id of the embedding table")

    # -- captions
    def describe(self, row: int) -> dict:
        shown = ([self.label] if self.label else []) + [c for c in self.columns if c != self.label]
        return {"id": self.json_id(self.id_values[row]),
                "label": _json_value(self.table.column(self.label)[row].as_py()) if self.label else None,
                "columns": {c: _json_value(self.table.column(c)[row].as_py()) for c in shown if c != self.label},
                "x": float(self.xy[row, 0]), "y": float(self.xy[row, 1]),
                "has_image": bool(self._image_rows[row] >= 0)}

    # -- search
    def search(self, texts, k: int = 10, least: bool = False, expression: str | None = None) -> list[dict]:
        """Neighbours of each query id, best (or least similar) first, as JSON-ready dicts."""
        if not 1 <= k <= MAX_K:
            raise UsageProblem(f"k={k} is out of range", f"ask for 1 to {MAX_K} neighbours")
        texts = [t for t in texts if str(t).strip()]
        if not texts:
            raise UsageProblem("no object_id to search for", "type one, or paste a list")
        if len(texts) > MAX_QUERIES:
            raise UsageProblem(f"{len(texts)} queries at once", f"search for at most {MAX_QUERIES}")
        rows = self.rows_of(texts)
        mask = self.selection(expression)
        indices, scores = self.neighbours(rows, k, least, mask)
        results = []
        for query_row, found, similarity in zip(rows, indices, scores):
            neighbours = []
            for rank, (row, score) in enumerate(((r, s) for r, s in zip(found, similarity) if r >= 0), start=1):
                neighbours.append({"rank": rank, "similarity": float(score), **self.describe(int(row))})
            results.append({"query": self.describe(int(query_row)), "neighbors": neighbours,
                            "least": bool(least), "filter": expression or None})
        return results

    def neighbours(self, rows: np.ndarray, k: int, least: bool, mask: np.ndarray | None):
        """(indices, scores) of shape (queries, <=k): base rows and similarities, -1 padding where fewer match."""
        from galtools.search import exact_topk

        largest = not least
        queries = np.ascontiguousarray(self.base.vectors[rows])
        if mask is None:
            k = min(k, self.count - 1)
            if k < 1:
                return np.full((len(rows), 0), -1, np.int64), np.zeros((len(rows), 0), np.float32)
            if self.index is not None:
                with self._index_lock:
                    found = self.index.search(queries, k, exclude=rows, largest=largest, normalized=True,
                                              tie_rank=self.base.tie_rank)
            else:
                found = exact_topk(queries, self.base.vectors, k, tie_rank=self.base.tie_rank, exclude=rows,
                                   largest=largest, normalized=True, check_base=False)
            return found.indices, found.scores
        chosen = np.flatnonzero(mask)
        if self.index is not None:
            return self._filtered_index_search(queries, rows, k, largest,
                                               lambda found: (found >= 0) & mask[np.maximum(found, 0)])
        position = np.full(self.count, -1, dtype=np.int64)
        position[chosen] = np.arange(len(chosen))
        exclude = position[rows]
        available = len(chosen) - int((exclude >= 0).any())
        k = min(k, available)
        if k < 1:
            return np.full((len(rows), 0), -1, np.int64), np.zeros((len(rows), 0), np.float32)
        found = exact_topk(queries, self.base.vectors[chosen], k, tie_rank=self.base.tie_rank[chosen],
                           exclude=exclude, largest=largest, normalized=True, check_base=False)
        indices = np.where(found.indices >= 0, chosen[np.maximum(found.indices, 0)], -1)
        return indices, found.scores

    def _filtered_index_search(self, queries, rows, k, largest, passes, most: int | None = None):
        """Through the index: ask for more neighbours until k of them pass the filter (``passes(rows)``: a boolean
        array) or all rows, or ``most`` of them, were asked."""
        most = self.count - 1 if most is None else min(most, self.count - 1)
        wanted = min(most, max(4 * k, 64))
        while True:
            with self._index_lock:
                found = self.index.search(queries, wanted, exclude=rows, largest=largest, normalized=True,
                                          tie_rank=self.base.tie_rank)
            keep = passes(found.indices)
            if keep.sum(axis=1).min() >= k or wanted >= most:
                break
            wanted = min(most, wanted * 4)
        indices = np.full((len(rows), k), -1, np.int64)
        scores = np.zeros((len(rows), k), np.float32)
        for i in range(len(rows)):
            picked = np.flatnonzero(keep[i])[:k]
            indices[i, :len(picked)] = found.indices[i, picked]
            scores[i, :len(picked)] = found.scores[i, picked]
        return indices, scores

    # -- the map's points
    def points(self, expression: str | None = None, colour: str | None = None) -> dict:
        """The map's points (all, or those the filter keeps) with the values of the colour column."""
        mask = self.selection(expression)
        rows = np.arange(self.count) if mask is None else np.flatnonzero(mask)
        result = {"total": self.count, "count": int(len(rows)), "method": self.map_method,
                  "ids": [self.json_id(self.id_values[i]) for i in rows],
                  "x": np.round(self.xy[rows, 0].astype(np.float64), 5).tolist(),
                  "y": np.round(self.xy[rows, 1].astype(np.float64), 5).tolist(),
                  "bounds": [float(self.xy[:, 0].min()), float(self.xy[:, 0].max()),
                             float(self.xy[:, 1].min()), float(self.xy[:, 1].max())]}
        if colour:
            if colour not in self.table.column_names:
                raise UsageProblem(f"no column {colour!r} to colour by", f"columns: {', '.join(self.colourable())}")
            result["colour"] = _colour_values(colour, self.table.column(colour).combine_chunks(), rows)
        return result

    def colourable(self) -> list[str]:
        return [f.name for f in self.table.schema
                if pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_boolean(f.type)
                or pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_dictionary(f.type)]

    def info(self) -> dict:
        return {"count": self.count, "dim": self.base.dim, "columns": self.table.column_names,
                "colourable": self.colourable(), "label": self.label, "shown": list(self.columns),
                "search": f"FAISS {self.index.kind} index" if self.index is not None else "exact",
                "map": self.map_method, "bands": self.cutouts.bands, "max_k": MAX_K,
                "example_id": self.json_id(self.id_values[0]) if self.id_values else None}


def _colour_values(name: str, column: pa.Array, rows: np.ndarray) -> dict:
    """The colours of ``rows``: numbers stay numbers (the page draws a colour ramp over the whole column's range),
    anything else becomes categories (a legend); both are fixed by the whole column, so a filter keeps colours."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        finite = values[np.isfinite(values)]
        if not (pa.types.is_integer(column.type) and len(np.unique(finite)) <= MAX_CATEGORIES):
            low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            return {"column": name, "kind": "number", "low": low, "high": high,
                    "values": [None if not np.isfinite(v) else round(float(v), 6) for v in values[rows]]}
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    index, names = rank_categories(column)   # ranked and coloured as gal-map --plot does
    return {"column": name, "kind": "category", "categories": names, "colours": category_colours(names),
            "values": index[rows].tolist()}
