"""A head task: what gal-photoz (redshift) and gal-classify (morphology) each are, and the code they share.

A task says four things, and nothing else (one subclass of ``HeadTask`` per task):

    labels    which columns hold the label, how a batch's labels are read and checked, what the rows found mean
              (``label_columns``, ``check_columns``, ``labels_of``, ``labelled``, ``check_count``)
    loss      the head's outputs and the cross-entropy targets the labels become (``n_outputs``, ``encode``,
              ``kernel``: class indices, or per-output probabilities such as vote fractions or smoothed bins)
    metrics   a prediction from the head's probabilities, the floor any method must beat, the curve's scores
              (``point``, ``floor``, ``metrics``, ``truth``)
    report    the model file, the prediction columns (a galtools.heads.apply ``Task``), the evaluation report
              (``model``, ``predictions``, ``evaluate``, ``format_report``, ``plot_report``)

Written once here, for every task: reading the labelled rows (``read_rows``), fitting a head on embeddings held in
memory or streamed from a large table (``fit_rows``, ``fit_table``), the probe arms of the label curve
(``label_curve``); galtools.finetune adds the networks on images and the curve's image baselines.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from galtools.errors import BadData, UsageProblem
from galtools.heads.format import LinearModel, StackedLinear, load_head, save_head
from galtools.heads.curve import Arm, format_curve, make_split, plot_curve, run_curve
from galtools.heads.rows import (InMemoryRows, LabelledRows, StreamedRows, read_labelled, validation_split)
from galtools.heads.source import OBJECT_ID, check_finite_rows, open_embeddings, require_columns
from galtools.io import EMBEDDING, display_name, open_table, vectors_of

log = logging.getLogger("galtools")

IN_MEMORY_BYTES = 2 << 30      # labelled embeddings up to this size are held in memory (tasks that can stream)


class HeadTask:
    """The interface of a head task (class attributes and methods a task overrides)."""

    name = "task"                # the report's "task"
    tool = "gal-task"            # the command, as model files and messages name it
    outputs = "outputs"          # what the head's outputs are, in messages ("bins", "classes")
    floor_method = "floor"       # the curve's baseline arm ("median", "majority")
    curve_fix = "use larger --fractions or more labelled rows"
    curve_metrics: tuple = ()    # the curve's columns: (key, title, format spec)
    curve_panels: tuple = ()     # the curve's plot: (key, axis label)
    curve_ylim = None
    streams = False              # fit_table may re-read a large table per pass (its targets: class indices)

    # ---------------------------------------------------------------------------------------------------- labels
    @property
    def label_columns(self) -> list[str]:
        raise NotImplementedError

    def check_columns(self, schema, name: str) -> None:
        """BadData (65) when the table lacks the label columns, or they have the wrong type."""
        raise NotImplementedError

    def labels_of(self, batch, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(the rows of ``batch`` that have a usable label, their labels)."""
        raise NotImplementedError

    def labelled(self, x, labels: list, ids, n_rows: int, name: str, model_sha256=None) -> LabelledRows:
        """The rows found (``labels``: each batch's), checked: BadData when too few to fit."""
        rows = LabelledRows(x, np.concatenate(labels) if labels else np.empty(0), self.label_info(), model_sha256,
                            n_rows, n_rows - sum(len(part) for part in labels), ids, name)
        self.check_count(rows)
        return rows

    def label_info(self):
        """What LabelledRows.labels holds for this task."""
        return None

    def check_count(self, rows: LabelledRows) -> None:
        if rows.count < 2:
            raise BadData(f"only {rows.count} labelled row; fitting needs a training and a validation row",
                          "give more labelled rows")

    # ------------------------------------------------------------------------------------------------------ loss
    def n_outputs(self, rows: LabelledRows) -> int:
        raise NotImplementedError

    def encode(self, rows: LabelledRows, val: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
        """(the cross-entropy targets of ``rows``: class indices, or (n, outputs) probabilities; facts about them
        for the model's record). ``val``: the validation rows, when fitting on embeddings."""
        return rows.targets, {}

    @property
    def kernel(self) -> np.ndarray | None:
        """Soft target of class index k (row k), or None: targets as they are."""
        return None

    # --------------------------------------------------------------------------------------------------- metrics
    def truth(self, rows: LabelledRows) -> np.ndarray:
        """What predictions are scored against (a redshift, a class index)."""
        return rows.targets

    def point(self, pdf: np.ndarray) -> np.ndarray:
        """The prediction from the head's probabilities (n, outputs)."""
        raise NotImplementedError

    def floor(self, truth: np.ndarray, count: int) -> np.ndarray:
        """The floor's prediction for ``count`` rows from the training rows' ``truth``."""
        raise NotImplementedError

    def metrics(self, predicted: np.ndarray, truth: np.ndarray) -> dict:
        """{'n': rows scored, each of ``curve_metrics``: value}."""
        raise NotImplementedError

    def min_labels(self, rows: LabelledRows) -> int:
        """The fewest labels a curve point may train on."""
        return max(self.n_outputs(rows), 2)

    # ---------------------------------------------------------------------------------------------------- report
    def fit_info(self, rows: LabelledRows) -> dict:
        """The task's own entries in the model's record."""
        return {}

    def model(self, linear, rows: LabelledRows, info: dict, model_sha256: str | None, encoder_onnx=None):
        """The task's model of the fitted layers (``encoder_onnx``: the trained encoder, for a network). By default
        a HeadModel whose file records ``model_task(rows)``."""
        if encoder_onnx is not None:
            raise NotImplementedError(f"{self.tool} model files carry no encoder")
        kind = f"{self.name}-{'linear' if linear.depth == 1 else 'mlp'}"
        return HeadModel(linear, self.tool, kind, self.model_task(rows), model_sha256, info)

    def model_task(self, rows: LabelledRows) -> dict:
        """What the default model file records under ``task`` (e.g. the classes)."""
        return {}

    def finish(self, model, path: str) -> None:
        """What the task records in a fitted model before it is saved (``path``: the labelled table)."""

    def describe(self, model) -> str:
        """More words for the log line of a fit (e.g. ", 3 classes")."""
        return ""

    def predictions(self, model, **options):
        """The galtools.heads.apply Task that adds the prediction columns."""
        raise NotImplementedError

    def evaluate(self, path: str, **options) -> "Evaluation":
        raise NotImplementedError

    def format_report(self, evaluation: "Evaluation") -> str:
        raise NotImplementedError

    def plot_report(self, evaluation: "Evaluation", path: str) -> None:
        raise NotImplementedError

    def curve_header(self) -> dict:
        """What the curve's JSON says about the labels besides its rows."""
        return {}

    def format_curve(self, rows: list[dict]) -> str:
        return format_curve(rows, list(self.curve_metrics))

    def plot_curve(self, rows: list[dict], path: str) -> None:
        plot_curve(rows, path, list(self.curve_panels), (self.floor_method,), self.curve_ylim)


@dataclass
class HeadModel(LinearModel):
    """A fitted head of a task without a model class of its own: its layers, its file's ``task`` keys, the record
    of the fit. ``predict_pdf`` needs numpy only."""

    linear: StackedLinear
    tool: str
    kind: str
    task: dict = field(default_factory=dict)
    model_sha256: str | None = None
    info: dict = field(default_factory=dict)

    def predict_pdf(self, x: np.ndarray) -> np.ndarray:
        return self.linear.probabilities(x)

    def save(self, path: str, overwrite: bool = False) -> dict:
        return save_head(path, {}, tool=self.tool, kind=self.kind, embedding_dim=self.embedding_dim,
                         model_sha256=self.model_sha256, linear=self.linear, task=self.task, info=self.info,
                         overwrite=overwrite)

    @classmethod
    def from_head(cls, head) -> "HeadModel":
        return cls(head.linear(), head.meta["tool"], head.kind, head.task, head.model_sha256, head.info)

    @classmethod
    def load(cls, path: str, tool: str, kinds: tuple[str, ...] | None = None) -> "HeadModel":
        return cls.from_head(load_head(path, tool, kinds))


@dataclass
class Evaluation:
    """An evaluation: the report (JSON: ``task``, ``n``, ``n_skipped`` and the task's metrics) and what its plot
    needs."""

    task: HeadTask
    report: dict
    data: object = None

    def text(self) -> str:
        return self.task.format_report(self)

    def plot(self, path: str) -> None:
        self.task.plot_report(self, path)


# ------------------------------------------------------------------------------------------------ labelled rows

def read_rows(task: HeadTask, source, with_ids: bool = False) -> LabelledRows:
    """The labelled rows of an open EmbeddingSource, in memory (with their object_ids)."""
    task.check_columns(source.table.schema, source.name)
    x, labels, ids, n_rows = read_labelled(source, task.label_columns, lambda b: task.labels_of(b, source.name),
                                           with_ids)
    return task.labelled(x, labels, ids, n_rows, source.name, source.model_sha256)


def read_labels(task: HeadTask, path: str) -> LabelledRows:
    """object_ids and labels of the rows of any table (embeddings or cutouts) that have a label (no features)."""
    name = display_name(path)
    with open_table(path) as table:
        require_columns(table.schema, [OBJECT_ID], name, "give a table from gal-sim, gal-pack or gal-embed")
        task.check_columns(table.schema, name)
        x, labels, ids, n_rows = read_labelled(table, task.label_columns, lambda b: task.labels_of(b, name),
                                               with_ids=True, embeddings=False)
    return task.labelled(np.empty((sum(len(p) for p in labels), 0), np.float32), labels, ids, n_rows, name)


# ------------------------------------------------------------------------------------------------------ fitting

def fit_rows(task: HeadTask, rows: LabelledRows, settings, progress=None):
    """Fit a head on labelled embeddings held in memory (a validation split of them for early stopping)."""
    from galtools.heads.train import train_head

    settings.validate()
    task.check_count(rows)
    x = np.ascontiguousarray(rows.x, dtype=np.float32)
    check_finite_rows(x, rows.name)
    val = validation_split(rows.count, settings.val_fraction, settings.seed)
    targets, facts = task.encode(rows, val)
    log.info(f"fitting on {int((~val).sum())} labelled rows, validating on {int(val.sum())}")
    linear, record = train_head(InMemoryRows(x[~val], targets[~val]), x[val], targets[val], x.shape[1],
                                task.n_outputs(rows), settings, task.kernel, progress)
    info = _info(task, rows, settings, int((~val).sum()), int(val.sum()), facts, record, streamed=False)
    return task.model(linear, rows, info, rows.model_sha256)


def fit_table(task: HeadTask, path: str, settings, progress=None):
    """Fit on an embedding table (a file, a folder of parts, or '-'); a task that ``streams`` re-reads a table
    whose labelled embeddings exceed IN_MEMORY_BYTES once per pass (or always with ``settings.stream``)."""
    settings.validate()
    wanted = getattr(settings, "stream", None) if task.streams else False
    with open_embeddings(path) as source:
        task.check_columns(source.table.schema, source.name)
        if path == "-" and wanted:
            raise UsageProblem("--stream needs a file: a pipe cannot be read once per pass",
                               "write the embeddings to a file first")
        if path == "-" or wanted is False:
            return fit_rows(task, read_rows(task, source), settings, progress)
        where, labels, n_rows = [], [], 0
        for batch in source.table.iter_batches(columns=task.label_columns):   # the labels alone, first
            keep, found = task.labels_of(batch, source.name)
            where.append(n_rows + keep)
            labels.append(found)
            n_rows += batch.num_rows
        rows = task.labelled(None, labels, None, n_rows, source.name, source.model_sha256)
        dim = source.dim
    if not (wanted or rows.count * dim * 4 > IN_MEMORY_BYTES):
        with open_embeddings(path) as source:
            return fit_rows(task, read_rows(task, source), settings, progress)
    return _fit_streamed(task, path, rows, np.concatenate(where), dim, settings, progress)


def _fit_streamed(task, path, rows, labelled_rows, dim, settings, progress):
    from galtools.heads.train import train_head

    val = validation_split(rows.count, settings.val_fraction, settings.seed)
    y, facts = task.encode(rows, val)
    label_of_row = np.full(rows.n_rows, -1, dtype=np.int16)
    label_of_row[labelled_rows[~val]] = y[~val]
    val_rows = labelled_rows[val]
    val_x = np.empty((len(val_rows), dim), dtype=np.float32)
    with open_table(path) as table:     # one pass: collect the validation rows and check for NaNs
        start, filled = 0, 0
        for batch in table.iter_batches(columns=[EMBEDDING]):
            stop = start + batch.num_rows
            x = vectors_of(batch)
            check_finite_rows(x[labelled_rows[(labelled_rows >= start) & (labelled_rows < stop)] - start], rows.name)
            here = val_rows[(val_rows >= start) & (val_rows < stop)] - start
            val_x[filled:filled + len(here)] = x[here]
            filled += len(here)
            start = stop
    streamed = StreamedRows(path, label_of_row, dim)
    log.info(f"fitting on {streamed.count} labelled rows (streamed from {rows.name}), validating on {len(val_rows)}")
    linear, record = train_head(streamed, val_x, y[val], dim, task.n_outputs(rows), settings, task.kernel, progress)
    info = _info(task, rows, settings, streamed.count, len(val_rows), facts, record, streamed=True)
    return task.model(linear, rows, info, rows.model_sha256)


def _info(task, rows, settings, n_train, n_val, facts, record, streamed) -> dict:
    info = {"n_train": n_train, "n_val": n_val, **task.fit_info(rows), **facts, "settings": asdict(settings),
            "training": record, "seed": settings.seed}
    if task.streams:
        info["streamed"] = streamed
    return info


# -------------------------------------------------------------------------------------------------- the curve

def probe_arm(method: str, task: HeadTask, rows: LabelledRows, settings) -> Arm:
    """The probe (linear, or MLP with --hidden) on the features ``rows.x``."""
    def run(train, test):
        model = fit_rows(task, rows.subset(train), replace(settings))
        return task.point(model.linear.probabilities(rows.x[test])), model.info["training"]

    return Arm(method, run)


def label_curve(task: HeadTask, rows: LabelledRows, fractions: list[float], settings, test_fraction: float = 0.2,
                more_arms=None) -> list[dict]:
    """Rows of the label-efficiency curve: the task's floor and the probe on the embeddings for each usable
    fraction, and the arms ``more_arms(task, rows)`` adds (galtools.finetune: the baselines on the cutouts)."""
    split = make_split(rows.count, fractions, test_fraction, settings.seed, task.min_labels(rows), task.outputs,
                       task.curve_fix)
    truth = task.truth(rows)

    def floor(train, test):
        return task.floor(truth[train], len(test)), None

    probe = "linear" if settings.hidden is None else f"mlp{settings.hidden}"
    arms = [Arm(task.floor_method, floor, baseline=True), probe_arm(probe, task, rows, settings)]
    if more_arms is not None:
        arms += more_arms(task, rows)
    return run_curve(split, arms, lambda predicted, test: task.metrics(predicted, truth[test]))
