"""Exact top-k similarity search in blocks with bounded memory.

The similarity matrix of Q queries against N base vectors is never held whole: base vectors are taken
``block_cols`` at a time, one matrix product gives a (queries x block) tile, and only the entries at least as
good as each query's current k-th best survive into a small merge.  After the first tile the per-query
threshold is high, so almost nothing survives and the cost is the matrix product itself.

Ordering (documented contract, also used by gal-ood):
  neighbours come best first; equal similarities are ordered by ``object_id`` ascending (numbers numerically,
  strings lexicographically), then by row number for repeated ids.  ``--least`` (``largest=False``) returns the
  least similar first, ties again by ``object_id`` ascending.

Backends: numpy (BLAS matrix products) everywhere; torch on a CUDA GPU when torch imports and a GPU is usable.
The merge and the tie-breaking run in numpy in both cases, so both backends give the same neighbours.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from galtools.errors import BadData, DeviceUnavailable, UsageProblem

DEFAULT_BLOCK_BYTES = 128 * 2**20  # one similarity tile; the rest of the working memory is O(queries x k)
DEFAULT_QUERY_BLOCK = 2048         # queries per tile in all-rows search
GPU_WORTH_IT_FLOPS = 5e9           # below this much work, importing torch costs more than it saves
_NO_ROW = np.iinfo(np.int64).max   # tie key of an empty slot: sorts after every real row


@dataclass(frozen=True)
class TopK:
    """Neighbours of each query: base row numbers and similarities, best first (``indices[i, 0]`` is the best)."""

    indices: np.ndarray  # (queries, k) int64 rows of the base; -1 where a backend found fewer than k
    scores: np.ndarray   # (queries, k) float32 similarities (cosine, or inner product for metric="ip")


def unit_rows(vectors: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Rows scaled to unit length (float32).  ``out=vectors`` normalises in place.

    The norm is accumulated in float64 so it does not depend on how the rows are laid out in memory: the
    same row gives the same unit vector whether it is normalised alone, in a block or in the whole table.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)).astype(np.float32)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise BadData(f"{zero.size} embedding(s) are all zeros (first at row {int(zero[0])}); cosine similarity "
                      "is undefined for them", "drop those rows or re-embed them")
    return np.divide(vectors, norms[:, None], out=out)


def check_finite(vectors: np.ndarray, what: str = "embeddings") -> None:
    """BadData naming the first bad row when any value is NaN or infinite."""
    bad_rows = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if bad_rows.size:
        raise BadData(f"{what} hold NaN or infinite values in {bad_rows.size} row(s) (first at row {int(bad_rows[0])})",
                      "drop or re-embed those rows")


def tie_ranks(ids: Sequence | np.ndarray | None, n: int) -> np.ndarray:
    """Position of each row in the order (object_id, row): the tie-break key of every search here."""
    if ids is None:
        return np.arange(n, dtype=np.int64)
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        if isinstance(ids, (pa.Array, pa.ChunkedArray)):
            order = pc.sort_indices(ids).to_numpy()  # stable: equal ids keep row order
        else:
            order = np.argsort(np.asarray(ids), kind="stable")
    except ImportError:  # pragma: no cover - pyarrow is a core dependency
        order = np.argsort(np.asarray(ids), kind="stable")
    if len(order) != n:
        raise UsageProblem(f"{len(order)} ids for {n} vectors")
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(n, dtype=np.int64)
    return ranks


class _RunningTopK:
    """The best k (score, row) pairs seen so far for each query, ties ordered by tie rank."""

    def __init__(self, n_queries: int, k: int, tie_rank: np.ndarray):
        self.k = k
        self.tie_rank = tie_rank
        self.scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
        self.rows = np.full((n_queries, k), -1, dtype=np.int64)
        self.keys = np.full((n_queries, k), _NO_ROW, dtype=np.int64)
        self.query_of_slot = np.repeat(np.arange(n_queries, dtype=np.int64), k)

    def threshold(self) -> np.ndarray:
        """Score a candidate must reach (>=, so ties can still win on object_id) to enter each query's list."""
        return self.scores[:, -1]

    def merge(self, query: np.ndarray, row: np.ndarray, score: np.ndarray) -> None:
        n_queries, k = self.scores.shape
        all_query = np.concatenate([self.query_of_slot, query])
        all_score = np.concatenate([self.scores.ravel(), score.astype(np.float32, copy=False)])
        all_row = np.concatenate([self.rows.ravel(), row])
        all_key = np.concatenate([self.keys.ravel(), self.tie_rank[row]])
        order = np.lexsort((all_key, -all_score, all_query))  # by query, then best score, then object_id
        per_query = k + np.bincount(query, minlength=n_queries)
        first_of_query = np.cumsum(per_query) - per_query
        place_in_query = np.arange(all_query.size) - np.repeat(first_of_query, per_query)
        kept = order[place_in_query < k]  # exactly k per query, in query order
        self.scores = all_score[kept].reshape(n_queries, k)
        self.rows = all_row[kept].reshape(n_queries, k)
        self.keys = all_key[kept].reshape(n_queries, k)


