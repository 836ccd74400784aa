"""A fitted photo-z head as plain arrays: predicting needs numpy only (no torch), from the saved weights.

The head is a linear layer (or a one-hidden-layer MLP with ReLU) from the embedding to ``n_bins`` logits
(galtools.heads' stacked linear layers, the input standardisation folded into the first); prediction is the
softmax over the bins and its summaries.  A fine-tuned model carries its encoder as ONNX bytes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from galtools.errors import BadData
from galtools.heads import Head, LinearModel, StackedLinear, load_head, save_head
from galtools.photoz.bins import RedshiftBins, summarise_pdf

TOOL = "gal-photoz"
KINDS = ("photoz-linear", "photoz-mlp", "photoz-finetuned")
TRAINING_IDS = "training_id_fingerprints"


@dataclass
class PhotozModel(LinearModel):
    linear: StackedLinear
    bins: RedshiftBins
    model_sha256: str | None = None
    info: dict = field(default_factory=dict)   # how it was fitted: seed, counts, losses ...
    encoder_onnx: bytes | None = None          # a fine-tuned encoder travels with its head (ONNX: data, not code)
    training_ids: np.ndarray | None = None     # sorted fingerprints of the object_ids it was fitted on (see eval)

    @property
    def kind(self) -> str:
        if self.encoder_onnx is not None:
            return "photoz-finetuned"
        return "photoz-linear" if self.linear.depth == 1 else "photoz-mlp"

    def predict_pdf(self, x: np.ndarray) -> np.ndarray:
        """(n, n_bins) float32 probabilities."""
        return self.linear.probabilities(x)

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """z_phot (pdf mean), z_phot_mode, z_phot_std and z_pdf for each row of ``x``."""
        pdf = self.predict_pdf(x)
        mean, mode, std = summarise_pdf(pdf, self.bins.centres)
        return {"z_phot": mean.astype(np.float32), "z_phot_mode": mode.astype(np.float32),
                "z_phot_std": std.astype(np.float32), "z_pdf": pdf}

    # -- files
    def save(self, path: str, overwrite: bool = False) -> dict:
        arrays = {}
        if self.encoder_onnx is not None:
            arrays["encoder_onnx"] = np.frombuffer(self.encoder_onnx, dtype=np.uint8)
        if self.training_ids is not None:
            arrays[TRAINING_IDS] = np.asarray(self.training_ids, dtype=np.uint64)
        return save_head(path, arrays, tool=TOOL, kind=self.kind, embedding_dim=self.embedding_dim,
                         model_sha256=self.model_sha256, linear=self.linear,
                         task={"n_bins": self.bins.n_bins, "zmax": self.bins.zmax}, info=self.info,
                         overwrite=overwrite)

    @classmethod
    def from_head(cls, head: Head) -> "PhotozModel":
        try:
            bins = RedshiftBins(int(head.task["n_bins"]), float(head.task["zmax"]))
        except (KeyError, TypeError, ValueError):
            raise BadData(f"{head.path}: the model records no valid redshift bins",
                          "refit it with gal-photoz fit") from None
        encoder = head.arrays.get("encoder_onnx")
        return cls(head.linear(bins.n_bins, "bins"), bins, head.model_sha256, head.info,
                   encoder_onnx=None if encoder is None else encoder.astype(np.uint8).tobytes(),
                   training_ids=head.arrays.get(TRAINING_IDS))

    @classmethod
    def load(cls, path: str) -> "PhotozModel":
        return cls.from_head(load_head(path, TOOL, KINDS))
