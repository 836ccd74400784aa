"""Small models over embeddings (gal-photoz, gal-ood, gal-classify heads) as plain data: one ``.npz`` file.

The file holds named numpy arrays plus one JSON document (in the array ``__galtools__``) that says which tool wrote
it, with which galtools version, what kind of model it is, the embedding dimension and the sha256 of the encoder
whose embeddings it was trained on.  It is read with ``numpy.load(allow_pickle=False)``: opening a model never runs
code from it (no pickle anywhere), and any numpy can read the weights without galtools.

One representation for every network head: a stack of linear layers ``w0, b0, w1, b1 ...`` (ReLU between them),
their number in ``layers``; what belongs to one task (redshift bins, classes, the OOD method) is under ``task``;
the record of the fit (seed, counts, losses) is the rest of the document.

    save_head("photoz.model", {}, tool="gal-photoz", kind="photoz-linear", embedding_dim=128, model_sha256=sha,
              linear=StackedLinear(weights, biases), task={"n_bins": 180, "zmax": 0.4}, info={...})
    head = load_head("photoz.model", tool="gal-photoz")
    head.linear().probabilities(x); head.task["n_bins"]; head.info["seed"]

Files of the first format (``galtools.head/1``, task keys at the top level) are still read: their task is the
whole document.
"""
from __future__ import annotations

import json
import os
import time
import zipfile
from dataclasses import dataclass, field

import numpy as np

from galtools.errors import BadData, brief, InputMissing, UsageProblem
from galtools.io.files import atomic_file

FORMAT = "galtools.head/2"
READABLE = (FORMAT, "galtools.head/1")
META_KEY = "__galtools__"
HEADER = ("format", "tool", "version", "kind", "embedding_dim", "model_sha256", "created", "layers", "task")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (float32 in, float32 out), stable for large logits."""
    if logits.shape[0] == 0:
        return logits.copy()
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


@dataclass
class StackedLinear:
    """x @ W + b per layer, ReLU between layers (numpy, no torch): a linear probe, or an MLP."""

    weights: list[np.ndarray]          # (in, out) per layer
    biases: list[np.ndarray]           # (out,) per layer

    @property
    def embedding_dim(self) -> int:
        return int(self.weights[0].shape[0])

    @property
    def n_outputs(self) -> int:
        return int(self.weights[-1].shape[1])

    @property
    def depth(self) -> int:
        return len(self.weights)

    def logits(self, x: np.ndarray) -> np.ndarray:
        hidden = np.asarray(x, dtype=np.float32)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            hidden = hidden @ w + b
            if i < len(self.weights) - 1:
                np.maximum(hidden, 0, out=hidden)
        return hidden

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(n, outputs) float32 softmax of the logits."""
        return softmax(self.logits(x).astype(np.float32, copy=False))

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            out[f"w{i}"] = np.asarray(w, dtype=np.float32)
            out[f"b{i}"] = np.asarray(b, dtype=np.float32)
        return out


class LinearModel:
    """What a task's model built on a StackedLinear ``linear`` shares: its layers and input size."""

    linear: StackedLinear

    @property
    def weights(self) -> list[np.ndarray]:
        return self.linear.weights

    @property
    def biases(self) -> list[np.ndarray]:
        return self.linear.biases

    @property
    def embedding_dim(self) -> int:
        return self.linear.embedding_dim


@dataclass
class Head:
    """A loaded small model: its arrays and its metadata (``meta['tool']``, ``meta['kind']`` ...)."""

    path: str
    arrays: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "")

    @property
    def embedding_dim(self) -> int:
        return int(self.meta["embedding_dim"])

    @property
    def model_sha256(self) -> str | None:
        return self.meta.get("model_sha256") or None

    @property
    def task(self) -> dict:
        """What belongs to the task (bins, classes, method ...)."""
        if self.meta.get("format") == FORMAT:
            return dict(self.meta.get("task") or {})
        return {k: v for k, v in self.meta.items() if k not in HEADER}

    @property
    def info(self) -> dict:
        """The record of the fit: everything in the document outside the header."""
        return {k: v for k, v in self.meta.items() if k not in HEADER}

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.arrays[name]
        except KeyError:
            raise BadData(f"{self.path}: model file has no array '{name}' (has {', '.join(sorted(self.arrays))})",
                          self._refit) from None

    @property
    def _refit(self) -> str:
        return f"the file is damaged; refit it with {self.meta.get('tool', 'the tool that wrote it')} fit"

    def linear(self, n_outputs: int | None = None, what: str = "outputs") -> StackedLinear:
        """The stacked linear layers; BadData when their shapes do not chain, or (with ``n_outputs``) when the
        last layer does not have that many outputs."""
        layers = int(self.meta.get("layers", 1))
        stack = StackedLinear([self[f"w{i}"] for i in range(layers)], [self[f"b{i}"] for i in range(layers)])
        shapes_chain = layers >= 1 and stack.embedding_dim == self.embedding_dim and all(
            w.ndim == 2 and b.shape == (w.shape[1],) for w, b in zip(stack.weights, stack.biases)) and all(
            a.shape[1] == b.shape[0] for a, b in zip(stack.weights[:-1], stack.weights[1:]))
        if not shapes_chain:
            raise BadData(f"{self.path}: its layers do not chain from {self.embedding_dim}-d embeddings", self._refit)
        if n_outputs is not None and stack.n_outputs != n_outputs:
            raise BadData(f"{self.path}: its last layer has {stack.n_outputs} outputs for {n_outputs} {what}",
                          self._refit)
        return stack

    def check_embeddings(self, dim: int, model_sha256: str | None, name: str, log=None) -> None:
        """BadData (65) when embeddings of size ``dim`` from encoder ``model_sha256`` do not fit this model."""
        tool = self.meta.get("tool", "the tool")
        if dim != self.embedding_dim:
            raise BadData(f"{name} has {dim}-d embeddings but {self.path} was fitted on {self.embedding_dim}-d ones",
                          f"embed with the encoder the model was fitted on, or refit it with {tool}")
        mine = self.model_sha256
        if mine and model_sha256 and mine != model_sha256:
            raise BadData(f"{name} was embedded by another encoder than the one {self.path} was fitted on "
                          f"(model sha256 {model_sha256[:12]} vs {mine[:12]})",
                          f"embed it with the same encoder.onnx, or refit with {tool}")
        if log is not None and bool(mine) != bool(model_sha256):
            log.warning(f"cannot check that {name} and {self.path} come from the same encoder "
                        "(one of them records no galtools.model_sha256)")