def _kth_best_numpy(tile: np.ndarray, kth: int) -> np.ndarray:
    """The (kth+1)-th largest value of each row of ``tile`` (-inf when the row is shorter)."""
    width = tile.shape[1]
    if width <= kth:
        return np.full(tile.shape[0], -np.inf, dtype=np.float32)
    return np.partition(tile, width - 1 - kth, axis=1)[:, width - 1 - kth]


def _candidates_numpy(tile: np.ndarray, threshold: np.ndarray, kth: int, first: bool):
    """(query, column, score) of the tile entries that may enter the running top-k."""
    max_candidates = max(tile.shape[0] * (kth + 1) * 4, tile.size // 64)
    if first:  # nothing seen yet: start from this tile's own k-th best
        threshold = np.maximum(threshold, _kth_best_numpy(tile, kth))
    mask = tile >= threshold[:, None]
    if not first and np.count_nonzero(mask) > max_candidates:  # heavy ties or a poor threshold: tighten it
        threshold = np.maximum(threshold, _kth_best_numpy(tile, kth))
        mask = tile >= threshold[:, None]
    flat = np.flatnonzero(mask)  # much faster than 2-D np.nonzero on a large mask
    query, column = np.divmod(flat, tile.shape[1])
    return query, column, tile.ravel()[flat]


class _NumpyTiles:
    """Similarity tiles computed with numpy/BLAS."""

    name = "numpy"

    def __init__(self, base: np.ndarray, normalize_base: bool):
        self.base = base
        self.normalize_base = normalize_base

    def prepare_queries(self, queries: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(queries, dtype=np.float32)

    def tiles(self, queries: np.ndarray, first_cols: int, block_cols: int):
        n_queries, n_base = queries.shape[0], self.base.shape[0]
        tile_memory = np.empty(n_queries * max(first_cols, block_cols), dtype=np.float32)
        start, width = 0, first_cols
        while start < n_base:
            stop = min(n_base, start + width)
            block = self.base[start:stop]
            if self.normalize_base:
                block = unit_rows(block)
            tile = tile_memory[: n_queries * (stop - start)].reshape(n_queries, stop - start)
            np.matmul(queries, block.T, out=tile)
            yield start, tile
            start, width = stop, block_cols

    def candidates(self, tile, threshold, kth, first):
        return _candidates_numpy(tile, threshold, kth, first)


class _TorchTiles:
    """Similarity tiles on a CUDA GPU; candidates come back to the host for the numpy merge."""

    name = "torch"

    def __init__(self, base: np.ndarray, normalize_base: bool, device: str):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.base = base
        self.normalize_base = normalize_base
        self.resident = None
        if self.device.type == "cuda":
            free_bytes, _ = torch.cuda.mem_get_info(self.device)
            if base.nbytes < free_bytes // 2:  # keep the whole base on the GPU when it fits comfortably
                self.resident = self._upload(base)
        else:
            self.resident = self._upload(base)

    def _upload(self, block: np.ndarray):
        tensor = self.torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(self.device)
        if self.normalize_base:
            # same float64 norm as unit_rows, so a row gives the same unit vector on either backend
            norms = self.torch.sqrt((tensor.double() ** 2).sum(dim=1)).float()
            if bool((norms == 0).any()):
                unit_rows(block)  # raises the BadData naming the zero rows
            tensor = tensor / norms[:, None]
        return tensor

    def prepare_queries(self, queries: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device)

    def tiles(self, queries, first_cols: int, block_cols: int):
        n_base = self.base.shape[0]
        start, width = 0, first_cols
        while start < n_base:
            stop = min(n_base, start + width)
            block = self.resident[start:stop] if self.resident is not None else self._upload(self.base[start:stop])
            yield start, queries @ block.T
            start, width = stop, block_cols

    def candidates(self, tile, threshold, kth, first):
        torch = self.torch
        threshold = torch.from_numpy(threshold).to(self.device)
        if first and tile.shape[1] > kth:
            threshold = torch.maximum(threshold, torch.topk(tile, kth + 1, dim=1).values[:, -1])
        mask = tile >= threshold[:, None]
        max_candidates = max(tile.shape[0] * (kth + 1) * 4, tile.numel() // 64)
        if not first and int(mask.sum()) > max_candidates and tile.shape[1] > kth:
            threshold = torch.maximum(threshold, torch.topk(tile, kth + 1, dim=1).values[:, -1])
            mask = tile >= threshold[:, None]
        query, column = mask.nonzero(as_tuple=True)
        score = tile[query, column]
        return query.cpu().numpy(), column.cpu().numpy(), score.cpu().numpy()


def choose_backend(device: str, work_flops: float) -> tuple[str, str]:
    """("numpy"|"torch", torch device) for ``device`` = auto | cpu | cuda[:N] | torch-cpu.

    auto uses a GPU only when torch is installed, a GPU is usable and the search is big enough for the
    import to pay off; cpu never imports torch; cuda without a usable GPU is DeviceUnavailable (exit 69).
    torch-cpu runs the torch code path on the CPU (used to test it without a GPU).
    """
    if device == "cpu":
        return "numpy", "cpu"
    if device == "torch-cpu":
        return "torch", "cpu"
    if device == "auto":
        if work_flops < GPU_WORTH_IT_FLOPS or importlib.util.find_spec("torch") is None:
            return "numpy", "cpu"
        import torch
        return ("torch", "cuda") if torch.cuda.is_available() else ("numpy", "cpu")
    if device.startswith("cuda"):
        if importlib.util.find_spec("torch") is None:
            raise DeviceUnavailable(f"--device {device} needs torch, which is not installed",
                                    "install galtools[train] or use --device cpu")
        import torch
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"--device {device}: no usable CUDA GPU", "use --device cpu or auto")
        return "torch", device
    raise UsageProblem(f"unknown device {device!r}", "use auto, cpu or cuda[:N]")


def _tile_engine(base: np.ndarray, normalize_base: bool, device: str, work_flops: float):
    backend, torch_device = choose_backend(device, work_flops)
    if backend == "torch":
        return _TorchTiles(base, normalize_base, torch_device)
    return _NumpyTiles(base, normalize_base)


def _check_k(k: int, n_base: int, excluding: bool) -> None:
    available = n_base - (1 if excluding else 0)
    if k < 1:
        raise UsageProblem(f"k must be at least 1, got {k}")
    if k > available:
        if available < 1:
            raise BadData(f"the table holds no object other than the query ({n_base} row(s)), so none can be a "
                          "neighbour", "give a table of more objects")
        raise BadData(f"k={k} is larger than the {available} candidate neighbours in the table",
                      f"use -k {max(available, 1)} or less")


def _search_block(engine, queries, k, tie_rank, exclude, largest, block_bytes) -> TopK:
    """Top-k of one block of queries against the whole base."""
    n_queries = queries.shape[0]
    n_base = engine.base.shape[0]
    excluding = exclude is not None
    kth = k if excluding else k - 1  # one spare place: the excluded row may sit in a tile's own top-k
    block_cols = max(kth + 2, min(n_base, block_bytes // (4 * n_queries)))
    first_cols = min(block_cols, max(4096, 8 * (kth + 1)))  # a small first tile sets the thresholds cheaply
    signed = engine.prepare_queries(queries if largest else -queries)  # -q.b == -(q.b) exactly
    running = _RunningTopK(n_queries, k, tie_rank)
    first = True
    for start, tile in engine.tiles(signed, first_cols, block_cols):
        query, column, score = engine.candidates(tile, running.threshold(), kth, first)
        row = column.astype(np.int64) + start
        if excluding:
            keep = row != exclude[query]
            query, row, score = query[keep], row[keep], score[keep]
        running.merge(query.astype(np.int64), row, score)
        first = False
    scores = running.scores if largest else -running.scores
    return TopK(indices=running.rows, scores=np.ascontiguousarray(scores, dtype=np.float32))


def exact_topk(queries: np.ndarray, base: np.ndarray, k: int, *, base_ids=None, tie_rank: np.ndarray | None = None,
               exclude: np.ndarray | None = None, largest: bool = True, metric: str = "cosine",
               normalized: bool = False, block_bytes: int = DEFAULT_BLOCK_BYTES, device: str = "cpu",
               check_base: bool = True) -> TopK:
    """Exact top-k neighbours of each query among the rows of ``base``.

    queries: (Q, D), base: (N, D) float32.  metric "cosine" normalises rows (unless ``normalized`` says they
    already have unit length); "ip" uses raw inner products.  ``base_ids`` (or a precomputed ``tie_rank`` from
    :func:`tie_ranks`) orders ties by object_id.  ``exclude[i]`` is a base row never returned for query i (the
    query itself; -1 for none).  ``largest=False`` returns the least similar.  Memory: the base plus one
    ``block_bytes`` tile plus O(Q x k).  ``check_base=False`` skips the NaN scan of the base (one pass over
    it) for callers that validated it once already, as gal-knn does when it loads a table.
    """
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    base = np.asarray(base, dtype=np.float32)
    if queries.shape[1] != base.shape[1]:
        raise BadData(f"query dimension {queries.shape[1]} differs from the embeddings' {base.shape[1]}",
                      "embed the query with the same model as the table")
    if metric not in ("cosine", "ip"):
        raise UsageProblem(f"unknown metric {metric!r}", "use cosine or ip")
    _check_k(k, base.shape[0], exclude is not None)
    check_finite(queries, "query embeddings")
    if check_base:
        check_finite(base, "embeddings")
    if tie_rank is None:
        tie_rank = tie_ranks(base_ids, base.shape[0])
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64).reshape(queries.shape[0])
    normalize = metric == "cosine" and not normalized
    if normalize:
        queries = unit_rows(queries)
    engine = _tile_engine(base, normalize, device, 2.0 * queries.shape[0] * base.size)
    results = []
    query_block = max(1, min(queries.shape[0], DEFAULT_QUERY_BLOCK))
    for begin in range(0, queries.shape[0], query_block):
        end = begin + query_block
        results.append(_search_block(engine, queries[begin:end], k, tie_rank,
                                     None if exclude is None else exclude[begin:end], largest, block_bytes))
    if len(results) == 1:
        return results[0]
    return TopK(np.concatenate([r.indices for r in results]), np.concatenate([r.scores for r in results]))


def all_rows_topk(base: np.ndarray, k: int, *, rows: range | None = None, base_ids=None,
                  tie_rank: np.ndarray | None = None, largest: bool = True, metric: str = "cosine",
                  normalized: bool = False, query_block: int = DEFAULT_QUERY_BLOCK,
                  block_bytes: int = DEFAULT_BLOCK_BYTES, device: str = "cpu",
                  exclude_self: bool = True, check_base: bool = True) -> Iterator[tuple[range, TopK]]:
    """Top-k of every row in ``rows`` (default: all) against the whole base, each row excluding itself
    (unless ``exclude_self=False``).

    Yields ``(rows_of_block, TopK)`` per block of ``query_block`` rows so callers can stream the neighbour
    table out with bounded memory.  A shard is just a slice: ``rows=range(start, stop)``.
    """
    base = np.asarray(base, dtype=np.float32)
    rows = range(base.shape[0]) if rows is None else rows
    _check_k(k, base.shape[0], exclude_self)
    if tie_rank is None:
        tie_rank = tie_ranks(base_ids, base.shape[0])
    normalize = metric == "cosine" and not normalized
    if check_base:
        check_finite(base, "embeddings")
    engine = _tile_engine(base, normalize, device, 2.0 * len(rows) * base.size)
    for begin in range(rows.start, rows.stop, query_block):
        block_rows = range(begin, min(rows.stop, begin + query_block))
        queries = base[block_rows.start:block_rows.stop]
        if normalize:
            queries = unit_rows(queries)
        exclude = np.arange(block_rows.start, block_rows.stop, dtype=np.int64) if exclude_self else None
        yield block_rows, _search_block(engine, queries, k, tie_rank, exclude, largest, block_bytes)
