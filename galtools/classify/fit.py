"""Fitting the classifier on frozen embeddings: cross-entropy against hard labels or soft (vote-fraction) targets.

With targets t (each row sums to 1) and predicted probabilities q = softmax(logits), the loss is
``-mean_i sum_c t_ic log q_ic``; a hard label is the one-hot special case, ``-mean_i log q_i,label_i``.
The fitting is galtools.heads.task's with the morphology task (galtools.classify.task.MorphologyTask): torch's
``cross_entropy`` takes class indices and class probabilities alike.  The labelled rows are held in memory
(labels are the scarce part: 100k labelled 2048-d embeddings are 0.8 GB).
"""
from __future__ import annotations

from dataclasses import dataclass

from galtools.classify.labels import LabelSpec, label_spec
from galtools.classify.model import ClassifierModel
from galtools.classify.task import MorphologyTask
from galtools.heads import task as heads
from galtools.heads.rows import LabelledRows
from galtools.heads.source import open_embeddings
from galtools.heads.train import TrainSettings

__all__ = ["ClassifySettings", "LabelledRows", "fit_rows", "fit_table", "read_labelled", "settings_of"]


@dataclass
class ClassifySettings(TrainSettings):
    """The training settings of galtools.heads; the classes come from the labels."""


def settings_of(label_options: dict, training: dict, on_images: bool = False,
                probe: bool = True) -> tuple[MorphologyTask, ClassifySettings]:
    """The task and settings from the command line's label and training options (--batch-size and --lr default
    to the probe's or, ``on_images``, the network's values)."""
    from galtools.finetune import resolve_training

    spec = label_spec(label_options["label"], label_options["soft_labels"], label_options["classes"])
    return MorphologyTask(spec), ClassifySettings(**resolve_training(training, on_images, probe)).validate()


def read_labelled(path: str, spec: LabelSpec, with_ids: bool = False) -> LabelledRows:
    """The rows of an embedding table that have a usable label, in memory (with their object_ids)."""
    with open_embeddings(path) as source:
        return heads.read_rows(MorphologyTask(spec), source, with_ids)


def fit_rows(rows: LabelledRows, settings: ClassifySettings) -> ClassifierModel:
    """Fit a classifier on labelled rows (``rows.labels``: their LabelSpec, classes filled in)."""
    return heads.fit_rows(MorphologyTask(rows.labels), rows, settings)


def fit_table(path: str, spec: LabelSpec, settings: ClassifySettings) -> ClassifierModel:
    """Fit on the labelled rows of an embedding table (a file, a folder of parts, or '-')."""
    return heads.fit_table(MorphologyTask(spec), path, settings)
