"""What gal-knn searches for and how: the embedding table, an index, the query plan, and the search in blocks.

    base = load_base("emb.parquet")
    plan = plan_queries(base, ids=[1234, 5678])            # or all_rows=..., or embed_queries(...)
    for block in search_blocks(base, plan, k=10):           # Block(ids, rows, topk), bounded memory with all rows
        ...

numpy only (torch only on a GPU device, faiss only for an index, onnxruntime only for queries embedded on the fly).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa

from galtools.errors import BadData

log = logging.getLogger("galtools")

QUERY_BLOCK = 2048         # queries searched (and written) at a time over all rows
KEPT_QUERY_IMAGES = 50     # query pictures kept from embedded queries (for a montage)


def load_base(source: str, checksum: bool = False, keep_vectors: bool = True):
    """The embedding table ``source`` in memory (see :func:`galtools.search.table.load_embeddings`)."""
    from galtools.io import check_unique_ids, display_name, open_table
    from galtools.search.table import load_embeddings

    with open_table(source) as table:
        base = load_embeddings(table, checksum=checksum, keep_vectors=keep_vectors, name=display_name(source))
    check_unique_ids(base.ids, base.name)   # a repeated object would be its own nearest neighbor
    log.debug(f"{base.count} embeddings of dimension {base.dim} ({base.count * base.dim * 4 / 2**20:.0f} MiB)")
    return base


def load_index(path: str, base):
    """A FAISS index of ``base``, refused (BadData, 65) if it was built from other embeddings."""
    from galtools.search.faiss_index import FaissIndex

    index = FaissIndex.load(path)
    index.check_matches(embeddings_checksum=base.checksum, model_sha256=base.model_sha256, count=base.count,
                        dim=base.dim, name=f"index {path}")
    return index


def load_for_index(source: str, index_path: str):
    """(base, index) for a search through an index. A compressed index (ivfpq, ivfsq8) leaves the table on disk:
    its ids are read, its vectors and columns only by row; the other kinds check the whole table's checksum."""
    from galtools.errors import UsageProblem
    from galtools.search.scale import is_scale_sidecar, open_scale, read_sidecar

    meta = read_sidecar(index_path)
    if meta is None or not is_scale_sidecar(meta):
        base = load_base(source, checksum=True, keep_vectors=False)
        return base, load_index(index_path, base)
    if source == "-":
        raise UsageProblem(f"index {index_path} reads the table by row: it cannot be stdin", "give EMB as a file")
    from galtools.io import check_unique_ids, display_name, open_table
    from galtools.search.scale import sample_fingerprint
    from galtools.search.table import lookup_embeddings, row_read_embeddings

    index = open_scale(index_path)
    lookup = index.id_lookup()
    table = open_table(source)
    if lookup is not None:   # ids found in the index's sorted id file: no column of the table is read whole
        base = lookup_embeddings(table, display_name(source), lookup)
        fingerprint, key = sample_fingerprint(table), "sample_fingerprint"
    else:
        base = row_read_embeddings(table, display_name(source))
        check_unique_ids(base.ids, base.name)
        fingerprint, key = base.checksum, "fingerprint"
    index.check_matches(fingerprint=fingerprint, model_sha256=base.model_sha256, count=base.count, dim=base.dim,
                        name=f"index {index_path}", key=key)
    return base, index


def vectors_of_rows(base, index, rows) -> np.ndarray:
    """Unit vectors of base rows: from the table in memory, or from the index when only it holds them."""
    if base.vectors is not None:
        return np.ascontiguousarray(base.vectors[rows])
    return index.vectors(rows)


@dataclass
class QueryPlan:
    """What to search for: rows of the base (ids, or every row of a range) or new vectors (embedded cutouts)."""

    ids: pa.Array | None = None         # query ids (None over all rows: they are base.ids[rows])
    vectors: np.ndarray | None = None   # (Q, D) unit vectors (None over all rows)
    rows: np.ndarray | None = None      # base row of each query (None for embedded cutouts)
    exclude: object = None              # base row to leave out per query, a bool over all rows, or None
    all_rows: range | None = None       # the base rows searched over all rows
    images: np.ndarray | None = None    # the first query pictures of embedded cutouts (for a montage)
    bands: list | None = None

    @property
    def in_base(self) -> bool:
        """Whether the queries are rows of the base (so they have its columns)."""
        return self.all_rows is not None or self.rows is not None


def plan_queries(base, index=None, ids=(), all_rows: bool = False, shard=None, include_self: bool = False) -> QueryPlan:
    """Queries that are rows of the base: the given object_ids, or every row (of ``shard`` of the rows).
    ``shard`` also splits a list of ids. A query leaves itself out unless ``include_self``."""
    if all_rows:
        start, stop = shard.bounds(base.count) if shard else (0, base.count)
        return QueryPlan(all_rows=range(start, stop), exclude=not include_self)
    wanted = list(ids)
    if shard is not None:
        lo, hi = shard.bounds(len(wanted))
        wanted = wanted[lo:hi]
    rows = base.rows_of(wanted)
    return QueryPlan(ids=base.ids_of(rows), vectors=vectors_of_rows(base, index, rows), rows=rows,
                     exclude=None if include_self else rows)


