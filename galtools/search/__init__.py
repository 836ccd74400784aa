"""Similarity search over embeddings: exact blocked search and FAISS indexes (gal-knn, gal-ood).

Exact search (:func:`exact_topk`, :func:`all_rows_topk`) needs only numpy, with torch on a GPU when present;
:class:`FaissIndex` needs faiss-cpu (extra ``knn``).  All functions return :class:`TopK` (base row numbers and
similarities, best first, ties by object_id).

gal-knn's work, each a module: ``queries`` (the embedding table, the query plan, search in blocks), ``neighbors``
(the neighbor table written to a sink), ``show`` (the table on a terminal), ``montage`` and ``precision``
(precision@k of a label column). None imports torch or galtools.cli.
"""
from galtools.search.exact import (TopK, all_rows_topk, check_finite, choose_backend, exact_topk, tie_ranks,
                                   unit_rows)
from galtools.search.faiss_index import KINDS, FaissIndex, default_nlist, recall_at_k, sidecar_path

__all__ = ["TopK", "exact_topk", "all_rows_topk", "unit_rows", "check_finite", "tie_ranks", "choose_backend",
           "FaissIndex", "KINDS", "recall_at_k", "default_nlist", "sidecar_path"]
