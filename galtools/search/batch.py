"""``gal-knn --all`` through a compressed index, batched by inverted list, resumable, in bounded memory.

    scan = ListScan(index.index, chunk_bytes=64 << 20)
    for rows, topk in batched_all_rows(base, range(0, n), index, k=10, checkpoint=Checkpoint("out.checkpoint")):
        ...

As FAISS's ``faiss.contrib.big_batch_search`` does, the queries of a batch are coarse-quantised together and the
inverted lists are visited in order, a group of consecutive lists (consecutive on disk after ``merge_ondisk``) at a
time: each group is read once per batch for all the queries that probe it, instead of once per query. Within a
group FAISS's own scanner (``search_preassigned``, with the probes outside the group masked as -1) computes the
same code distances as a query-by-query search, and FAISS's ``ResultHeap`` merges the groups, so the candidates,
and after re-scoring from the float16 vectors the neighbors, are those of ``ScaleIndex.search``.

Memory: the index's codes (memory-mapped) plus the batch's buffers, about ``buffer`` bytes (queries x candidates
x 12 bytes for the heap, as much again for a group's results). A finished batch is written to the checkpoint folder
(``batch-<first row>.npz``, atomically); a rerun with the same settings reads the finished batches back instead of
searching them again, so a killed run continues where it stopped and writes the same table.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from galtools.search.exact import TopK

log = logging.getLogger("galtools")

BUFFER_MIB = 256               # default memory for a batch's buffers
CANDIDATE_BYTES = 36           # per query and candidate: heap (12), a group's results (12), re-scoring (12)
STATE = "state.json"


class ListScan:
    """The ``scan`` of :meth:`ScaleIndex.search`: candidates found list group by list group (see the module)."""

    def __init__(self, index, chunk_bytes: int):
        import faiss

        self.ivf = faiss.extract_index_ivf(index)
        self.transforms = _transforms(index)
        lists = self.ivf.invlists
        per_vector = self.ivf.code_size + 8                       # a code and its id
        sizes = np.array([lists.list_size(i) for i in range(self.ivf.nlist)], dtype=np.int64) * per_vector
        self.bounds = _group_bounds(sizes, max(1, chunk_bytes))  # first list of each group, then nlist
        self.keep_max = faiss.is_similarity_metric(self.ivf.metric_type)

    @property
    def groups(self) -> int:
        return len(self.bounds) - 1

    def __call__(self, index, queries: np.ndarray, candidates: int):
        import faiss

        x = queries
        for transform in self.transforms:
            x = transform.apply(x)
        nprobe = self.ivf.nprobe
        coarse_scores, probes = self.ivf.quantizer.search(x, nprobe)
        group = np.searchsorted(self.bounds, probes, side="right") - 1
        group[probes < 0] = -1
        heap = faiss.ResultHeap(len(x), candidates, keep_max=self.keep_max)
        pairs = np.argsort(group, axis=None, kind="stable")       # (query, probe) pairs in group order
        flat = group.ravel()[pairs]
        starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
        for begin, end in zip(starts, np.r_[starts[1:], len(flat)]):
            if flat[begin] < 0:
                continue
            members = np.unique(pairs[begin:end] // nprobe)
            assign = np.where(group[members] == flat[begin], probes[members], -1)
            scores, rows = self.ivf.search_preassigned(np.ascontiguousarray(x[members]), candidates, assign,
                                                       coarse_scores[members])
            heap.add_result_subset(members.astype(np.int64), scores, rows)
        heap.finalize()
        return heap.D, heap.I


def _transforms(index) -> list:
    """The vector transforms (e.g. OPQ) an IndexPreTransform applies before its IVF index."""
    import faiss

    index = faiss.downcast_index(index)
    if not isinstance(index, faiss.IndexPreTransform):
        return []
    return [faiss.downcast_VectorTransform(index.chain.at(i)) for i in range(index.chain.size())]


def _group_bounds(sizes: np.ndarray, chunk_bytes: int) -> np.ndarray:
    """Boundaries of consecutive list groups of about ``chunk_bytes`` each (a larger list is a group alone)."""
    bounds, total = [0], 0
    for number, size in enumerate(sizes):
        if total and total + size > chunk_bytes:
            bounds.append(number)
            total = 0
        total += int(size)
    bounds.append(len(sizes))
    return np.asarray(bounds, dtype=np.int64)


class Checkpoint:
    """The finished batches of one ``--all`` run: FOLDER/state.json (the settings) and FOLDER/batch-<row>.npz."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def start(self, settings: dict) -> int:
        """Keep the batches of an earlier run with the same settings (their number is returned), else start empty."""
        from galtools.io.files import write_bytes, write_failure

        state = self.folder / STATE
        try:
            if state.exists():
                try:
                    earlier = json.loads(state.read_text())
                except (OSError, json.JSONDecodeError):
                    earlier = None
                if earlier == settings:
                    done = len(list(self.folder.glob("batch-*.npz")))
                    log.info(f"resuming from {self.folder}: {done} batches done")
                    return done
                log.warning(f"{self.folder} holds a run with other settings: starting again")
                shutil.rmtree(self.folder)
            self.folder.mkdir(parents=True, exist_ok=True)
            write_bytes(str(state), json.dumps(settings, indent=1).encode(), durable=True)
        except OSError as exc:
            raise write_failure(exc, str(self.folder)) from None
        return 0

    def _path(self, first_row: int) -> Path:
        return self.folder / f"batch-{first_row:012d}.npz"

    def load(self, first_row: int, count: int) -> TopK | None:
        path = self._path(first_row)
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as saved:
            rows, scores = saved["rows"], saved["scores"]
        return TopK(indices=rows, scores=scores) if len(rows) == count else None

    def save(self, first_row: int, topk: TopK) -> None:
        import io

        from galtools.io.files import write_bytes, write_failure

        buffer = io.BytesIO()
        np.savez(buffer, rows=topk.indices, scores=topk.scores)
        try:
            write_bytes(str(self._path(first_row)), buffer.getvalue(), durable=True)
        except OSError as exc:
            raise write_failure(exc, str(self.folder)) from None

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def effective_refine(index, refine: int | None) -> int:
    """The candidates re-scored: the command line's, else what the index was opened with, else its sidecar's."""
    refine = index.refine if refine is None else refine
    return index.params.get("refine", 0) if refine is None else refine


