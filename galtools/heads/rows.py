"""Labelled rows for fitting a head: read from an embedding source (in memory or streamed), and split.

- ``read_labelled``: the rows a task says are labelled, in table order, as (embeddings, labels, object_ids);
- ``InMemoryRows``: training rows held as arrays, each pass a permutation;
- ``StreamedRows``: the table re-read once per pass in record batches, rows shuffled inside windows of about
  ``WINDOW_BYTES`` (memory stays bounded whatever the table's size);
- ``validation_split`` (early stopping), ``split_test`` (the label curve's fixed test set).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from galtools.errors import UsageProblem
from galtools.heads.source import OBJECT_ID, check_finite_rows, require_columns
from galtools.io import EMBEDDING, open_table, vectors_of

WINDOW_BYTES = 256 << 20       # shuffle window of the streamed mode
MAX_VALIDATION_ROWS = 50_000   # enough for a stable validation loss, small enough to keep in memory


@dataclass
class Labelled:
    """The labelled rows of a table in table order: embeddings, the task's labels, object_ids (when asked)."""

    x: np.ndarray
    labels: list                 # one array per batch, as the task's reader returned them
    ids: list | None
    n_rows: int                  # rows read, labelled or not

    @property
    def count(self) -> int:
        return len(self.x)


def read_labelled(source, label_columns: list[str],
                  labels_of: Callable[[object], tuple[np.ndarray, object]], with_ids: bool = False) -> Labelled:
    """Read ``source`` (a checked EmbeddingSource) once: ``labels_of(batch)`` returns (rows to keep, their labels)
    for each batch; the kept embeddings are checked to be finite."""
    columns = list(dict.fromkeys([EMBEDDING] + label_columns + ([OBJECT_ID] if with_ids else [])))
    if with_ids:
        require_columns(source.table.schema, [OBJECT_ID], source.name)
    xs, labels, ids, n_rows = [], [], [] if with_ids else None, 0
    for batch in source.table.iter_batches(columns=columns):
        n_rows += batch.num_rows
        keep, found = labels_of(batch)
        labels.append(found)
        if len(keep):
            xs.append(np.array(vectors_of(batch)[keep], dtype=np.float32))
            if with_ids:
                ids.extend(batch.column(OBJECT_ID).take(keep).to_pylist())
    x = np.concatenate(xs) if xs else np.empty((0, source.dim), np.float32)
    xs.clear()
    check_finite_rows(x, source.name)
    return Labelled(x, labels, ids, n_rows)


class InMemoryRows:
    """Training rows held as arrays; each pass is a permutation."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y

    @property
    def count(self) -> int:
        return len(self.y)

    def class_counts(self, n_classes: int) -> np.ndarray:
        if self.y.ndim == 2:                     # soft targets: expected counts
            return self.y.sum(axis=0, dtype=np.float64)
        return np.bincount(self.y, minlength=n_classes).astype(np.float64)

    def mean_and_scale(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.x.mean(axis=0, dtype=np.float64)
        std = self.x.std(axis=0, dtype=np.float64)
        return mean, std

    def passes(self, rng: np.random.Generator, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while True:
            order = rng.permutation(self.count)
            for start in range(0, self.count, batch_size):
                rows = np.sort(order[start:start + batch_size])   # sorted rows: faster gather, same batch
                yield self.x[rows], self.y[rows]


class StreamedRows:
    """Training rows re-read from the table on every pass, shuffled within windows of ``window_bytes``."""

    def __init__(self, path: str, label_of_row: np.ndarray, dim: int, window_bytes: int = WINDOW_BYTES):
        self.path = path
        self.label_of_row = label_of_row        # (rows,) int16 class index, -1 where not a training row
        self.dim = dim
        self.window_rows = max(1, window_bytes // (4 * dim))

    @property
    def count(self) -> int:
        return int(np.count_nonzero(self.label_of_row >= 0))

    def _training_blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        with open_table(self.path) as table:
            start = 0
            for batch in table.iter_batches(columns=[EMBEDDING]):
                labels = self.label_of_row[start:start + batch.num_rows]
                start += batch.num_rows
                keep = np.flatnonzero(labels >= 0)
                if keep.size:
                    yield vectors_of(batch)[keep], labels[keep].astype(np.int64)

    def class_counts(self, n_classes: int) -> np.ndarray:
        labels = self.label_of_row[self.label_of_row >= 0]
        return np.bincount(labels, minlength=n_classes).astype(np.float64)

    def mean_and_scale(self) -> tuple[np.ndarray, np.ndarray]:
        total = np.zeros(self.dim)
        squares = np.zeros(self.dim)
        for x, _ in self._training_blocks():
            total += x.sum(axis=0, dtype=np.float64)
            squares += np.einsum("ij,ij->j", x, x, dtype=np.float64)
        mean = total / self.count
        return mean, np.sqrt(np.clip(squares / self.count - mean ** 2, 0, None))

    def passes(self, rng: np.random.Generator, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while True:
            xs, ys, held = [], [], 0
            for x, y in self._training_blocks():
                xs.append(x)
                ys.append(y)
                held += len(y)
                if held >= self.window_rows:
                    yield from self._shuffled(xs, ys, rng, batch_size)
                    xs, ys, held = [], [], 0
            if held:
                yield from self._shuffled(xs, ys, rng, batch_size)

    @staticmethod
    def _shuffled(xs, ys, rng, batch_size):
        x = np.concatenate(xs)
        y = np.concatenate(ys)
        xs.clear()
        ys.clear()
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch_size):
            rows = np.sort(order[start:start + batch_size])
            yield x[rows], y[rows]


def validation_split(n: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the validation rows among ``n`` labelled rows (at least 1, at most MAX_VALIDATION_ROWS)."""
    count = min(MAX_VALIDATION_ROWS, max(1, int(round(fraction * n))), n - 1)
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng([seed, 7]).choice(n, count, replace=False)] = True
    return mask


def split_test(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training pool, test rows): the pool in a seeded random order, the test rows sorted."""
    if not 0 < test_fraction < 1:
        raise UsageProblem(f"--test-fraction must be between 0 and 1, got {test_fraction}")
    order = np.random.default_rng([seed, 11]).permutation(n)
    n_test = max(1, int(round(test_fraction * n)))
    return order[n_test:], np.sort(order[:n_test])
