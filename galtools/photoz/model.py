"""A fitted photo-z head as plain arrays: predicting needs numpy only (no torch), from the saved weights.

The head is a linear layer (or a one-hidden-layer MLP with ReLU) from the embedding to ``n_bins`` logits; the
input standardisation learnt at fit time is folded into the first layer, so prediction is
``softmax(relu(x @ w0 + b0) @ w1 + b1)`` (or ``softmax(x @ w0 + b0)``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from galtools.heads import Head, load_head, mlp_logits, save_head
from galtools.photoz.bins import RedshiftBins, summarise_pdf

TOOL = "gal-photoz"
KINDS = ("photoz-linear", "photoz-mlp", "photoz-finetuned")


def softmax(logits: np.ndarray) -> np.ndarray:
    if logits.shape[0] == 0:
        return logits.copy()
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


@dataclass
class PhotozModel:
    weights: list[np.ndarray]          # (in, out) per layer
    biases: list[np.ndarray]           # (out,) per layer
    bins: RedshiftBins
    model_sha256: str | None = None
    info: dict = field(default_factory=dict)   # how it was fitted: seed, counts, losses ...
    encoder_onnx: bytes | None = None          # a fine-tuned encoder travels with its head (ONNX: data, not code)

    @property
    def kind(self) -> str:
        if self.encoder_onnx is not None:
            return "photoz-finetuned"
        return "photoz-linear" if len(self.weights) == 1 else "photoz-mlp"

    @property
    def embedding_dim(self) -> int:
        return int(self.weights[0].shape[0])

    def logits(self, x: np.ndarray) -> np.ndarray:
        return mlp_logits(x, self.weights, self.biases)

    def predict_pdf(self, x: np.ndarray) -> np.ndarray:
        """(n, n_bins) float32 probabilities."""
        return softmax(self.logits(x).astype(np.float32, copy=False))

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """z_phot (pdf mean), z_phot_mode, z_phot_std and z_pdf for each row of ``x``."""
        pdf = self.predict_pdf(x)
        mean, mode, std = summarise_pdf(pdf, self.bins.centres)
        return {"z_phot": mean.astype(np.float32), "z_phot_mode": mode.astype(np.float32),
                "z_phot_std": std.astype(np.float32), "z_pdf": pdf}

    # -- files
    def save(self, path: str, overwrite: bool = False) -> dict:
        arrays = {}
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            arrays[f"w{i}"] = np.asarray(w, dtype=np.float32)
            arrays[f"b{i}"] = np.asarray(b, dtype=np.float32)
        if self.encoder_onnx is not None:
            arrays["encoder_onnx"] = np.frombuffer(self.encoder_onnx, dtype=np.uint8)
        extra = {"n_bins": self.bins.n_bins, "zmax": self.bins.zmax, "layers": len(self.weights), **self.info}
        return save_head(path, arrays, tool=TOOL, kind=self.kind, embedding_dim=self.embedding_dim,
                         model_sha256=self.model_sha256, extra=extra, overwrite=overwrite)

    @classmethod
    def from_head(cls, head: Head) -> "PhotozModel":
        layers = int(head.meta.get("layers", 1))
        weights = [head[f"w{i}"] for i in range(layers)]
        biases = [head[f"b{i}"] for i in range(layers)]
        bins = RedshiftBins(int(head.meta["n_bins"]), float(head.meta["zmax"]))
        if weights[-1].shape[1] != bins.n_bins:
            from galtools.errors import BadData

            raise BadData(f"{head.path}: its last layer has {weights[-1].shape[1]} outputs for {bins.n_bins} bins",
                          "the file is damaged; refit it with gal-photoz fit")
        info = {k: v for k, v in head.meta.items()
                if k not in ("n_bins", "zmax", "layers", "format", "tool", "version", "kind", "embedding_dim",
                             "model_sha256", "created")}
        encoder = head.arrays.get("encoder_onnx")
        return cls(weights, biases, bins, head.model_sha256, info,
                   encoder_onnx=None if encoder is None else encoder.astype(np.uint8).tobytes())

    @classmethod
    def load(cls, path: str) -> "PhotozModel":
        return cls.from_head(load_head(path, TOOL, KINDS))