def embed_queries(base, cutouts: str, model: str, device: str = "auto", shard=None,
                  keep_images: int = KEPT_QUERY_IMAGES) -> QueryPlan:
    """Queries that are new cutouts, embedded exactly as gal-embed does (bands, centre crop, the model's
    preprocessing), and refused (BadData, 65) if the model is not the one that made the base."""
    from galtools.embed import EmbedSettings, embed_table, load_encoder
    from galtools.io import CollectingSink, images_of, open_table, vectors_of
    from galtools.search.exact import unit_rows

    encoder = load_encoder(model, EmbedSettings(device=device))
    for note in encoder.notes:
        log.info(note)
    collected = CollectingSink()
    with open_table(cutouts, shard=shard) as table:
        if "object_id" not in table.schema.names:
            raise BadData(f"--query-image {cutouts} has no object_id column",
                          "give a cutout table from gal-pack or gal-sim")
        kept = []

        def remember(batch):   # a pipe cannot be read twice: keep the first pictures as they pass
            room = keep_images - sum(len(k) for k in kept)
            if room > 0:
                kept.append(images_of(batch.slice(0, room)).copy())

        embed_table(table, encoder, collected, on_batch=remember)
        bands = table.bands
    if not collected.rows:
        raise BadData(f"--query-image {cutouts} has no rows", "check the input and any --shard")
    embedded = collected.table()
    if base.model_sha256 and encoder.info.sha256 != base.model_sha256:
        raise BadData(f"--model {model} is not the model that made the table (sha256 {encoder.info.sha256[:12]} vs "
                      f"{base.model_sha256[:12]})", "use the encoder.onnx that gal-embed used for EMB")
    vectors = np.concatenate([vectors_of(batch) for batch in embedded.to_batches()])
    if vectors.shape[1] != base.dim:
        raise BadData(f"--model {model} makes {vectors.shape[1]}-d embeddings, the table holds {base.dim}-d",
                      "use the encoder.onnx that gal-embed used for EMB")
    return QueryPlan(ids=embedded.column("object_id").combine_chunks(), vectors=unit_rows(vectors),
                     images=np.concatenate(kept) if kept else None, bands=bands)


@dataclass
class Block:
    """One block of searched queries: their ids, their base rows (None for embedded cutouts) and the top k."""

    ids: pa.Array
    rows: np.ndarray | None
    topk: object


def search_blocks(base, plan: QueryPlan, k: int, least: bool = False, index=None, nprobe=None, ef=None,
                  device: str = "cpu", track=None, checkpoint=None, buffer_mib: int | None = None) -> Iterator[Block]:
    """Search the plan's queries, in blocks of QUERY_BLOCK over all rows. ``track(iterable, total)`` may wrap
    the blocks (a progress bar). All rows through a compressed index are searched by inverted list in batches of
    ``buffer_mib`` MiB, finished batches kept in ``checkpoint`` (galtools.search.batch)."""
    from galtools.search.exact import all_rows_topk, exact_topk

    largest = not least
    if plan.all_rows is not None:
        rows = plan.all_rows
        if index is None:
            searched = all_rows_topk(base.vectors, k, rows=rows, tie_rank=base.tie_rank, largest=largest,
                                     normalized=True, query_block=QUERY_BLOCK, device=device,
                                     exclude_self=plan.exclude, check_base=False)  # checked on loading
        elif _is_scale(index):
            from galtools.search.batch import BUFFER_MIB, batched_all_rows

            searched = batched_all_rows(base, rows, index, k, largest, bool(plan.exclude), nprobe,
                                        checkpoint=checkpoint, buffer_mib=buffer_mib or BUFFER_MIB)
        else:
            searched = _index_blocks(base, rows, index, k, largest, plan.exclude, nprobe, ef)
        if track is not None:
            searched = track(searched, None if _is_scale(index) else -(-len(rows) // QUERY_BLOCK))
        for block_rows, topk in searched:
            if index is not None:
                log.debug(f"searched rows {block_rows.start}-{block_rows.stop - 1}, {_memory_text()}")
            yield Block(base.ids.slice(block_rows.start, len(block_rows)),
                        np.arange(block_rows.start, block_rows.stop, dtype=np.int64), topk)
        return
    if index is not None:
        topk = index.search(plan.vectors, k, exclude=plan.exclude, largest=largest, normalized=True, nprobe=nprobe,
                            ef=ef, tie_rank=base.tie_rank)
        log.debug(f"searched {len(plan.ids)} queries, {_memory_text()}")
    else:
        topk = exact_topk(plan.vectors, base.vectors, k, tie_rank=base.tie_rank, exclude=plan.exclude,
                          largest=largest, normalized=True, device=device, check_base=False)  # checked on loading
    yield Block(plan.ids, plan.rows, topk)


def _is_scale(index) -> bool:
    from galtools.search.scale import ScaleIndex

    return isinstance(index, ScaleIndex)


def _memory_text() -> str:
    from galtools.search.scale import memory_text

    return memory_text()


def _index_blocks(base, rows, index, k, largest, exclude_self, nprobe, ef):
    for begin in range(rows.start, rows.stop, QUERY_BLOCK):
        block_rows = range(begin, min(rows.stop, begin + QUERY_BLOCK))
        row_numbers = np.arange(block_rows.start, block_rows.stop, dtype=np.int64)
        queries = vectors_of_rows(base, index, row_numbers)
        yield block_rows, index.search(queries, k, exclude=row_numbers if exclude_self else None, largest=largest,
                                       normalized=True, nprobe=nprobe, ef=ef, tie_rank=base.tie_rank)
