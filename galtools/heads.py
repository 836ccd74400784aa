"""Small models over embeddings (gal-photoz, gal-ood, gal-classify heads) as plain data: one ``.npz`` file.

The file holds named numpy arrays plus one JSON document (in the array ``__galtools__``) that says which tool wrote
it, with which galtools version, what kind of model it is, the embedding dimension and the sha256 of the encoder
whose embeddings it was trained on.  It is read with ``numpy.load(allow_pickle=False)``: opening a model never runs
code from it (no pickle anywhere), and any numpy can read the weights without galtools.

    save_head("photoz.model", {"w0": w, "b0": b}, tool="gal-photoz", kind="photoz-linear",
              embedding_dim=128, model_sha256=sha, extra={...})
    head = load_head("photoz.model", tool="gal-photoz")
    head.check_embeddings(dim=128, model_sha256=sha, name="emb.parquet")
"""
from __future__ import annotations

import json
import os
import time
import zipfile
from dataclasses import dataclass, field

import numpy as np

from galtools.errors import BadData, InputMissing, UsageProblem, brief
from galtools.io.files import atomic_file

FORMAT = "galtools.head/1"
META_KEY = "__galtools__"


def mlp_logits(x: np.ndarray, weights, biases) -> np.ndarray:
    """Forward pass of a head stored as plain arrays: x @ W + b per layer, ReLU between layers (numpy, no torch)."""
    hidden = np.asarray(x, dtype=np.float32)
    for i, (w, b) in enumerate(zip(weights, biases)):
        hidden = hidden @ w + b
        if i < len(weights) - 1:
            np.maximum(hidden, 0, out=hidden)
    return hidden


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

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.arrays[name]
        except KeyError:
            raise BadData(f"{self.path}: model file has no array '{name}' (has {', '.join(sorted(self.arrays))})",
                          f"re-create it with {self.meta.get('tool', 'the tool that wrote it')}") from None

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
              model_sha256: str | None, extra: dict | None = None, overwrite: bool = False) -> dict:
    """Write ``arrays`` and the metadata to ``path`` atomically (temporary file, then rename). Returns the metadata."""
    from galtools import __version__

    if META_KEY in arrays:
        raise ValueError(f"array name {META_KEY} is reserved")
    check_head_output(path, overwrite)
    meta = {"format": FORMAT, "tool": tool, "version": __version__, "kind": kind,
            "embedding_dim": int(embedding_dim), "model_sha256": model_sha256 or None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {})}
    payload = {name: np.asarray(value) for name, value in arrays.items()}
    for name, value in payload.items():
        if value.dtype == object:
            raise ValueError(f"array {name} has dtype object, which would need pickle")
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
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BadData(f"{path}: not a galtools model file (unknown format)", hint)
    if meta.get("tool") != tool:
        raise BadData(f"{path} is a {meta.get('tool')} model, not a {tool} one", hint)
    if kinds is not None and meta.get("kind") not in kinds:
        raise BadData(f"{path}: unknown {tool} model kind {meta.get('kind')!r}",
                      "it may come from a newer galtools; refit it with this version")
    return Head(path=path, arrays=arrays, meta=meta)


def sha256_of_file(path: str, chunk: int = 1 << 22) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