def save_head(path: str, arrays: dict[str, np.ndarray], *, tool: str, kind: str, embedding_dim: int,
              model_sha256: str | None, linear: StackedLinear | None = None, task: dict | None = None,
              info: dict | None = None, overwrite: bool = False) -> dict:
    """Write the layers of ``linear``, the task's ``arrays`` and the metadata to ``path`` atomically (temporary
    file, then rename). Returns the metadata."""
    from galtools import __version__

    clash = [name for name in (info or {}) if name in HEADER]
    if clash:
        raise ValueError(f"info keys {clash} are reserved for the header")
    payload = dict(linear.arrays()) if linear is not None else {}
    for name, value in arrays.items():
        if name == META_KEY or name in payload:
            raise ValueError(f"array name {name} is reserved")
        payload[name] = np.asarray(value)
    for name, value in payload.items():
        if value.dtype == object:
            raise ValueError(f"array {name} has dtype object, which would need pickle")
    check_head_output(path, overwrite)
    meta = {"format": FORMAT, "tool": tool, "version": __version__, "kind": kind,
            "embedding_dim": int(embedding_dim), "model_sha256": model_sha256 or None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "layers": linear.depth if linear is not None else 0, "task": dict(task or {}), **(info or {})}
    payload[META_KEY] = np.array(json.dumps(meta, sort_keys=True))
    with atomic_file(path) as temporary, open(temporary, "wb") as stream:
        np.savez(stream, **payload)
    return meta


def check_head_output(path: str, overwrite: bool) -> None:
    """Fail before any work when the model file cannot or must not be written."""
    from galtools.io import check_output_path

    if path == "-":
        raise UsageProblem("a model file cannot go to stdout", "give a file name with -o")
    check_output_path(path, overwrite)


def load_head(path: str, tool: str, kinds: tuple[str, ...] | None = None) -> Head:
    """Read a model file written by ``tool``; BadData (65) for anything else, InputMissing (66) when absent."""
    if not os.path.isfile(path):
        raise InputMissing(f"{path}: no such model file", f"make one with '{tool} fit'")
    hint = f"give a model written by '{tool} fit'"
    try:
        with np.load(path, allow_pickle=False) as data:
            if META_KEY not in data.files:
                raise BadData(f"{path}: not a galtools model file (no metadata)", hint)
            meta = json.loads(str(data[META_KEY]))
            arrays = {name: data[name] for name in data.files if name != META_KEY}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, json.JSONDecodeError) as exc:
        if "pickle" in str(exc):   # numpy's advice to load it unsafely is not ours to give: a model is data only
            raise BadData(f"{path}: not a galtools model file: it holds pickled Python objects, which galtools never "
                          "loads", hint) from None
        raise BadData(f"{path}: not a galtools model file ({brief(exc, 80)})", hint) from None
    if not isinstance(meta, dict) or meta.get("format") not in READABLE:
        raise BadData(f"{path}: not a galtools model file (unknown format)", hint)
    if meta.get("tool") != tool:
        raise BadData(f"{path} is a {meta.get('tool')} model, not a {tool} one", hint)
    if kinds is not None and meta.get("kind") not in kinds:
        raise BadData(f"{path}: unknown {tool} model kind {meta.get('kind')!r}",
                      "it may come from a newer galtools; refit it with this version")
    return Head(path=path, arrays=arrays, meta=meta)
