"""A fitted morphology classifier as plain arrays: predicting needs numpy only (no torch).

The head is galtools.heads' stacked linear layers (a linear layer, or a one-hidden-layer MLP with ReLU) from the
embedding to one logit per class, the input standardisation folded into the first layer:
``softmax(relu(x @ w0 + b0) @ w1 + b1)`` or ``softmax(x @ w0 + b0)``.  The file's task records the classes and
where their labels came from (a label column, or vote-fraction columns), so ``eval`` can find the truth by itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from galtools.classify.labels import LabelSpec
from galtools.errors import BadData
from galtools.heads import Head, LinearModel, StackedLinear, load_head, save_head

TOOL = "gal-classify"
KINDS = ("classify-linear", "classify-mlp")


@dataclass
class ClassifierModel(LinearModel):
    linear: StackedLinear
    labels: LabelSpec                  # classes (in output order) and where they came from
    model_sha256: str | None = None    # the encoder whose embeddings it was fitted on
    info: dict = field(default_factory=dict)   # how it was fitted: seed, counts, losses ...

    @property
    def classes(self) -> tuple[str, ...]:
        return self.labels.classes

    @property
    def kind(self) -> str:
        return "classify-linear" if self.linear.depth == 1 else "classify-mlp"

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(n, classes) float32 probabilities."""
        return self.linear.probabilities(x)

    # -- files
    def save(self, path: str, overwrite: bool = False) -> dict:
        return save_head(path, {}, tool=TOOL, kind=self.kind, embedding_dim=self.embedding_dim,
                         model_sha256=self.model_sha256, linear=self.linear, task={"labels": self.labels.to_json()},
                         info=self.info, overwrite=overwrite)

    @classmethod
    def from_head(cls, head: Head) -> "ClassifierModel":
        try:
            labels = LabelSpec.from_json(head.task["labels"])
        except (KeyError, TypeError):
            raise BadData(f"{head.path}: the model records no classes", "refit it with gal-classify fit") from None
        return cls(head.linear(len(labels.classes), "classes"), labels, head.model_sha256, head.info)

    @classmethod
    def load(cls, path: str) -> "ClassifierModel":
        return cls.from_head(load_head(path, TOOL, KINDS))
