"""A fitted morphology classifier as plain arrays: predicting needs numpy only (no torch).

The head is a linear layer (or a one-hidden-layer MLP with ReLU) from the embedding to one logit per class, with
the input standardisation folded into the first layer (as gal-photoz's heads, whose training loop fits it):
``softmax(relu(x @ w0 + b0) @ w1 + b1)`` or ``softmax(x @ w0 + b0)``.  The file also records the classes and where
their labels came from (a label column, or vote-fraction columns), so ``eval`` can find the truth by itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from galtools.classify.labels import LabelSpec
from galtools.errors import BadData
from galtools.heads import Head, load_head, mlp_logits, save_head
from galtools.photoz.model import softmax

TOOL = "gal-classify"
KINDS = ("classify-linear", "classify-mlp")
_META_KEYS = ("format", "tool", "version", "kind", "embedding_dim", "model_sha256", "created", "layers", "labels")


@dataclass
class ClassifierModel:
    weights: list[np.ndarray]          # (in, out) per layer
    biases: list[np.ndarray]           # (out,) per layer
    labels: LabelSpec                  # classes (in output order) and where they came from
    model_sha256: str | None = None    # the encoder whose embeddings it was fitted on
    info: dict = field(default_factory=dict)   # how it was fitted: seed, counts, losses ...

    @property
    def classes(self) -> tuple[str, ...]:
        return self.labels.classes

    @property
    def kind(self) -> str:
        return "classify-linear" if len(self.weights) == 1 else "classify-mlp"

    @property
    def embedding_dim(self) -> int:
        return int(self.weights[0].shape[0])

    def logits(self, x: np.ndarray) -> np.ndarray:
        return mlp_logits(x, self.weights, self.biases)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(n, classes) float32 probabilities."""
        return softmax(self.logits(x).astype(np.float32, copy=False))

    # -- files
    def save(self, path: str, overwrite: bool = False) -> dict:
        arrays = {}
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            arrays[f"w{i}"] = np.asarray(w, dtype=np.float32)
            arrays[f"b{i}"] = np.asarray(b, dtype=np.float32)
        extra = {"layers": len(self.weights), "labels": self.labels.to_json(), **self.info}
        return save_head(path, arrays, tool=TOOL, kind=self.kind, embedding_dim=self.embedding_dim,
                         model_sha256=self.model_sha256, extra=extra, overwrite=overwrite)

    @classmethod
    def from_head(cls, head: Head) -> "ClassifierModel":
        layers = int(head.meta.get("layers", 1))
        weights = [head[f"w{i}"] for i in range(layers)]
        biases = [head[f"b{i}"] for i in range(layers)]
        try:
            labels = LabelSpec.from_json(head.meta["labels"])
        except (KeyError, TypeError):
            raise BadData(f"{head.path}: the model records no classes", "refit it with gal-classify fit") from None
        if weights[-1].shape[1] != len(labels.classes):
            raise BadData(f"{head.path}: its last layer has {weights[-1].shape[1]} outputs for "
                          f"{len(labels.classes)} classes", "the file is damaged; refit it with gal-classify fit")
        info = {k: v for k, v in head.meta.items() if k not in _META_KEYS}
        return cls(weights, biases, labels, head.model_sha256, info)

    @classmethod
    def load(cls, path: str) -> "ClassifierModel":
        return cls.from_head(load_head(path, TOOL, KINDS))
