"""FAISS indexes (extra ``knn``): flat, IVF and HNSW over unit vectors with inner product = cosine similarity.

An index file ``X.faiss`` always travels with a JSON sidecar ``X.faiss.json`` that records what it was built
from (checksum of the embeddings and ids, the model's sha256, dimension, row count), the metric and the build
parameters.  Loading checks the sidecar against the table being searched: an index built from other or older
embeddings is refused with BadData (exit 65) instead of returning neighbors of the wrong rows.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

from galtools.errors import BadData, GalError, InputMissing, OutputError, UsageProblem
from galtools.search.exact import TopK, exact_topk, tie_ranks, unit_rows

KINDS = ("flat", "ivf", "hnsw")
SIDECAR_FORMAT = "galtools.faiss-index/1"


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise UsageProblem("FAISS indexes need faiss-cpu", "pip install 'galtools[knn]'") from exc
    return faiss


def sidecar_path(index_path: str | os.PathLike) -> Path:
    return Path(f"{index_path}.json")


def default_index_path(emb: str) -> str:
    """Where gal-knn index writes by default: the embedding table's path with .faiss instead of its extension."""
    from galtools.errors import UsageProblem

    if emb == "-" or any(ch in emb for ch in "*?["):
        raise UsageProblem("with EMB from stdin or a glob, name the index", "pass -o FILE.faiss")
    stem = emb.rstrip("/")
    for suffix in (".parquet", ".pq", ".arrow", ".feather", ".arrows", ".fits.gz", ".fits", ".fit"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return stem + ".faiss"


def params_text(index) -> str:
    """The index's search parameters as printed after a recall measure (", nlist=..., nprobe=...")."""
    params = index.params
    if index.kind == "ivf":
        return f", nlist={params['nlist']}, nprobe={params['nprobe']}"
    if index.kind == "hnsw":
        return f", M={params['M']}, ef={params['ef_search']}"
    return ""


def default_nlist(n_rows: int) -> int:
    """About 4 sqrt(N) lists, and at least 39 training points per list (FAISS's own minimum)."""
    return int(max(1, min(4 * round(math.sqrt(n_rows)), n_rows // 39)))


def _atomic_write_bytes(path: Path, write, overwrite: bool) -> None:
    from galtools.io import atomic_file

    if path.exists() and not overwrite:
        raise GalError(f"{path} already exists", "pass --overwrite to replace it")
    if not path.parent.exists():
        raise OutputError(f"cannot write {path}: folder {path.parent} does not exist", "create it first")
    with atomic_file(str(path)) as temporary:
        write(Path(temporary))


class FaissIndex:
    """A FAISS index over unit embeddings plus the sidecar that says what it indexes."""

    def __init__(self, index, meta: dict):
        self.index = index
        self.meta = meta

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def params(self) -> dict:
        return self.meta["params"]

    @classmethod
    def build(cls, vectors: np.ndarray, kind: str = "flat", *, normalized: bool = False, nlist: int | None = None,
              nprobe: int | None = None, hnsw_m: int = 32, ef_construction: int = 200, ef_search: int = 128,
              seed: int = 0, train_size: int | None = None) -> "FaissIndex":
        """Index the rows of ``vectors`` (row i gets label i).  Cosine similarity: rows are normalised first."""
        faiss = _faiss()
        if kind not in KINDS:
            raise UsageProblem(f"unknown index kind {kind!r}", f"use one of {', '.join(KINDS)}")
        unit = np.ascontiguousarray(vectors if normalized else unit_rows(vectors), dtype=np.float32)
        n_rows, dim = unit.shape
        params: dict = {}
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "ivf":
            nlist = nlist or default_nlist(n_rows)
            if nlist > n_rows:
                raise BadData(f"--nlist {nlist} is more than the {n_rows} rows to index", "use a smaller --nlist")
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            train_size = min(n_rows, train_size or 256 * nlist)
            sample = np.random.default_rng(seed).choice(n_rows, train_size, replace=False)
            index.train(unit[np.sort(sample)])
            nprobe = nprobe or min(nlist, max(8, nlist // 16))
            index.nprobe = nprobe
            params = {"nlist": nlist, "nprobe": nprobe, "train_size": int(train_size), "seed": seed}
        else:
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = ef_search
            params = {"M": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search}
        index.add(unit)
        meta = {"format": SIDECAR_FORMAT, "kind": kind, "metric": "cosine", "dim": dim, "count": n_rows,
                "params": params}
        return cls(index, meta)

    def save(self, path: str | os.PathLike, *, embeddings_checksum: str, model_sha256: str | None,
             source: str | None = None, extra: dict | None = None, overwrite: bool = False) -> None:
        """Write ``path`` and its sidecar, each atomically; the sidecar is written last."""
        faiss = _faiss()
        import galtools

        path = Path(path)
        meta = dict(self.meta, embeddings_checksum=embeddings_checksum, model_sha256=model_sha256,
                    source=source, galtools_version=galtools.__version__,
                    created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {}))
        sidecar = sidecar_path(path)
        if sidecar.exists() and not overwrite:
            raise GalError(f"{sidecar} already exists", "pass --overwrite to replace it")
        _atomic_write_bytes(path, lambda tmp: faiss.write_index(self.index, str(tmp)), overwrite)
        _atomic_write_bytes(sidecar, lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"), True)
        self.meta = meta

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FaissIndex":
        faiss = _faiss()
        path = Path(path)
        sidecar = sidecar_path(path)
        if not path.exists():
            raise InputMissing(f"index {path} not found", "build it with: gal-knn index EMB -o " + str(path))
        if not sidecar.exists():
            raise BadData(f"index {path} has no sidecar {sidecar.name}, so it cannot be checked against the table",
                          "rebuild it with gal-knn index")
        try:
            meta = json.loads(sidecar.read_text())
        except json.JSONDecodeError as exc:
            raise BadData(f"sidecar {sidecar} is not valid JSON ({exc.msg})", "rebuild the index") from exc
        if meta.get("format") != SIDECAR_FORMAT:
            raise BadData(f"sidecar {sidecar} is not a galtools index sidecar", "rebuild the index")
        index = faiss.read_index(str(path))
        if index.ntotal != meta["count"] or index.d != meta["dim"]:
            raise BadData(f"index {path} holds {index.ntotal} x {index.d} vectors but its sidecar says "
                          f"{meta['count']} x {meta['dim']}", "rebuild the index")
        return cls(index, meta)

    def check_matches(self, *, embeddings_checksum: str, model_sha256: str | None, count: int, dim: int,
                      name: str = "the index") -> None:
        """BadData (exit 65) unless this index was built from exactly these embeddings."""
        hint = "rebuild it: gal-knn index EMB --kind {} -o INDEX --overwrite".format(self.kind)
        if self.meta["dim"] != dim:
            raise BadData(f"{name} has dimension {self.meta['dim']} but the embeddings have {dim}", hint)
        if (self.meta.get("model_sha256") or None) != (model_sha256 or None):
            raise BadData(f"{name} was built from embeddings of another model "
                          f"({str(self.meta.get('model_sha256'))[:12]} vs {str(model_sha256)[:12]})", hint)
        if self.meta["count"] != count or self.meta["embeddings_checksum"] != embeddings_checksum:
            raise BadData(f"{name} is stale: it was built from {self.meta['count']} embeddings with checksum "
                          f"{self.meta['embeddings_checksum'][:12]}, the table has {count} with checksum "
                          f"{embeddings_checksum[:12]}", hint)

    def search(self, queries: np.ndarray, k: int, *, exclude: np.ndarray | None = None, largest: bool = True,
               normalized: bool = False, nprobe: int | None = None, ef: int | None = None,
               tie_rank: np.ndarray | None = None) -> TopK:
        """Approximate (exact for flat) top-k.  Rows FAISS could not fill are -1 with score -inf.

        Within the returned list ties are ordered by ``tie_rank`` (object_id order); which of several tied rows
        make the cut at the k-th place is FAISS's choice.  ``largest=False`` searches with the negated query,
        whose nearest unit vectors are exactly the least similar ones.
        """
        signed, wanted = signed_queries(queries, k, self.meta, exclude, normalized, largest)
        self._set_search_params(nprobe, ef, wanted)
        scores, rows = self.index.search(signed, wanted)
        rows, scores = finish_results(rows, scores, exclude, k, largest)
        if tie_rank is not None:
            rows, scores = _order_ties(rows, scores, tie_rank, largest)
        return TopK(indices=rows.astype(np.int64), scores=scores)

    def vectors(self, rows) -> np.ndarray:
        """The stored unit vectors of ``rows`` (all three kinds keep them uncompressed): the queries of a search
        by object_id without holding the table's vectors a second time."""
        faiss = _faiss()
        rows = np.asarray(rows, dtype=np.int64)
        if self.kind == "ivf":
            ivf = faiss.extract_index_ivf(self.index)
            if ivf.direct_map.type == faiss.DirectMap.NoMap:
                ivf.make_direct_map()  # row -> (list, offset): 8 bytes per vector
        if len(rows) == 0:
            return np.empty((0, self.meta["dim"]), dtype=np.float32)
        return np.ascontiguousarray(self.index.reconstruct_batch(rows), dtype=np.float32)

    def _set_search_params(self, nprobe: int | None, ef: int | None, wanted: int) -> None:
        faiss = _faiss()
        if self.kind == "ivf":
            ivf = faiss.extract_index_ivf(self.index)
            ivf.nprobe = min(nprobe or self.params["nprobe"], ivf.nlist)
        elif self.kind == "hnsw":
            self.index.hnsw.efSearch = max(ef or self.params["ef_search"], wanted)


def signed_queries(queries, k: int, meta: dict, exclude, normalized: bool, largest: bool):
    """Checked unit queries (negated for the least similar: their nearest unit vectors are the least similar ones)
    and how many results to ask the index for (one more when the query's own row is to be dropped)."""
    from galtools.search.exact import check_candidates

    check_candidates(k, meta["count"], exclude is not None, "index")
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if queries.shape[1] != meta["dim"]:
        raise BadData(f"query dimension {queries.shape[1]} differs from the index's {meta['dim']}",
                      "embed the query with the same model as the table")
    unit = queries if normalized else unit_rows(queries)
    return np.ascontiguousarray(unit if largest else -unit), k + (1 if exclude is not None else 0)


def finish_results(rows, scores, exclude, k: int, largest: bool):
    """k results per query from the index's: the excluded row dropped, the sign undone, missing rows at -inf."""
    if exclude is not None:
        rows, scores = _drop_excluded(rows, scores, np.asarray(exclude, dtype=np.int64), k)
    if not largest:
        scores = -scores
    return rows, np.where(rows >= 0, scores, -np.inf if largest else np.inf).astype(np.float32)


def _drop_excluded(rows: np.ndarray, scores: np.ndarray, exclude: np.ndarray, k: int):
    """From k+1 results per query drop the excluded row, or the last one when the excluded row is absent."""
    drop = rows == exclude[:, None]
    first_drop = np.argmax(drop, axis=1)
    has_drop = drop.any(axis=1)
    drop_at = np.where(has_drop, first_drop, rows.shape[1] - 1)
    keep = np.ones_like(drop)
    keep[np.arange(rows.shape[0]), drop_at] = False
    return rows[keep].reshape(-1, k), scores[keep].reshape(-1, k)


def _order_ties(rows: np.ndarray, scores: np.ndarray, tie_rank: np.ndarray, largest: bool):
    keys = np.where(rows >= 0, tie_rank[np.maximum(rows, 0)], np.iinfo(np.int64).max)
    primary = -scores if largest else scores
    order = np.lexsort((keys, primary), axis=1)
    return np.take_along_axis(rows, order, 1), np.take_along_axis(scores, order, 1)


def recall_at_k(index: FaissIndex, base: np.ndarray, k: int = 10, *, sample: int = 1000, seed: int = 0,
                normalized: bool = False, nprobe: int | None = None, ef: int | None = None,
                tie_rank: np.ndarray | None = None) -> float:
    """Mean fraction of the exact top-k (self excluded) that the index returns, over ``sample`` random rows."""
    unit = base if normalized else unit_rows(base)
    n_rows = unit.shape[0]
    rows = np.sort(np.random.default_rng(seed).choice(n_rows, min(sample, n_rows), replace=False))
    if tie_rank is None:
        tie_rank = tie_ranks(None, n_rows)
    exact = exact_topk(unit[rows], unit, k, exclude=rows, normalized=True, tie_rank=tie_rank)
    approx = index.search(unit[rows], k, exclude=rows, normalized=True, nprobe=nprobe, ef=ef)
    hits = [np.intersect1d(e, a[a >= 0]).size for e, a in zip(exact.indices, approx.indices)]
    return float(np.sum(hits)) / (len(rows) * k)
