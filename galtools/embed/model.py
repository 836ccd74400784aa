"""What gal-embed needs to know about an ``encoder.onnx`` before running it, read from the file alone.

The contract (written by ``gal-train``'s export): input ``image`` float32 [batch, bands, S, S], already preprocessed;
output ``embedding`` float32 [batch, D]; ``metadata_props`` carry the band names, S, the fitted preprocessing and D.
Everything is checked against the graph's own declared shapes, so that a model and its metadata cannot disagree
silently.  Only numpy and ONNX Runtime are needed (no ``onnx``, no torch).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from galtools.errors import BadData, InputMissing
from galtools.preprocess import Preprocess
from galtools.io import meta

INPUT_NAME = "image"
OUTPUT_NAME = "embedding"
REQUIRED_KEYS = (meta.BANDS, meta.INPUT_SIZE, meta.PREPROCESS)
EXPORT_HINT = "give an encoder.onnx written by gal-train (or re-export it with 'gal-train export')"


@dataclass(frozen=True)
class ModelInfo:
    """An encoder file and what its metadata promises."""

    path: str
    sha256: str
    bands: tuple[str, ...]
    input_size: int
    embedding_dim: int
    preprocess: Preprocess
    arch: str
    metadata: dict


def check_model_file(path: str) -> None:
    """A missing model is exit 66 (before any work); an unreadable one too."""
    if not os.path.exists(path):
        raise InputMissing(f"{path}: no such model file", "give the encoder.onnx written by gal-train (--model)")
    if os.path.isdir(path):
        raise InputMissing(f"{path}: is a folder, not a model file", "give RUN/encoder.onnx")
    if not os.access(path, os.R_OK):
        raise InputMissing(f"{path}: cannot be read", "check the file's permissions")


def file_sha256(path: str, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _positive_int(metadata: dict, key: str, path: str) -> int:
    text = metadata.get(key, "")
    try:
        value = int(text)
    except ValueError:
        raise BadData(f"{path}: metadata {key}={text!r} is not an integer", EXPORT_HINT) from None
    if value < 1:
        raise BadData(f"{path}: metadata {key}={value} must be positive", EXPORT_HINT)
    return value


def _declared(dim) -> int | None:
    """A dimension as ONNX Runtime reports it: an int when fixed, a name or None when dynamic."""
    return dim if isinstance(dim, int) and dim > 0 else None


def describe(session, path: str, sha256: str) -> ModelInfo:
    """Check a session's graph and metadata against the encoder contract; BadData (65) names what is wrong."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise BadData(f"{path}: the graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}, "
                      f"not '{INPUT_NAME}' -> '{OUTPUT_NAME}'", EXPORT_HINT)
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    missing = [key for key in REQUIRED_KEYS if not metadata.get(key)]
    if missing:
        raise BadData(f"{path}: the model lacks metadata {', '.join(missing)}", EXPORT_HINT)
    bands = tuple(b.strip() for b in metadata[meta.BANDS].split(",") if b.strip())
    size = _positive_int(metadata, meta.INPUT_SIZE, path)
    preprocess = Preprocess.from_json(metadata[meta.PREPROCESS])
    if tuple(preprocess.bands) != bands:
        raise BadData(f"{path}: metadata bands {','.join(bands)} differ from the preprocessing's "
                      f"{','.join(preprocess.bands)}", EXPORT_HINT)

    image = inputs[INPUT_NAME]
    if image.type != "tensor(float)" or len(image.shape) != 4:
        raise BadData(f"{path}: input '{INPUT_NAME}' is {image.type} {image.shape}, not float [batch, bands, S, S]",
                      EXPORT_HINT)
    declared = [_declared(d) for d in image.shape[1:]]
    expected = [len(bands), size, size]
    if any(d is not None and d != e for d, e in zip(declared, expected)):
        raise BadData(f"{path}: input '{INPUT_NAME}' has shape {image.shape[1:]} but the metadata says "
                      f"{len(bands)} bands ({','.join(bands)}) of {size}x{size}", EXPORT_HINT)
    if _declared(image.shape[0]) not in (None,):
        raise BadData(f"{path}: input '{INPUT_NAME}' has a fixed batch size {image.shape[0]}",
                      "export with a dynamic batch axis (gal-train export does)")

    embedding = outputs[OUTPUT_NAME]
    if embedding.type != "tensor(float)" or len(embedding.shape) != 2:
        raise BadData(f"{path}: output '{OUTPUT_NAME}' is {embedding.type} {embedding.shape}, not float [batch, D]",
                      EXPORT_HINT)
    dim = _declared(embedding.shape[1])
    if meta.EMBEDDING_DIM in metadata:
        stated = _positive_int(metadata, meta.EMBEDDING_DIM, path)
        if dim is not None and stated != dim:
            raise BadData(f"{path}: output '{OUTPUT_NAME}' has {dim} dimensions, the metadata says {stated}", EXPORT_HINT)
        dim = stated
    if dim is None:
        raise BadData(f"{path}: the embedding size is neither fixed in the graph nor in metadata {meta.EMBEDDING_DIM}",
                      EXPORT_HINT)
    return ModelInfo(path=path, sha256=sha256, bands=bands, input_size=size, embedding_dim=dim,
                     preprocess=preprocess, arch=metadata.get(meta.ARCH, "unknown"), metadata=metadata)
