"""A label-free whitening of an encoder's embeddings, fitted on a cutout table and appended to ``encoder.onnx``.

Cosine similarity of raw embeddings is dominated by a few directions of large variance and by the mean embedding
that every galaxy shares.  PCA whitening with shrinkage, fitted on the survey's own embeddings without labels,

    z = (x - mean) @ V_d diag(lambda_d + shrink * mean(lambda))^(-1/2)

(lambda, V: eigenvalues and eigenvectors of the embeddings' covariance, the d largest kept) evens them out.
``shrink`` 0 is full whitening (it amplifies noise directions); large ``shrink`` tends to plain centring.

The transform becomes the encoder's last two graph nodes (Sub, MatMul) with its parameters as initializers and
its provenance in the metadata (``galtools.whiten``), so gal-embed, and every tool that embeds through it (gal-knn,
gal-view), applies it with nothing more to store or to remember.  The fit reads the embeddings once, keeping only
their sum and cross-products (constant memory, any table size).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from galtools.embed.model import OUTPUT_NAME, file_sha256
from galtools.errors import BadData, UsageProblem
from galtools.io import EMBEDDING, check_output_path
from galtools.io.files import atomic_file

WHITEN_KEY = "galtools.whiten"
DIM_KEY = "galtools.embedding_dim"
DEFAULT_SHRINK = 3.0
MEAN_NAME, MATRIX_NAME = "galtools_whiten_mean", "galtools_whiten_matrix"
RAW_NAME, CENTRED_NAME = "embedding_unwhitened", "embedding_centred"
PARITY_TOLERANCE = 1e-4
RANK_FLOOR = 1e-10           # eigenvalues below this share of the largest count as zero (for shrink 0)


class Moments:
    """A sink (see galtools.io.sink) that keeps the count, sum and cross-products of the ``embedding`` column,
    shifted by the first batch's mean so that large offsets do not cancel digits."""

    def __init__(self):
        self.rows, self.shift, self.sum, self.products = 0, None, None, None

    def expect_schema(self, schema) -> None:
        pass

    def write(self, batch) -> None:
        column = batch.column(EMBEDDING)
        if hasattr(column, "combine_chunks"):
            column = column.combine_chunks()
        values = np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float64)
        self.add(values.reshape(len(batch), -1))

    def add(self, x: np.ndarray) -> None:
        if not len(x):
            return
        if self.shift is None:
            self.shift = x.mean(axis=0)
            self.sum, self.products = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
        centred = x - self.shift
        self.rows += len(x)
        self.sum += centred.sum(axis=0)
        self.products += centred.T @ centred

    def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        if self.rows < 2:
            raise BadData(f"a whitening needs the embeddings of at least 2 cutouts, the table gave {self.rows}",
                          "fit it on the survey's cutouts (thousands of them)")
        offset = self.sum / self.rows
        covariance = (self.products - self.rows * np.outer(offset, offset)) / (self.rows - 1)
        return self.shift + offset, (covariance + covariance.T) / 2


@dataclass
class Whitening:
    mean: np.ndarray        # (D,)
    matrix: np.ndarray      # (D, d)
    eigenvalues: np.ndarray  # (d,) kept, largest first
    shrink: float
    rows: int

    def apply(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) @ self.matrix


def fit(moments: Moments, dim: int | None = None, shrink: float = DEFAULT_SHRINK) -> Whitening:
    """The whitening of the embeddings summarised by ``moments``, keeping ``dim`` dimensions (default: all)."""
    mean, covariance = moments.mean_and_covariance()
    width = len(mean)
    dim = width if dim is None else dim
    if not 1 <= dim <= width:
        raise UsageProblem(f"--dim {dim} is outside 1..{width}, the encoder's embedding size",
                           f"give at most {width}, or leave it out to keep every dimension")
    if not (shrink >= 0 and np.isfinite(shrink)):
        raise UsageProblem(f"--shrink {shrink} must be a number >= 0", f"the default is {DEFAULT_SHRINK:g}")
    values, vectors = np.linalg.eigh(covariance)
    values = np.clip(values, 0.0, None)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    # a fixed sign per eigenvector (largest component positive): the same fit gives the same file
    vectors *= np.where(vectors[np.abs(vectors).argmax(axis=0), np.arange(width)] < 0, -1.0, 1.0)
    scale = values[:dim] + shrink * values.mean()
    if not (scale > RANK_FLOOR * max(values[0], 1e-300)).all():
        rank = int((values > RANK_FLOOR * max(values[0], 1e-300)).sum())
        raise BadData(f"the embeddings span only {rank} of {width} dimensions, so whitening {dim} of them divides "
                      "by zero", f"give --dim {max(rank, 1)} or a --shrink above 0")
    return Whitening(mean, vectors[:, :dim] / np.sqrt(scale), values[:dim], float(shrink), moments.rows)


