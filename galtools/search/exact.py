"""Exact top-k similarity search in blocks with bounded memory.

The similarity matrix of Q queries against N base vectors is never held whole: base vectors are taken
``block_cols`` at a time, one matrix product gives a (queries x block) tile, and only the entries at least as
good as each query's current k-th best survive into a small merge.  After the first tile the per-query
threshold is high, so almost nothing survives and the cost is the matrix product itself.

Ordering (documented contract, also used by gal-ood):
  neighbours come best first; equal similarities are ordered by ``object_id`` ascending (numbers numerically,
  strings lexicographically), then by row number for repeated ids.  ``--least`` (``largest=False``) returns the
  least similar first, ties again by ``object_id`` ascending.

Exactness: the matrix products only pick candidates.  BLAS chooses its kernel (and so its rounding) by the shape
of the product and by the CPU, so a tile's similarities depend on how the rows were blocked.  Every entry within a
proven rounding bound of a query's current k-th best is therefore kept and re-scored on its own with a dot product
accumulated in float64 in a fixed order (dimension 0, 1, ..., D-1), then rounded once to float32.  The neighbours
and the similarities returned are functions of the (query, row) pair alone: the same whatever the query block,
the tile width, the shard of a Slurm array, the backend or the BLAS library.

Backends: numpy (BLAS matrix products) everywhere; torch on a CUDA GPU when torch imports and a GPU is usable
(galtools.search.gpu, the only module of the package that imports torch, imported only then).  The re-scoring,
the merge and the tie-breaking run in numpy in both cases, so both backends give the same neighbours and the same
similarities.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from galtools.device import cuda_available, parse_device, torch_device
from galtools.errors import BadData, UsageProblem
from galtools.io.tensor import check_finite, finite_rows

DEFAULT_BLOCK_BYTES = 128 * 2**20  # one similarity tile; the rest of the working memory is O(queries x k)
DEFAULT_QUERY_BLOCK = 2048         # queries per tile in all-rows search
GPU_WORTH_IT_FLOPS = 5e9           # below this much work, importing torch costs more than it saves
_NO_ROW = np.iinfo(np.int64).max   # tie key of an empty slot: sorts after every real row
_PAIR_CHUNK_VALUES = 2**21         # float64 values per chunk of the fixed-order sums (16 MB)
FLOAT32_UNIT = 2.0**-24            # unit roundoff of a float32 product or sum
NONFINITE_HINT = "drop or re-embed those rows"


def fixed_order_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum_d a[i, d] * b[i, d]`` for each row i, in float64, added in the order d = 0, 1, ..., D-1.

    The products of float32 values are exact in float64 and every addition is one IEEE operation in a fixed
    order, so the result for a row depends on that row's values alone: not on the other rows, the number of
    rows, their layout in memory or the BLAS library.
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    n, dim = a.shape
    out = np.zeros(n, dtype=np.float64)
    if dim == 0:
        return out
    chunk = max(1, _PAIR_CHUNK_VALUES // dim)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        products = np.multiply(a[start:stop].T, b[start:stop].T, dtype=np.float64)  # (D, rows): exact
        total = out[start:stop]
        for row in products:
            total += row
    return out


@dataclass(frozen=True)
class TopK:
    """Neighbours of each query: base row numbers and similarities, best first (``indices[i, 0]`` is the best)."""

    indices: np.ndarray  # (queries, k) int64 rows of the base; -1 where a backend found fewer than k
    scores: np.ndarray   # (queries, k) float32 similarities (cosine, or inner product for metric="ip")


def unit_rows(vectors: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Rows scaled to unit length (float32).  ``out=vectors`` normalises in place.

    The norm is accumulated in float64 in a fixed order (:func:`fixed_order_dots`), so the same row gives the
    same unit vector whether it is normalised alone, in a block or in the whole table.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.sqrt(fixed_order_dots(vectors, vectors)).astype(np.float32)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise BadData(f"{zero.size} embedding(s) are all zeros (first at row {int(zero[0])}); cosine similarity "
                      "is undefined for them", "drop those rows or re-embed them")
    return np.divide(vectors, norms[:, None], out=out)


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


def _candidates_numpy(tile: np.ndarray, threshold: np.ndarray, margin: np.ndarray, kth: int, first: bool):
    """(query, column, tile score) of the tile entries whose exact score may enter the running top-k.

    ``threshold``: each query's current k-th best exact score; ``margin``: a bound on |tile - exact| for that
    query.  An entry can enter only if its exact score reaches the final k-th best, which is at least
    ``threshold`` and at least (the tile's own (kth+1)-th best - margin), so its tile score is at least those
    minus one more margin.
    """
    max_candidates = max(tile.shape[0] * (kth + 1) * 4, tile.size // 64)
    floor = threshold - margin
    if first:  # nothing seen yet: start from this tile's own k-th best
        floor = np.maximum(floor, _kth_best_numpy(tile, kth) - 2 * margin)
    mask = tile >= floor[:, None]
    if not first and np.count_nonzero(mask) > max_candidates:  # heavy ties or a poor threshold: tighten it
        floor = np.maximum(floor, _kth_best_numpy(tile, kth) - 2 * margin)
        mask = tile >= floor[:, None]
    flat = np.flatnonzero(mask)  # much faster than 2-D np.nonzero on a large mask
    query, column = np.divmod(flat, tile.shape[1])
    return query, column


class _NumpyTiles:
    """Similarity tiles computed with numpy/BLAS."""

    name = "numpy"

    unit = FLOAT32_UNIT

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

    def candidates(self, tile, threshold, margin, kth, first):
        return _candidates_numpy(tile, threshold, margin, kth, first)


def choose_backend(device: str, work_flops: float) -> tuple[str, str]:
    """("numpy"|"torch", torch device) for ``device`` = auto | cpu | cuda[:N] | torch-cpu.

    auto uses a GPU only when torch is installed, a GPU is usable and the search is big enough for the
    import to pay off; cpu never imports torch; cuda without a usable GPU is DeviceUnavailable (exit 69).
    torch-cpu runs the torch code path on the CPU (used to test it without a GPU).
    """
    if device == "torch-cpu":
        return "torch", "cpu"
    spec = parse_device(device)
    if spec.kind == "cpu":
        return "numpy", "cpu"
    if spec.kind == "auto":
        if work_flops < GPU_WORTH_IT_FLOPS or not cuda_available():
            return "numpy", "cpu"
        return "torch", "cuda"
    return "torch", str(torch_device(spec))


def _tile_engine(base: np.ndarray, normalize_base: bool, device: str, work_flops: float):
    backend, torch_device = choose_backend(device, work_flops)
    if backend == "torch":
        from galtools.search.gpu import TorchTiles

        return TorchTiles(base, normalize_base, torch_device)
    return _NumpyTiles(base, normalize_base)


def _check_k(k: int, n_base: int, excluding: bool) -> None:
    if k < 1:
        raise UsageProblem(f"k must be at least 1, got {k}")
    check_candidates(k, n_base, excluding, "table")


def check_candidates(k: int, count: int, excluding: bool, holder: str) -> None:
    """BadData when the ``count`` rows of the table (or index: ``holder``) hold fewer than ``k`` candidate
    neighbors, the query itself left out when ``excluding``."""
    available = count - (1 if excluding else 0)
    if k <= available:
        return
    if available < 1:
        raise BadData(f"the {holder} holds no object other than the query ({count} row(s)), so none can be a "
                      "neighbor", "give a table of more objects")
    raise BadData(f"k={k} is larger than the {available} candidate neighbors in the {holder}",
                  f"use -k {max(available, 1)} or less")


def _max_norm(vectors: np.ndarray) -> float:
    """An upper bound of the rows' Euclidean norms (one pass, chunked so no float64 copy of the table is made)."""
    largest = 0.0
    chunk = max(1, _PAIR_CHUNK_VALUES // max(1, vectors.shape[1]))
    for start in range(0, vectors.shape[0], chunk):
        block = vectors[start:start + chunk]
        largest = max(largest, float(np.einsum("ij,ij->i", block, block, dtype=np.float64).max(initial=0.0)))
    return float(np.sqrt(largest)) * (1 + 1e-6)


class _PairScorer:
    """Exact scores of (query, base row) pairs: :func:`fixed_order_dots` rounded once to float32; for cosine on
    raw vectors the dot product is divided by the two norms in float64 first."""

    def __init__(self, base: np.ndarray, cosine: bool):
        self.base = base
        self.cosine = cosine

    def __call__(self, queries: np.ndarray, query: np.ndarray, row: np.ndarray) -> np.ndarray:
        scores = np.empty(query.size, dtype=np.float32)
        chunk = max(1, _PAIR_CHUNK_VALUES // max(1, self.base.shape[1]))
        for start in range(0, query.size, chunk):
            q = queries[query[start:start + chunk]]
            b = self.base[row[start:start + chunk]]
            dots = fixed_order_dots(q, b)
            if self.cosine:
                dots /= np.sqrt(fixed_order_dots(q, q) * fixed_order_dots(b, b))
            scores[start:start + chunk] = dots
        return scores


def _search_block(engine, scorer, raw_queries, tile_queries, k, tie_rank, exclude, largest, block_bytes,
                  base_norm) -> TopK:
    """Top-k of one block of queries against the whole base.

    ``tile_queries`` (unit rows for cosine, else raw) feed the matrix products; the kept pairs are re-scored
    exactly by ``scorer`` from ``raw_queries``.  ``base_norm`` bounds the norms of the base rows in the tiles.
    """
    n_queries = tile_queries.shape[0]
    n_base = engine.base.shape[0]
    dim = tile_queries.shape[1]
    excluding = exclude is not None
    kth = k if excluding else k - 1  # one spare place: the excluded row may sit in a tile's own top-k
    block_cols = max(kth + 2, min(n_base, block_bytes // (4 * n_queries)))
    first_cols = min(block_cols, max(4096, 8 * (kth + 1)))  # a small first tile sets the thresholds cheaply
    # |tile - exact| <= (D + 8) u |q| |b| covers any summation order of the product, the rounding of the unit
    # vectors and the final rounding of the exact score; twice that, for safety.
    query_norm = np.sqrt(np.einsum("ij,ij->i", tile_queries, tile_queries, dtype=np.float64)) * (1 + 1e-6)
    margin = (2.0 * (dim + 8) * engine.unit * query_norm * base_norm).astype(np.float32)
    signed = engine.prepare_queries(tile_queries if largest else -tile_queries)  # -q.b == -(q.b) exactly
    running = _RunningTopK(n_queries, k, tie_rank)
    first = True
    for start, tile in engine.tiles(signed, first_cols, block_cols):
        query, column = engine.candidates(tile, running.threshold(), margin, kth, first)
        query = query.astype(np.int64)
        row = column.astype(np.int64) + start
        if excluding:
            keep = row != exclude[query]
            query, row = query[keep], row[keep]
        score = scorer(raw_queries, query, row)
        running.merge(query, row, score if largest else -score)
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
    check_finite(finite_rows(queries), "query embedding(s) hold NaN or infinite values", hint=NONFINITE_HINT)
    if check_base:
        check_finite(finite_rows(base), "embedding(s) hold NaN or infinite values", hint=NONFINITE_HINT)
    if tie_rank is None:
        tie_rank = tie_ranks(base_ids, base.shape[0])
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64).reshape(queries.shape[0])
    normalize = metric == "cosine" and not normalized
    tile_queries = unit_rows(queries) if normalize else queries
    engine = _tile_engine(base, normalize, device, 2.0 * queries.shape[0] * base.size)
    scorer = _PairScorer(base, cosine=normalize)
    base_norm = 1 + 1e-6 if normalize else _max_norm(base)
    results = []
    query_block = max(1, min(queries.shape[0], DEFAULT_QUERY_BLOCK))
    for begin in range(0, queries.shape[0], query_block):
        end = begin + query_block
        results.append(_search_block(engine, scorer, queries[begin:end], tile_queries[begin:end], k, tie_rank,
                                     None if exclude is None else exclude[begin:end], largest, block_bytes,
                                     base_norm))
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
    table out with bounded memory.  A shard is just a slice: ``rows=range(start, stop)``; the result of a row
    does not depend on the slice or on ``query_block`` (see the module's note on exactness).
    """
    base = np.asarray(base, dtype=np.float32)
    rows = range(base.shape[0]) if rows is None else rows
    _check_k(k, base.shape[0], exclude_self)
    if tie_rank is None:
        tie_rank = tie_ranks(base_ids, base.shape[0])
    normalize = metric == "cosine" and not normalized
    if check_base:
        check_finite(finite_rows(base), "embedding(s) hold NaN or infinite values", hint=NONFINITE_HINT)
    engine = _tile_engine(base, normalize, device, 2.0 * len(rows) * base.size)
    scorer = _PairScorer(base, cosine=normalize)
    base_norm = 1 + 1e-6 if normalize else _max_norm(base)
    for begin in range(rows.start, rows.stop, query_block):
        block_rows = range(begin, min(rows.stop, begin + query_block))
        queries = base[block_rows.start:block_rows.stop]
        tile_queries = unit_rows(queries) if normalize else queries
        exclude = np.arange(block_rows.start, block_rows.stop, dtype=np.int64) if exclude_self else None
        yield block_rows, _search_block(engine, scorer, queries, tile_queries, k, tie_rank, exclude, largest,
                                        block_bytes, base_norm)
