"""precision@k of a label column: the fraction of a query's k nearest neighbors that share its label.

Per class (the queries with that label) and overall (every labelled query: micro average; and the mean of the
classes: macro average). A neighbor that is missing (fewer than k rows) or unlabelled counts as a miss; queries
without a label are counted apart and left out. Hits and query counts are reported so that shards add up.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from galtools.errors import UsageProblem


class PrecisionAtK:
    """Accumulates precision@k over searched blocks (``add(block)``); ``result()`` is a JSON-ready dict."""

    def __init__(self, base, label: str, k: int):
        if label not in base.carried.column_names:
            raise UsageProblem(f"--label {label}: not a column of the embedding table",
                               f"choose among {', '.join(base.carried.column_names) or 'none: it carries no columns'}")
        column = base.carried_column(label)
        if pa.types.is_floating(column.type):
            raise UsageProblem(f"--label {label} holds floats, not classes", "give a column of class labels")
        encoded = pc.dictionary_encode(column.cast(pa.string()) if not pa.types.is_dictionary(column.type)
                                       else column.dictionary_decode().cast(pa.string()))
        self.classes = encoded.dictionary.to_pylist()
        self.codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        self.label, self.k = label, k
        self.hits = np.zeros(len(self.classes), dtype=np.int64)
        self.queries = np.zeros(len(self.classes), dtype=np.int64)
        self.unlabelled = 0

    def add(self, block) -> None:
        if block.rows is None:
            raise UsageProblem("precision@k needs queries from the embedding table", "use --all, --query or --queries")
        query = self.codes[block.rows]
        indices = block.topk.indices[:, : self.k]
        neighbor = np.where(indices >= 0, self.codes[np.maximum(indices, 0)], -1)
        labelled = query >= 0
        self.unlabelled += int((~labelled).sum())
        hits = (neighbor[labelled] == query[labelled, None]).sum(axis=1)
        np.add.at(self.hits, query[labelled], hits)
        np.add.at(self.queries, query[labelled], 1)

    def result(self) -> dict:
        classes = {}
        for name, hits, count in zip(self.classes, self.hits.tolist(), self.queries.tolist()):
            if count:
                classes[name] = {"queries": count, "hits": hits, "precision": hits / (count * self.k)}
        total_queries, total_hits = int(self.queries.sum()), int(self.hits.sum())
        return {
            "k": self.k, "label": self.label, "queries": total_queries, "hits": total_hits,
            "unlabelled_queries": self.unlabelled,
            "precision": total_hits / (total_queries * self.k) if total_queries else None,
            "macro_precision": (float(np.mean([c["precision"] for c in classes.values()])) if classes else None),
            "classes": classes,
        }