def whitened_model(model, whitening: Whitening, provenance: dict):
    """``model`` (an onnx ModelProto with output 'embedding') with Sub + MatMul appended after its output."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    for node in graph.node:
        node.output[:] = [RAW_NAME if name == OUTPUT_NAME else name for name in node.output]
        node.input[:] = [RAW_NAME if name == OUTPUT_NAME else name for name in node.input]
    for info in graph.value_info:
        if info.name == OUTPUT_NAME:
            info.name = RAW_NAME
    graph.initializer.extend([numpy_helper.from_array(whitening.mean.astype(np.float32), MEAN_NAME),
                              numpy_helper.from_array(whitening.matrix.astype(np.float32), MATRIX_NAME)])
    graph.node.extend([helper.make_node("Sub", [RAW_NAME, MEAN_NAME], [CENTRED_NAME], name="galtools_whiten_sub"),
                       helper.make_node("MatMul", [CENTRED_NAME, MATRIX_NAME], [OUTPUT_NAME],
                                        name="galtools_whiten_matmul")])
    output = next(o for o in graph.output if o.name == OUTPUT_NAME)
    batch = output.type.tensor_type.shape.dim[0]
    graph.output.remove(output)
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT,
                                                      [batch.dim_param or batch.dim_value or "batch",
                                                       whitening.matrix.shape[1]]))
    metadata = {p.key: p.value for p in model.metadata_props}
    metadata.update({DIM_KEY: str(whitening.matrix.shape[1]), WHITEN_KEY: json.dumps(provenance, sort_keys=True)})
    helper.set_model_props(model, metadata)
    return model


def stored_whitening(path: str) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """(mean, matrix, provenance) stored in a whitened encoder.onnx, or None for an encoder without one."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    metadata = {p.key: p.value for p in model.metadata_props}
    if WHITEN_KEY not in metadata:
        return None
    tensors = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in (MEAN_NAME, MATRIX_NAME)}
    return tensors[MEAN_NAME], tensors[MATRIX_NAME], json.loads(metadata[WHITEN_KEY])


def _check_parity(path: str, original: str, whitening: Whitening, input_shape: tuple[int, ...]) -> float:
    """The written graph against numpy applying the transform to the original graph's output, on unit normals."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    old, new = (ort.InferenceSession(p, providers=["CPUExecutionProvider"]) for p in (original, path))
    worst = 0.0
    for n in (1, 37):
        image = rng.standard_normal((n, *input_shape), dtype=np.float32)
        expected = whitening.apply(old.run([OUTPUT_NAME], {"image": image})[0])
        got = new.run([OUTPUT_NAME], {"image": image})[0]
        worst = max(worst, float(np.max(np.abs(got - expected) / (1.0 + np.abs(expected)))))
    if not worst <= PARITY_TOLERANCE:
        raise BadData(f"the whitened graph disagrees with the transform by {worst:.2e} (tolerance "
                      f"{PARITY_TOLERANCE:g}); nothing was written", "report this with the encoder")
    return worst


def whiten_encoder(encoder, table, output: str, dim: int | None = None, shrink: float = DEFAULT_SHRINK,
                   overwrite: bool = False, on_rows=None) -> dict:
    """Embed every cutout of ``table`` (an open galtools.io Table) with ``encoder`` (embed.load_encoder, fp32),
    fit the whitening and write ``output``: the encoder's file with the transform appended (atomically, only if
    ONNX Runtime agrees with numpy to PARITY_TOLERANCE)."""
    import onnx

    from galtools.embed.table import embed_table

    source = encoder.info.path
    check_output_path(output, overwrite)
    if WHITEN_KEY in encoder.info.metadata:
        raise BadData(f"{source} is already whitened (metadata {WHITEN_KEY})",
                      "give the encoder gal-train wrote, not a whitened one")
    if dim is not None and not 1 <= dim <= encoder.info.embedding_dim:
        raise UsageProblem(f"--dim {dim} is outside 1..{encoder.info.embedding_dim}, the encoder's embedding size",
                           "leave it out to keep every dimension")
    moments = Moments()
    embed_table(table, encoder, moments, on_rows=on_rows)
    whitening = fit(moments, dim, shrink)
    provenance = {"method": "pca-whitening", "formula": "(x - mean) @ V_d diag(lambda_d + shrink mean(lambda))^-1/2",
                  "shrink": whitening.shrink, "dim": int(whitening.matrix.shape[1]), "input_dim": len(whitening.mean),
                  "rows": whitening.rows, "fitted_on": os.path.basename(str(table.name).rstrip("/")),
                  "encoder_sha256": file_sha256(source),
                  "eigenvalues": [float(f"{v:.6g}") for v in whitening.eigenvalues], "labels": "none"}
    model = whitened_model(onnx.load(source), whitening, provenance)
    with atomic_file(output) as temporary:
        onnx.save_model(model, temporary)
        onnx.checker.check_model(temporary)
        shape = (len(encoder.info.bands), encoder.info.input_size, encoder.info.input_size)
        parity = _check_parity(temporary, source, whitening, shape)
    return {"path": output, "rows": whitening.rows, "dim": provenance["dim"], "input_dim": provenance["input_dim"],
            "shrink": whitening.shrink, "parity": parity,
            "variance_kept": float(whitening.eigenvalues.sum() / max(np.trace(moments.mean_and_covariance()[1]),
                                                                      1e-300))}