def batched_all_rows(base, rows: range, index, k: int, largest: bool = True, exclude_self: bool = True,
                     nprobe: int | None = None, refine: int | None = None, checkpoint: Checkpoint | None = None,
                     buffer_mib: int = BUFFER_MIB):
    """(rows, TopK) for every row of ``rows`` as a query, batch by batch in row order (see the module)."""
    count = index.meta["count"]
    refine = effective_refine(index, refine)
    candidates = min(max(refine, k + bool(exclude_self)), count)
    buffer = buffer_mib << 20
    per_batch = max(1, buffer // (candidates * CANDIDATE_BYTES))
    scan = ListScan(index.index, buffer // 4)
    if checkpoint is not None:
        checkpoint.start({"index": os.path.realpath(index.path), "fingerprint": index.meta["fingerprint"],
                          "created": index.meta.get("created"), "k": k, "largest": largest,
                          "exclude_self": bool(exclude_self), "nprobe": nprobe or index.params["nprobe"],
                          "refine": refine, "rows": [rows.start, rows.stop], "batch": per_batch})
    log.debug(f"--all by inverted list: {per_batch} queries a batch, {candidates} candidates each, "
              f"{scan.groups} list groups")
    for begin in range(rows.start, rows.stop, per_batch):
        block = range(begin, min(rows.stop, begin + per_batch))
        topk = checkpoint.load(begin, len(block)) if checkpoint is not None else None
        if topk is None:
            numbers = np.arange(block.start, block.stop, dtype=np.int64)
            topk = index.search(index.vectors(numbers), k, exclude=numbers if exclude_self else None,
                                largest=largest, normalized=True, nprobe=nprobe, refine=refine, scan=scan)
            if checkpoint is not None:
                checkpoint.save(begin, topk)
        yield block, topk
