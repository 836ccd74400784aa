"""Compressed FAISS indexes for survey-sized tables: IVF-PQ and IVF-SQ8 codes plus a float16 refine file.

    index = build_scale(table, "ivfpq")                    # one process: train on a sample, add every row
    build_scale(table, "ivfpq", "emb.faiss")               # emb.faiss + .json + .refine.npy + .ids.npy

    trained = train_scale(table, "ivfpq"); trained.save_trained("trained.faiss")     # the sharded build:
    add_part(table, "trained.faiss", Shard(3, 16))      # one per Slurm task: trained.part-03-of-16.faiss
    merge_parts("trained.faiss", ["trained.part-00-of-16.faiss", ...], "emb.faiss")                          # lists merged on disk

The codes live in the FAISS file (memory-mapped when searched; after a merge, in FILE.faiss.ivfdata); the exact
vectors in a separate ``.npy`` file, rows in table order, memory-mapped and read only for the few hundred candidates
each query re-scores (``refine``), and for the vectors of queries given by id. Each of its records is the row's
coarse list (int32) and the row's unit vector less that list's centroid in float16 (see :func:`add_rows`).

The codes are searched by L2 distance between unit vectors, which orders as cosine (|q - x|^2 = 2 - 2 q.x):
FAISS's product quantiser encodes x - c as r', and the error of |q - c - r'|^2 shrinks with the distance from q
to x, where the error of the inner product q.(c + r') does not; on embeddings whose neighbors are close
(1 - cos ~ 0.002) inner-product codes gave recall@10 of 0.12 where L2 codes give 0.8 from the same bytes. FAISS ids
are the table's row numbers. The sidecar (JSON, as for every gal-knn index) records a fingerprint of the table
(its row count, ids and the vectors of rows spread over it) so that a search of another table is refused (65)
without reading the table's vectors. Beside them, ``.ids.npy`` holds the ids sorted with their rows: a query by id
finds its row by binary search (:class:`IdLookup`) and the stale check reads only the sampled rows
(``sample_fingerprint``), so a query reads no column of the table whole; an index without it reads the id column.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa

from galtools.errors import BadData, GalError, InputMissing, OutputError, UsageProblem
from galtools.io.files import atomic_file, is_no_space, mount_point, write_failure
from galtools.io.meta import MODEL_SHA256
from galtools.search.exact import TopK, unit_rows

log = logging.getLogger("galtools")

SCALE_KINDS = ("ivfpq", "ivfsq8")
PART_FORMAT = "galtools.faiss-part/2"
TRAINED_FORMAT = "galtools.faiss-trained/2"
SCALE_VERSION = 2          # L2 codes + (list, float16 residual) refine records; 1 (inner-product codes) is refused
DEFAULT_REFINE = {"ivfpq": 200, "ivfsq8": 50}  # candidates re-scored from the float16 vectors (0: none)
FINGERPRINT_ROWS = 16                          # rows whose vectors the fingerprint reads: each costs a row group
RESCORE_ROWS = 65536                           # candidate vectors gathered at a time (32 MiB as float32)
ADD_BLOCK = 65536                              # rows encoded (and written to the refine file) at a time
PREAD_ROWS = 4096          # refine records read with pread (not through the memory map) up to this many at a time
PRECOMPUTE_QUERIES = 256   # IVF-PQ's precomputed tables (nlist x M x 256 floats: 0.4 GB at 10^7 rows) are made for
                           # a search of at least this many queries (or by inverted list), not for a few


def refine_path(index_path) -> Path:
    return Path(f"{index_path}.refine.npy")


def ids_path(index_path) -> Path:
    return Path(f"{index_path}.ids.npy")


def ivfdata_path(index_path) -> Path:
    return Path(f"{index_path}.ivfdata")


def is_scale_sidecar(meta: dict) -> bool:
    return meta.get("kind") in SCALE_KINDS


def rss_mib() -> float:
    """Resident memory now (MiB), from /proc where there is one, else the peak."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def memory_text() -> str:
    """'RSS 16508 MiB (2084 MiB anonymous, ...)': a memory-mapped index, refine file or table counts its pages read
    into the RSS, though the kernel drops them when it needs room; the anonymous part is what the process holds."""
    text = f"RSS {rss_mib():.0f} MiB"
    try:
        with open("/proc/self/status") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
        anonymous = int(fields["RssAnon"].split()[0]) / 1024
    except (OSError, KeyError, ValueError, IndexError):
        return text
    return f"{text} ({anonymous:.0f} MiB anonymous, the rest pages of memory-mapped files)"


