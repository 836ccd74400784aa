"""Labelled rows for fitting a head: read from an embedding source (in memory or streamed), and split.

- ``LabelledRows``: the one type of labelled rows (features or cutouts, the task's labels, ids);
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
class LabelledRows:
    """The labelled rows of a table, in table order: the one type every head task fits, curves and fine-tunes on.

    ``x`` holds what a model sees (embeddings, other features, or cutouts for a network); ``targets`` the task's
    label of each row as read (a redshift, a class index, vote fractions); ``labels`` what the task knows about
    them (gal-classify's LabelSpec with the classes found, gal-photoz's redshift column)."""

    x: np.ndarray
    targets: np.ndarray
    labels: object = None
    model_sha256: str | None = None    # the encoder of the embeddings
    n_rows: int = 0                    # rows read, labelled or not
    n_unused: int = 0                  # rows read without a usable label
    ids: list | None = None            # their object_ids, when asked for
    name: str = "the labels"           # the table, as messages name it

    @property
    def count(self) -> int:
        return len(self.targets)

    def subset(self, rows: np.ndarray) -> "LabelledRows":
        ids = None if self.ids is None else [self.ids[r] for r in rows]
        return LabelledRows(self.x[rows], self.targets[rows], self.labels, self.model_sha256, len(rows), 0, ids,
                            self.name)

    def with_features(self, x: np.ndarray, model_sha256: str | None = None) -> "LabelledRows":
        """The same rows and labels seen through other features (pixels, another encoder's, the cutouts)."""
        return LabelledRows(x, self.targets, self.labels, model_sha256, self.n_rows, self.n_unused, self.ids,
                            self.name)


def read_labelled(source, label_columns: list[str],
                  labels_of: Callable[[object], tuple[np.ndarray, object]], with_ids: bool = False,
                  embeddings: bool = True) -> tuple[np.ndarray, list, list | None, int]:
    """Read ``source`` (a checked EmbeddingSource, or with ``embeddings`` False any open table) once:
    ``labels_of(batch)`` returns (rows to keep, their labels) for each batch. Returns (the kept embeddings, checked
    to be finite (none without ``embeddings``), each batch's labels, the kept object_ids (``with_ids``), rows read)."""
    table = source.table if embeddings else source
    name = source.name if embeddings else "the table"
    columns = list(dict.fromkeys(([EMBEDDING] if embeddings else []) + label_columns
                                 + ([OBJECT_ID] if with_ids else [])))
    if with_ids:
        require_columns(table.schema, [OBJECT_ID], name)
    xs, labels, ids, n_rows = [], [], [] if with_ids else None, 0
    for batch in table.iter_batches(columns=columns):
        n_rows += batch.num_rows
        keep, found = labels_of(batch)
        labels.append(found)
        if len(keep) and embeddings:
            xs.append(np.array(vectors_of(batch)[keep], dtype=np.float32))
        if len(keep) and with_ids:
            ids.extend(batch.column(OBJECT_ID).take(keep).to_pylist())
    if not embeddings:
        return np.empty((0, 0), np.float32), labels, ids, n_rows
    x = np.concatenate(xs) if xs else np.empty((0, source.dim), np.float32)
    xs.clear()
    check_finite_rows(x, name)
    return x, labels, ids, n_rows


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