def factory_string(kind: str, nlist: int, dim: int, pq_m: int | None) -> str:
    if kind == "ivfsq8":
        return f"IVF{nlist},SQ8"
    m = pq_m or max(1, dim // 4)
    if dim % m:
        raise UsageProblem(f"--pq {m} does not divide the dimension {dim}", f"choose a divisor of {dim}, e.g. {dim // 4}")
    return f"IVF{nlist},PQ{m}"


# ------------------------------------------------------------------------------------------ the table, by row

def _embedding_rows(table, rows) -> np.ndarray:
    from galtools.io import vectors_of
    from galtools.io.lookup import take_rows
    from galtools.search.table import EMBEDDING

    taken = take_rows(table, rows, [EMBEDDING])
    return np.asarray(vectors_of(taken.combine_chunks().to_batches()[0], EMBEDDING), dtype=np.float32) \
        if taken.num_rows else np.empty((0, table.schema.field(EMBEDDING).type.list_size), np.float32)


def table_fingerprint(table, ids: pa.Array) -> str:
    """sha256 of the ids and of the embeddings of FINGERPRINT_ROWS rows spread evenly over the table: ties an index
    to its table without reading every vector (a re-embedded table, other rows or another order all change it)."""
    from galtools.search.table import _Checksum

    count = len(ids)
    rows = np.unique(np.linspace(0, count - 1, min(FINGERPRINT_ROWS, count)).astype(np.int64))
    hasher = _Checksum()
    hasher.add(_embedding_rows(table, rows), ids)
    return hasher.hexdigest()


def sample_fingerprint(table) -> str:
    """sha256 of the row count and of the ids and embeddings of FINGERPRINT_ROWS rows spread over the table: the
    stale-table check of an index with an id file, which never reads a whole column."""
    from galtools.io.lookup import take_rows
    from galtools.io import vectors_of
    from galtools.search.table import EMBEDDING, OBJECT_ID, _Checksum

    count = table.total_rows
    rows = np.unique(np.linspace(0, count - 1, min(FINGERPRINT_ROWS, count)).astype(np.int64))
    taken = take_rows(table, rows, [OBJECT_ID, EMBEDDING]).combine_chunks()
    hasher = _Checksum()
    hasher.add(np.asarray(vectors_of(taken.to_batches()[0], EMBEDDING), dtype=np.float32),
               taken.column(OBJECT_ID).combine_chunks())
    hasher.add(np.empty((0, 1), np.float32), pa.array([count], pa.int64()))
    return hasher.hexdigest()


def read_ids_column(table) -> pa.Array:
    from galtools.search.table import OBJECT_ID

    if OBJECT_ID not in table.schema.names:
        raise BadData(f"{table.name} has no '{OBJECT_ID}' column", "give an embedding table made by gal-embed")
    ids = table.read_all(columns=[OBJECT_ID]).column(OBJECT_ID).combine_chunks()
    if ids.null_count:
        raise BadData(f"{table.name}: object_id has null values", "every row needs an object_id")
    return ids


def _check_embedding_table(table):
    from galtools.io.provenance import check_single_model
    from galtools.search.table import EMBEDDING, OBJECT_ID

    for needed in (OBJECT_ID, EMBEDDING):
        if needed not in table.schema.names:
            raise BadData(f"{table.name} has no '{needed}' column (columns: {', '.join(table.schema.names)})",
                          "give an embedding table made by gal-embed")
    if not pa.types.is_fixed_size_list(table.schema.field(EMBEDDING).type):
        raise BadData(f"{table.name}: column 'embedding' is not a fixed-size vector", "give a table made by gal-embed")
    if table.total_rows is None:
        raise UsageProblem("a compressed index needs a table file, not a stream", "write the embeddings to a file first")
    check_single_model(table)
    return table.schema.field(EMBEDDING).type.list_size


def _unit_checked(block: np.ndarray, first_row: int, name: str) -> np.ndarray:
    bad = np.flatnonzero(~np.isfinite(block).all(axis=1) | ~block.any(axis=1))
    if bad.size:
        raise BadData(f"{name}: the embedding of row {first_row + int(bad[0])} is all zeros or not finite",
                      "re-embed those objects or drop them")
    return unit_rows(block)


# ------------------------------------------------------------------------------------------------ the id file

ID_LOOKUP_FORMAT = "galtools.id-lookup/1"


def _id_keys(ids: pa.Array, width: int | None = None) -> np.ndarray:
    """Ids as sortable numpy keys: int64, or UTF-8 bytes of a fixed width (``width``, else the longest)."""
    if pa.types.is_integer(ids.type):
        return ids.cast(pa.int64()).to_numpy(zero_copy_only=False)
    encoded = [str(v).encode() for v in ids.to_pylist()]
    width = width or max([len(e) for e in encoded] + [1])
    return np.array(encoded, dtype=f"S{width}")


def write_id_lookup(path, ids: pa.Array) -> dict:
    """OUT.ids.npy: the table's ids sorted, each with its row, so that a query finds its row by binary search of a
    memory-mapped file (a few pages) instead of reading the id column. Returns the sidecar's entry for it."""
    keys = _id_keys(ids)
    order = np.argsort(keys, kind="stable")
    records = np.empty(len(keys), dtype=[("id", keys.dtype), ("row", "<i8")])
    records["id"], records["row"] = keys[order], order
    del keys, order

    def write(tmp):
        with open(tmp, "wb") as handle:
            np.save(handle, records)
    _atomic(path, write)
    return {"format": ID_LOOKUP_FORMAT, "file": Path(path).name, "count": len(records)}


class IdLookup:
    """The sorted id file of an index, memory-mapped: rows of ids by binary search."""

    def __init__(self, path, count: int, index_path):
        self.path, self.index_path = str(path), index_path
        self.records = np.load(self.path, mmap_mode="r")
        _read_randomly(self.records)
        names = self.records.dtype.names or ()
        if names != ("id", "row") or self.records.shape != (count,):
            raise self._foreign(f"does not hold the {count} (id, row) records of the index")

    def _foreign(self, what: str) -> BadData:
        return BadData(f"id file {self.path} of index {self.index_path} {what}",
                       f"rebuild the index, or delete {Path(self.path).name} and its 'id_lookup' entry in the "
                       f"sidecar (queries then read the table's ids)")

    def rows_of(self, wanted: pa.Array) -> np.ndarray:
        """The row of each id (-1: not in the table): a vectorised binary search, ~log2(N) reads per id."""
        keys = self.records["id"]
        if pa.types.is_integer(wanted.type) != (keys.dtype.kind == "i"):
            raise self._foreign(f"holds {keys.dtype} ids, the table {wanted.type}")
        if keys.dtype.kind == "i":
            query = _id_keys(wanted)
            fits = np.ones(len(query), bool)
        else:
            encoded = [str(v).encode() for v in wanted.to_pylist()]
            fits = np.array([len(e) <= keys.dtype.itemsize for e in encoded], bool)
            query = np.array([e if f else b"" for e, f in zip(encoded, fits)], dtype=keys.dtype)
        lo, hi = np.zeros(len(query), np.int64), np.full(len(query), len(keys), np.int64)
        while (lo < hi).any():
            active = lo < hi
            mid = (lo + hi) // 2
            below = np.zeros(len(query), bool)
            below[active] = keys[mid[active]] < query[active]
            lo = np.where(active & below, mid + 1, lo)
            hi = np.where(active & ~below, mid, hi)
        inside = lo < len(keys)
        found = np.zeros(len(query), bool)
        found[inside] = keys[lo[inside]] == query[inside]
        found &= fits
        rows = np.full(len(query), -1, np.int64)
        rows[found] = self.records["row"][lo[found]]
        return rows

    def check_found(self, wanted: pa.Array, at_rows: pa.Array) -> None:
        """The table's ids at the rows found must be those asked for: else the id file is another table's."""
        if not wanted.equals(at_rows.cast(wanted.type)):
            raise self._foreign("is not of this table (its rows hold other ids)")


# ---------------------------------------------------------------------------------------------------- training

def default_train_size(nlist: int, n_rows: int) -> int:
    """At least 39 points per list (FAISS's minimum) and 39 x 256 for the PQ codebooks, at most the table."""
    return int(min(n_rows, max(40 * nlist, 40 * 256)))


class Trained:
    """A trained, empty IVF index (coarse quantiser and codebooks) and what it was trained on."""

    def __init__(self, index, meta: dict, ids: pa.Array | None = None):
        self.index, self.meta, self.ids = index, meta, ids

    def save_trained(self, path, overwrite: bool = False) -> None:
        import faiss

        _refuse_existing([path, f"{path}.json", refine_path(path), ids_path(path)], overwrite)
        self.meta["build_id"] = uuid.uuid4().hex
        _atomic(path, lambda tmp: faiss.write_index(self.index, tmp))
        self.meta["trained_sha256"] = file_sha256(path)
        count, dim = self.meta["count"], self.meta["dim"]
        _atomic(refine_path(path), lambda tmp: _empty_npy(tmp, count, dim))   # filled by the add stage, by row
        self.meta["id_lookup"] = write_id_lookup(ids_path(path), self.ids)     # the merged index's too
        _write_json(f"{path}.json", self.meta)


def train_scale(table, kind: str, *, nlist: int | None = None, nprobe: int | None = None, pq_m: int | None = None,
                train_size: int | None = None, refine: int | None = None, seed: int = 0) -> Trained:
    """Train the coarse quantiser and the codes of ``kind`` on a random sample of the table's rows."""
    import faiss

    from galtools.search.faiss_index import default_nlist

    if kind not in SCALE_KINDS:
        raise UsageProblem(f"unknown compressed kind {kind!r}", f"use one of {', '.join(SCALE_KINDS)}")
    dim = _check_embedding_table(table)
    ids = read_ids_column(table)
    _check_unique(ids, table.name)
    count = len(ids)
    nlist = nlist or default_nlist(count)
    if nlist > count:
        raise BadData(f"--nlist {nlist} is more than the {count} rows to index", "use a smaller --nlist")
    factory = factory_string(kind, nlist, dim, pq_m)
    train_size = min(count, train_size or default_train_size(nlist, count))
    sample = np.sort(np.random.default_rng(seed).choice(count, train_size, replace=False))
    vectors = _unit_checked(_embedding_rows(table, sample), 0, table.name)
    index = faiss.index_factory(dim, factory, faiss.METRIC_L2)     # L2 of unit vectors: cosine's order
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = seed
    if kind == "ivfpq":   # polysemous codes serve Hamming filtering, which gal-knn does not use: training them
        faiss.downcast_index(ivf).do_polysemous_training = False   # would take 10x longer
    started = time.perf_counter()
    index.train(vectors)
    log.debug(f"trained {factory} on {train_size} rows in {time.perf_counter() - started:.1f} s, {memory_text()}")
    nprobe = min(nlist, nprobe or default_nprobe(nlist))   # a --nprobe above nlist is recorded as nlist, as before
    refine = DEFAULT_REFINE[kind] if refine is None else refine
    meta = {"format": TRAINED_FORMAT, "kind": kind, "metric": "cosine", "scale_version": SCALE_VERSION,
            "dim": dim, "count": count,
            "params": {"factory": factory, "nlist": nlist, "nprobe": nprobe, "train_size": int(train_size),
                       "seed": seed, "refine": refine},
            "fingerprint": table_fingerprint(table, ids), "sample_fingerprint": sample_fingerprint(table),
            "model_sha256": table.metadata.get(MODEL_SHA256), "id_type": str(ids.type)}
    return Trained(index, meta, ids)


def default_nprobe(nlist: int) -> int:
    """Lists a query visits unless told: max(16, nlist/128), at most nlist. Measured (docs/search.md): recall@10
    0.996 at nlist 1,024 (16 lists) and at 4,096 (32 lists; 64 gave 0.997 in 1.5 times the time)."""
    return min(nlist, max(16, nlist // 128))


def refine_dtype(dim: int) -> np.dtype:
    """A refine record: the row's coarse list and its unit vector less that list's centroid, in float16."""
    return np.dtype([("list", "<i4"), ("residual", "<f2", (dim,))])


def centroids_of(index) -> np.ndarray:
    """The coarse centroids (nlist x dim, float32) of an IVF index."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


def _check_unique(ids: pa.Array, name: str) -> None:
    """Repeated object_ids are refused (65). Integer ids are checked by sorting a copy (8 bytes a row; Arrow's
    value_counts took 90 bytes a row, 9 GB at 10^8 rows); others, and the message, by check_unique_ids."""
    from galtools.io import check_unique_ids

    if pa.types.is_integer(ids.type):
        values = np.sort(ids.to_numpy(zero_copy_only=False))
        if not (values[1:] == values[:-1]).any():
            return
    check_unique_ids(ids, name)


def add_rows(index, table, start: int, stop: int, refine_out: np.ndarray | None) -> None:
    """Encode rows [start, stop) of the table into ``index`` (ids = row numbers), writing their refine records to
    ``refine_out`` (indexed by row) on the way: each row's list and its unit vector less the list's centroid.

    The rows are assigned to their lists once (FAISS's own assignment, given to ``add_preassigned``). float16 keeps
    11 bits of each component: of the vector itself that rounds away the differences that order close neighbors
    (recall@10 0.94 at 10^6 rows), of what is left after the centroid (|x - c| ~ 0.1) it keeps them (0.997; float32
    0.999), and q.x = q.c + q.(x - c) with c exact."""
    import faiss
    from faiss.contrib.ivf_tools import add_preassigned

    from galtools.io import vectors_of
    from galtools.search.table import EMBEDDING

    ivf = faiss.extract_index_ivf(index)
    centroids = centroids_of(index)
    row = start
    for batch in _iter_rows(table, start, stop):
        block = _unit_checked(np.asarray(vectors_of(batch, EMBEDDING), dtype=np.float32), row, table.name)
        lists = ivf.quantizer.assign(block, 1)[:, 0]
        ids = np.arange(row, row + len(block), dtype=np.int64)   # held here: add_preassigned keeps only a pointer
        add_preassigned(ivf, block, np.ascontiguousarray(lists), ids)
        if refine_out is not None:
            refine_out["list"][row: row + len(block)] = lists
            refine_out["residual"][row: row + len(block)] = (block - centroids[lists]).astype(np.float16)
        row += len(block)
    if row != stop:
        raise BadData(f"{table.name}: read {row - start} rows where {stop - start} were expected",
                      "the table changed while it was read")


def _iter_rows(table, start, stop):
    from galtools.search.table import EMBEDDING

    offset = 0
    for part in table.parts:
        lo, hi = max(start - offset, 0), min(stop - offset, part.num_rows)
        if lo < hi:
            yield from part.iter_range(lo, hi, ADD_BLOCK, [EMBEDDING])
        offset += part.num_rows


# ------------------------------------------------------------------------------------------- one-process build

def build_scale(table, kind: str, out_path, *, overwrite: bool = False, source: str | None = None, **train) -> dict:
    """Train on a sample and add every row in this process; writes OUT, OUT.json and OUT.refine.npy (atomically,
    the sidecar last). Returns the sidecar."""
    import faiss

    _refuse_existing([out_path, f"{out_path}.json", refine_path(out_path), ids_path(out_path)], overwrite)
    trained = train_scale(table, kind, **train)
    count, dim = trained.meta["count"], trained.meta["dim"]
    with _atomic_path(refine_path(out_path)) as tmp_refine:
        refine = _empty_npy(tmp_refine, count, dim)
        started = time.perf_counter()
        add_rows(trained.index, table, 0, count, refine)
        refine.flush()
        del refine
        log.debug(f"added {count} rows in {time.perf_counter() - started:.1f} s, {memory_text()}")
        trained.meta["id_lookup"] = write_id_lookup(ids_path(out_path), trained.ids)
        try:
            _atomic(out_path, lambda tmp: faiss.write_index(trained.index, tmp))
        except BaseException:
            ids_path(out_path).unlink(missing_ok=True)
            raise
    meta = _final_meta(trained.meta, source=source, parts=1)
    _write_json(f"{out_path}.json", meta)
    return meta


def _final_meta(trained_meta: dict, **extra) -> dict:
    import galtools
    from galtools.search.faiss_index import SIDECAR_FORMAT

    meta = {k: v for k, v in trained_meta.items() if k not in ("format", "build_id", "trained_sha256")}
    meta.update(format=SIDECAR_FORMAT, galtools_version=galtools.__version__,
                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra)
    return meta


# ------------------------------------------------------------------------------------------------ sharded build

def load_trained(path) -> tuple[object, dict]:
    import faiss

    meta = _read_json(f"{path}.json", path, TRAINED_FORMAT, "gal-knn index-train")
    return faiss.read_index(str(path)), meta


def part_path(trained_path, shard) -> str:
    """TRAINED.part-I-of-N.faiss beside TRAINED (its sidecar .json does not match the glob TRAINED.part-*.faiss)."""
    stem = str(trained_path)[:-len(".faiss")] if str(trained_path).endswith(".faiss") else str(trained_path)
    return shard.format_path(f"{stem}.part-{{shard}}.faiss")


def add_part(table, trained_path, shard, overwrite: bool = False) -> str:
    """Fill the trained index with this shard's rows: TRAINED.part-I-of-N.faiss (+ .json), its float16 vectors written
    into TRAINED.refine.npy by row. A part that exists already is kept (a rerun after a crash redoes only the
    missing ones) unless ``overwrite``."""
    import faiss

    index, meta = load_trained(trained_path)
    out = part_path(trained_path, shard)
    if os.path.exists(f"{out}.json") and os.path.exists(out) and not overwrite:
        done = _read_json(f"{out}.json", out, PART_FORMAT, "gal-knn index-add")
        if done.get("build_id") != meta["build_id"]:
            raise GalError(f"{out} exists from another index-train", "pass --overwrite to replace it")
        log.info(f"{out} is already complete: kept")
        return out
    dim = _check_embedding_table(table)
    ids = read_ids_column(table)
    if len(ids) != meta["count"] or dim != meta["dim"] or table_fingerprint(table, ids) != meta["fingerprint"]:
        raise BadData(f"{table.name} is not the table {trained_path} was trained on ({len(ids)} x {dim} rows vs "
                      f"{meta['count']} x {meta['dim']}, or other ids or vectors)",
                      "give the same embedding table to every stage")
    if file_sha256(trained_path) != meta["trained_sha256"]:
        raise BadData(f"{trained_path} differs from the file its sidecar describes", "rerun gal-knn index-train")
    start, stop = shard.bounds(meta["count"])
    refine = np.load(refine_path(trained_path), mmap_mode="r+")
    if refine.shape != (meta["count"],) or refine.dtype != refine_dtype(meta["dim"]):
        raise BadData(f"{refine_path(trained_path)} does not hold {meta['count']} refine records of dimension "
                      f"{meta['dim']}", "rerun gal-knn index-train --overwrite")
    try:
        add_rows(index, table, start, stop, refine)
        refine.flush()
    except OSError as exc:
        raise write_failure(exc, str(refine_path(trained_path))) from None
    del refine
    _atomic(out, lambda tmp: faiss.write_index(index, tmp))
    part_meta = {"format": PART_FORMAT, "shard": shard.index, "shards": shard.count, "start": int(start),
                 "stop": int(stop), "trained_sha256": meta["trained_sha256"], "build_id": meta["build_id"]}
    _write_json(f"{out}.json", part_meta)
    return out


def merge_parts(trained_path, part_paths, out_path, *, overwrite: bool = False, source: str | None = None) -> dict:
    """Merge the parts' inverted lists into OUT (+ OUT.ivfdata on disk, OUT.json). Every shard 0..N-1 of this
    training must be given exactly once: a missing, repeated or foreign part is refused (BadData, 65) naming it."""
    from faiss.contrib.ondisk import merge_ondisk

    _refuse_existing([out_path, f"{out_path}.json"], overwrite)
    index, meta = load_trained(trained_path)
    parts = _check_parts(meta, trained_path, part_paths)
    need = sum(os.path.getsize(p) for p in parts) + os.path.getsize(trained_path)
    folder = os.path.dirname(os.path.abspath(out_path))
    free = _free_bytes(folder)
    if free is not None and free < need * 1.1:
        raise OutputError(f"no space left on {mount_point(folder)} while writing {out_path} (the merge needs about "
                          f"{need / 2**20:.0f} MiB, {free / 2**20:.0f} MiB are free)", "free some space or write elsewhere")
    ivfdata = ivfdata_path(out_path)
    started = time.perf_counter()
    with _atomic_path(ivfdata) as tmp_data:
        with _quiet_stdout():
            merge_ondisk(index, [str(p) for p in parts], tmp_data)
        if index.ntotal != meta["count"]:
            raise BadData(f"the parts hold {index.ntotal} rows, the table {meta['count']}", "rebuild the parts")
        import faiss

        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
        lists.filename = ivfdata.name      # found beside the index file when read
        _atomic(out_path, lambda tmp: faiss.write_index(index, tmp))
    log.debug(f"merged {len(parts)} parts in {time.perf_counter() - started:.1f} s, {memory_text()}")
    relative = os.path.relpath(refine_path(trained_path), os.path.dirname(os.path.abspath(out_path)))
    final = _final_meta(meta, source=source, parts=len(parts), ondisk=ivfdata.name, refine_file=relative)
    if "id_lookup" in final:   # written by index-train beside the trained index
        final["id_lookup"] = dict(final["id_lookup"], file=os.path.relpath(
            ids_path(trained_path), os.path.dirname(os.path.abspath(out_path))))
    _write_json(f"{out_path}.json", final)
    return final


def _check_parts(meta: dict, trained_path, part_paths) -> list[str]:
    by_shard: dict[int, str] = {}
    shards = None
    for path in part_paths:
        if not os.path.exists(path):
            raise InputMissing(f"part {path} not found", "check the path")
        part = _read_json(f"{path}.json", path, PART_FORMAT, "gal-knn index-add")
        if part.get("trained_sha256") != meta["trained_sha256"] or part.get("build_id") != meta["build_id"]:
            raise BadData(f"part {path} was not made from {trained_path} (another training)",
                          f"rerun: gal-knn index-add EMB --trained {trained_path} --shard "
                          f"{part.get('shard')}/{part.get('shards')} --overwrite")
        if shards is not None and part["shards"] != shards:
            raise BadData(f"part {path} is one of {part['shards']} shards, the others of {shards}",
                          "give the parts of one Slurm array")
        shards = part["shards"]
        if part["shard"] in by_shard:
            raise BadData(f"part {path} repeats shard {part['shard']}/{shards} of {by_shard[part['shard']]}",
                          "give each part once")
        by_shard[part["shard"]] = path
    if shards is None:
        raise UsageProblem("no parts given", "name the parts, e.g. trained.part-*.faiss")
    missing = [i for i in range(shards) if i not in by_shard]
    if missing:
        from galtools.io import Shard

        raise BadData(f"part {part_path(trained_path, Shard(missing[0], shards))} (shard {missing[0]}/{shards}) is "
                      f"missing" + (f", and {len(missing) - 1} more" if len(missing) > 1 else ""),
                      f"run gal-knn index-add EMB --trained {trained_path} --shard {missing[0]}/{shards}")
    return [by_shard[i] for i in range(shards)]


# -------------------------------------------------------------------------------------------------- searching

class ScaleIndex:
    """A compressed index opened for search: codes memory-mapped, refine vectors memory-mapped."""

    def __init__(self, path, meta: dict):
        import faiss

        self.path, self.meta = str(path), meta
        if meta.get("scale_version") != SCALE_VERSION:
            raise BadData(f"index {path} was made by an older galtools (inner-product codes, which order close "
                          f"neighbors poorly)", f"rebuild it: gal-knn index EMB --kind {meta.get('kind')} -o {path} "
                          f"--overwrite, or index-train/-add/-merge again")
        flags = faiss.IO_FLAG_ONDISK_SAME_DIR if meta.get("ondisk") else faiss.IO_FLAG_MMAP
        flags |= faiss.IO_FLAG_SKIP_PRECOMPUTE_TABLE    # made by the first search of many queries (_precompute)
        with _quiet_stdout():   # FAISS prints where it found the on-disk lists on stdout
            self.index = faiss.read_index(self.path, flags)
        if self.index.ntotal != meta["count"] or self.index.d != meta["dim"]:
            raise BadData(f"index {path} holds {self.index.ntotal} x {self.index.d} vectors but its sidecar says "
                          f"{meta['count']} x {meta['dim']}", "rebuild the index")
        folder = os.path.dirname(os.path.abspath(self.path))
        refine = os.path.join(folder, meta["refine_file"]) if meta.get("refine_file") else str(refine_path(path))
        if not os.path.exists(refine):
            raise InputMissing(f"the refine vectors {refine} of index {path} are missing", "rebuild the index")
        self.exact = np.load(refine, mmap_mode="r")   # (list, unit vector less its centroid in float16) by row
        self._refine_file = open(refine, "rb")
        _read_randomly(self.exact)
        if self.exact.shape != (meta["count"],) or self.exact.dtype != refine_dtype(meta["dim"]):
            raise BadData(f"{refine} does not hold the index's {meta['count']} refine records of dimension "
                          f"{meta['dim']}", "rebuild the index")
        self.centroids = centroids_of(self.index)

    refine: int | None = None   # candidates re-scored, when the command line chose (else the sidecar's)
    kind = property(lambda self: self.meta["kind"])
    params = property(lambda self: self.meta["params"])

    def id_lookup(self) -> "IdLookup | None":
        """The index's sorted id file, or None when it has none (made by an older galtools) or it is missing: queries
        then read the table's id column."""
        entry = self.meta.get("id_lookup")
        if not entry or "sample_fingerprint" not in self.meta:
            return None
        path = os.path.join(os.path.dirname(os.path.abspath(self.path)), entry["file"])
        if entry.get("format") != ID_LOOKUP_FORMAT or not os.path.exists(path):
            log.warning(f"the id file {path} of index {self.path} is missing or of another format: reading the "
                        f"table's ids instead (rebuild the index to make it again)")
            return None
        return IdLookup(path, self.meta["count"], self.path)

    def check_matches(self, *, fingerprint: str, model_sha256, count: int, dim: int, name: str,
                      key: str = "fingerprint") -> None:
        hint = f"rebuild it: gal-knn index EMB --kind {self.kind} -o {self.path} --overwrite"
        if self.meta["dim"] != dim:
            raise BadData(f"{name} has dimension {self.meta['dim']} but the embeddings have {dim}", hint)
        if (self.meta.get("model_sha256") or None) != (model_sha256 or None):
            raise BadData(f"{name} was built from embeddings of another model", hint)
        if self.meta["count"] != count or self.meta[key] != fingerprint:
            raise BadData(f"{name} is stale: it was built from {self.meta['count']} embeddings with fingerprint "
                          f"{self.meta[key][:12]}, the table has {count} with {fingerprint[:12]}", hint)

    def vectors(self, rows) -> np.ndarray:
        """Unit vectors of rows (centroid + float16 residual): the queries of a search by id, from the refine file."""
        records = self._records(np.asarray(rows, dtype=np.int64))
        return self.centroids[records["list"]] + records["residual"].astype(np.float32)

    def _records(self, rows: np.ndarray) -> np.ndarray:
        """Refine records by row: a few with pread (a page each; touching a memory map maps the page cache's whole
        large folios, ~1 MB a row, into the process), many through the memory map."""
        if len(rows) > PREAD_ROWS:
            return self.exact[rows]
        size, fd = self.exact.dtype.itemsize, self._refine_file.fileno()
        raw = b"".join(os.pread(fd, size, self.exact.offset + int(row) * size) for row in rows)
        if len(raw) != size * len(rows) or (rows.size and (rows.min() < 0 or rows.max() >= len(self.exact))):
            raise BadData(f"{self._refine_file.name} is shorter than its rows", "rebuild the index")
        return np.frombuffer(raw, dtype=self.exact.dtype)

    def search(self, queries: np.ndarray, k: int, *, exclude=None, largest: bool = True, normalized: bool = False,
               nprobe: int | None = None, refine: int | None = None, scan=None, **_ignored) -> TopK:
        """Top k by the codes, then (``refine`` > 0) the best ``refine`` candidates re-scored from the float16 vectors.
        Rows not found are -1 with score -inf; equal scores keep FAISS's (row) order. ``scan(index, queries, n)``,
        if given, finds the n candidates instead of ``index.search`` (galtools.search.batch: by inverted list)."""
        import faiss

        from galtools.search.faiss_index import finish_results, signed_queries

        signed, wanted = signed_queries(queries, k, self.meta, exclude, normalized, largest)
        refine = self.refine if refine is None else refine
        refine = self.params.get("refine", 0) if refine is None else refine
        ivf = faiss.extract_index_ivf(self.index)
        if scan is not None or len(queries) >= PRECOMPUTE_QUERIES:
            self._precompute(ivf)
        ivf.nprobe = min(nprobe or self.params["nprobe"], ivf.nlist)
        candidates = min(max(refine, wanted), self.meta["count"])
        scores, rows = (scan or _search_codes)(self.index, signed, candidates)
        if refine:
            scores, rows = self._rescore(signed, rows, wanted)
        else:   # squared L2 between unit vectors: 2 - 2 cos
            scores, rows = 1 - scores[:, :wanted] / 2, rows[:, :wanted]
        rows, scores = finish_results(rows, scores, exclude, k, largest)
        return TopK(indices=rows.astype(np.int64), scores=scores)

    _precomputed = False

    def _precompute(self, ivf) -> None:
        """IVF-PQ's tables of centroid-codeword products, once: they save time over many queries, and cost nlist x M x
        256 x 4 bytes (FAISS skips them beyond its precomputed_table_max_bytes)."""
        import faiss

        if not self._precomputed and self.kind == "ivfpq":
            faiss.downcast_index(ivf).precompute_table()
        self._precomputed = True

    def _rescore(self, queries: np.ndarray, rows: np.ndarray, wanted: int):
        """Inner products with the candidates' vectors (centroid + float16 residual), read from the memory-mapped file
        (sorted rows: forward reads) for RESCORE_ROWS candidates at a time, so memory stays bounded however many
        queries."""
        per_chunk = max(1, RESCORE_ROWS // rows.shape[1])
        scores = np.empty((len(rows), wanted), dtype=np.float32)
        best = np.empty((len(rows), wanted), dtype=np.int64)
        for start in range(0, len(rows), per_chunk):
            chunk, q = rows[start: start + per_chunk], queries[start: start + per_chunk]
            unique, inverse = np.unique(chunk, return_inverse=True)
            vectors = self.vectors(np.maximum(unique, 0))[inverse.reshape(chunk.shape)]
            exact = np.einsum("qd,qkd->qk", q, vectors)
            exact = np.where(chunk >= 0, exact, -np.inf).astype(np.float32)
            order = np.argsort(-exact, axis=1, kind="stable")[:, :wanted]
            scores[start: start + per_chunk] = np.take_along_axis(exact, order, 1)
            best[start: start + per_chunk] = np.take_along_axis(chunk, order, 1)
        return scores, best


def _search_codes(index, queries: np.ndarray, candidates: int):
    return index.search(queries, candidates)


def open_scale(path) -> ScaleIndex:
    from galtools.search.faiss_index import SIDECAR_FORMAT

    return ScaleIndex(path, _read_json(f"{path}.json", path, SIDECAR_FORMAT, "gal-knn index"))


def read_sidecar(path) -> dict | None:
    """The sidecar of an index file, or None when there is none (the caller says what is wrong)."""
    try:
        return json.loads(Path(f"{path}.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ------------------------------------------------------------------------------------------------------ files

def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _refuse_existing(paths, overwrite: bool) -> None:
    from galtools.io import check_output_path

    for path in paths:
        if os.path.exists(path) and not overwrite:
            raise GalError(f"{path} already exists", "pass --overwrite to replace it")
        check_output_path(str(path), True)


@contextmanager
def _atomic_path(path):
    """galtools.io's atomic_file, with a failed FAISS write (a RuntimeError quoting errno's text) on a full disk
    also OutputError (74) naming the file system."""
    path = Path(path)
    try:
        # named: FAISS's on-disk lists record their file's name, and the index memory-maps what it writes
        with atomic_file(str(path), named=True) as temporary:
            yield temporary
    except RuntimeError as exc:
        if is_no_space(OSError(None, str(exc)), str(path.parent)) or "No space left" in str(exc):
            raise write_failure(OSError(28, "No space left on device"), str(path)) from None
        raise


def _atomic(path, write) -> None:
    with _atomic_path(path) as temporary:
        write(temporary)


def _write_json(path, meta: dict) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))


def _read_json(path, what, fmt: str, maker: str) -> dict:
    if not os.path.exists(what):
        raise InputMissing(f"{what} not found", f"make it with {maker}")
    try:
        meta = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BadData(f"{what} has no sidecar {Path(path).name}: it is incomplete or not from galtools",
                      f"rerun {maker}") from None
    except json.JSONDecodeError as exc:
        raise BadData(f"sidecar {path} is not valid JSON ({exc.msg})", f"rerun {maker}") from None
    if meta.get("format") != fmt:
        raise BadData(f"{what} is not what {maker} writes (format {meta.get('format')!r})", f"rerun {maker}")
    return meta


def _empty_npy(path, count: int, dim: int) -> np.memmap:
    """A .npy of ``count`` refine records whose rows are filled later, its blocks allocated now: a full disk fails
    here (OSError, then exit 74), not as a crash when a row is written through the memory map."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=refine_dtype(dim), shape=(count,))
    array.flush()
    with open(path, "r+b") as handle:
        os.posix_fallocate(handle.fileno(), 0, os.path.getsize(path))
    return array


def _read_randomly(array: np.memmap) -> None:
    """Tell the kernel that the rows of a memory-mapped file are read at random: a file larger than the page cache
    then costs one page per candidate read, not the 128 kB read around each one by default."""
    import mmap

    handle = getattr(array, "_mmap", None)
    if handle is not None and hasattr(handle, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        handle.madvise(mmap.MADV_RANDOM)


def _free_bytes(folder) -> int | None:
    try:
        info = os.statvfs(folder)
    except OSError:
        return None
    return info.f_bavail * info.f_frsize


@contextmanager
def _quiet_stdout():
    """Drop what FAISS's C++ code prints on file descriptor 1 (file names, sizes): stdout may carry a table, and
    FAISS reports its failures as exceptions."""
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


# ---------------------------------------------------------------------------------------------- exact reference

def streaming_exact_topk(table, queries: np.ndarray, k: int, exclude: np.ndarray | None = None) -> TopK:
    """Exact top-k (cosine) of unit ``queries`` over every row of the table, streamed in blocks: memory is one
    block of vectors and the queries' running best, never the table (the reference of recall measures)."""
    from galtools.search.exact import exact_topk

    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_rows = np.full((len(queries), k), -1, dtype=np.int64)
    row = 0
    for batch in _iter_rows(table, 0, table.total_rows):
        from galtools.io import vectors_of
        from galtools.search.table import EMBEDDING

        block = _unit_checked(np.asarray(vectors_of(batch, EMBEDDING), dtype=np.float32), row, table.name)
        inside = None if exclude is None else np.where((exclude >= row) & (exclude < row + len(block)),
                                                       exclude - row, -1)
        exclude_here = None if inside is None or (inside < 0).all() else inside
        block_k = min(k, len(block) - (exclude_here is not None))
        row += len(block)
        if block_k < 1:
            continue
        found = exact_topk(queries, block, block_k, normalized=True, check_base=False, exclude=exclude_here)
        scores = np.concatenate([best_scores, found.scores], axis=1)
        first = row - len(block)
        rows = np.concatenate([best_rows, np.where(found.indices >= 0, found.indices + first, -1)], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores, best_rows = np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
    return TopK(indices=best_rows, scores=best_scores)


def scale_recall(table, index: "ScaleIndex", k: int = 10, sample: int = 1000, seed: int = 0,
                 nprobe: int | None = None, refine: int | None = None) -> float:
    """recall@k of the index against streamed exact search, over ``sample`` random rows as queries (self excluded)."""
    count = table.total_rows
    rows = np.sort(np.random.default_rng(seed).choice(count, min(sample, count), replace=False))
    queries = _unit_checked(_embedding_rows(table, rows), 0, table.name)
    exact = streaming_exact_topk(table, queries, k, exclude=rows)
    approx = index.search(queries, k, exclude=rows, normalized=True, nprobe=nprobe, refine=refine)
    hits = [np.intersect1d(e[e >= 0], a[a >= 0]).size for e, a in zip(exact.indices, approx.indices)]
    return float(np.sum(hits)) / (len(rows) * k)
