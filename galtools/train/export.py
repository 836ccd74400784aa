"""Export the trained backbone as ``encoder.onnx``: the contract between gal-train and gal-embed/knn/photoz.

- input ``image`` float32 [batch, bands, S, S], already preprocessed; output ``embedding`` float32 [batch, D];
  ``batch`` is a named dynamic axis;
- one self-contained file (weights inside); metadata_props carry what gal-embed needs to preprocess and to
  describe the model (``encoder_metadata``);
- before the file is kept, ONNX Runtime must agree with torch (fp32, eval mode) on batches of 1 and 37 within
  1e-4; otherwise nothing is written.

The graph comes from torch's TorchScript-based exporter (a fraction of a second for these convolutional networks),
and from its torch.export-based exporter (a few seconds more) where that one cannot express the model or is gone
from the installed torch; either way the parity check above decides whether the file is kept.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np

from galtools import __version__
from galtools.errors import BadData
from galtools.io import check_output_path
from galtools.io import meta
from galtools.io.files import atomic_file

PARITY_BATCHES = (1, 37)
PARITY_TOLERANCE = 1e-4
ONNX_OPSET = 18
EXPORTERS = ("torchscript", "dynamo")   # tried in this order


# Settings that say where a run was, not what it trained: kept out of the model file so that the same training
# in another folder (or from a copy of the data elsewhere) gives a byte-identical encoder and the same sha256.
PLACE_FIELDS = ("out",)
PATH_LIST_FIELDS = ("inputs",)


def portable_config(train_config_json: str) -> str:
    """The training configuration without the run folder, and with input tables by file name only."""
    import json
    import os

    try:
        config = json.loads(train_config_json)
    except json.JSONDecodeError:
        return train_config_json
    if not isinstance(config, dict):
        return train_config_json
    for name in PLACE_FIELDS:
        config.pop(name, None)
    for name in PATH_LIST_FIELDS:
        if isinstance(config.get(name), list):
            config[name] = [os.path.basename(str(p).rstrip("/")) if p != "-" else p for p in config[name]]
    return json.dumps(config, sort_keys=True)


def encoder_metadata(bands, input_size: int, preprocess_json: str, embedding_dim: int, arch: str,
                     train_config_json: str, augment_spec: str) -> dict[str, str]:
    """The ONNX metadata_props; ``train_config_json`` is stored without paths (see ``portable_config``)."""
    train_config_json = portable_config(train_config_json)
    return {
        meta.BANDS: ",".join(bands),
        meta.INPUT_SIZE: str(int(input_size)),
        meta.PREPROCESS: preprocess_json,
        meta.EMBEDDING_DIM: str(int(embedding_dim)),
        meta.ARCH: arch,
        meta.VERSION: __version__,
        meta.TRAIN_CONFIG: train_config_json,
        meta.AUGMENT: augment_spec,
    }


TTA_CHOICES = (1, 4, 8)   # views averaged at inference: none, the 4 quarter turns, the 8 turns and mirror images
TTA_KEY = meta.TTA


def _representation_module(backbone, tta: int = 1):
    import torch

    class Representation(torch.nn.Module):
        """image -> pooled backbone output (the projection head is not part of the representation).

        With tta 4 or 8 the output is the mean over the cutout's quarter turns (and their mirror images) of the
        pooled output: one pass over a batch of 4N or 8N views, in the graph itself, so gal-embed needs nothing
        more.  Batch norm runs in eval mode, so a view's features do not depend on the other views."""

        def __init__(self, backbone, tta: int):
            super().__init__()
            self.backbone, self.tta = backbone, tta

        def forward(self, image):
            if self.tta == 1:
                return self.backbone.forward_features(image)
            views = quarter_turns(image)
            if self.tta == 8:
                views += [torch.flip(v, dims=(3,)) for v in views]
            features = self.backbone.forward_features(torch.cat(views))
            return features.reshape(self.tta, -1, features.shape[-1]).mean(dim=0)

    return Representation(backbone, tta).eval()


def quarter_turns(image):
    """``[torch.rot90(image, k, dims=(2, 3)) for k in range(4)]``, written with flips and transposes, which every
    ONNX exporter expresses (the TorchScript one has no rot90)."""
    return [image, image.flip(3).transpose(2, 3), image.flip(2).flip(3), image.transpose(2, 3).flip(3)]


def _onnx_graph(reference, example, exporter: str):
    """``reference`` as an ONNX ModelProto with a dynamic batch axis, by ``exporter``: "torchscript" or "dynamo"."""
    import onnx
    import torch

    names = {"input_names": ["image"], "output_names": ["embedding"]}
    with _quiet_exporter():
        if exporter == "torchscript":
            buffer = io.BytesIO()
            torch.onnx.export(reference, (example,), buffer, dynamo=False, opset_version=ONNX_OPSET,
                              dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}}, **names)
            model = onnx.load_from_string(buffer.getvalue())
            with torch.no_grad():                   # the width, where shape inference left it symbolic (tta)
                width = int(reference(example).shape[1])
            model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = width
            return model
        program = torch.onnx.export(reference, (example,), None, dynamo=True, external_data=False, verbose=False,
                                    dynamic_shapes={"image": {0: torch.export.Dim("batch")}}, **names)
        return program.model_proto


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter reports on stderr (missing torchvision ops, deprecations): not the user's business."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _parity_inputs(in_chans: int, size: int, seed: int = 0) -> list[np.ndarray]:
    # Preprocessed images are standardised per band: unit normals are the range the model sees.
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, in_chans, size, size), dtype=np.float32) for n in PARITY_BATCHES]


def check_finite_weights(model, source: str, hint: str) -> None:
    """NaN or infinite weights (a diverged run, a damaged file) would give NaN embeddings: refused, naming the first
    tensor that holds them."""
    import torch

    bad = [(name, int((~torch.isfinite(t)).sum())) for name, t in model.state_dict().items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        total = sum(n for _, n in bad)
        raise BadData(f"{source}: {total} weight(s) in {len(bad)} tensor(s) are NaN or infinite "
                      f"(first: {bad[0][0]})", hint)


def check_parity(onnx_path: str, reference, inputs: list[np.ndarray]) -> float:
    """Largest |ORT - torch| / (1 + |torch|) over the inputs; raises BadData beyond the tolerance, and when either
    side gives a value that is not finite (NaN passes no comparison, so it is looked for, not compared)."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            expected = reference(torch.from_numpy(x)).numpy()
        got = session.run(["embedding"], {"image": x})[0]
        if got.shape != expected.shape:
            raise BadData(f"the exported model gives shape {got.shape} for a batch of {len(x)}, torch {expected.shape}",
                          "report this: the export is broken for this architecture")
        if not (np.isfinite(expected).all() and np.isfinite(got).all()):
            raise BadData(f"the model gives NaN or infinite embeddings for finite inputs (torch: "
                          f"{int((~np.isfinite(expected)).sum())}, ONNX Runtime: {int((~np.isfinite(got)).sum())} "
                          "values); encoder.onnx was not written", "check the checkpoint's weights")
        worst = max(worst, float(np.max(np.abs(got - expected) / (1.0 + np.abs(expected)))))
    if not worst <= PARITY_TOLERANCE:
        raise BadData(f"ONNX Runtime and torch disagree by {worst:.2e} (tolerance {PARITY_TOLERANCE:g}); "
                      "encoder.onnx was not written", "report this with the checkpoint")
    return worst


def export_encoder(backbone, path: str, metadata: dict[str, str], input_size: int, overwrite: bool = False,
                   tta: int = 1, exporters: tuple[str, ...] = EXPORTERS) -> float:
    """Write ``backbone``'s representation to ``path`` as ONNX with ``metadata``; returns the parity error.
    ``tta`` 4 or 8: the embedding is the mean over the quarter turns (and mirror images), recorded as galtools.tta.
    ``exporters``: torch's ONNX exporters to try, in order (see the module)."""
    import onnx
    import torch

    check_output_path(path, overwrite)
    if tta not in TTA_CHOICES:
        raise BadData(f"cannot average over {tta} views", f"choose one of {', '.join(map(str, TTA_CHOICES))}")
    if tta != 1:
        metadata = {**metadata, TTA_KEY: str(tta)}
    backbone = backbone.float().to("cpu", memory_format=torch.contiguous_format).eval()
    reference = _representation_module(backbone, tta)
    example = torch.zeros(2, backbone.in_chans, input_size, input_size)  # trace with batch > 1
    for attempt, exporter in enumerate(exporters, 1):
        try:
            model = _onnx_graph(reference, example, exporter)
        except Exception:                           # noqa: BLE001 - any failure of one exporter: try the next
            if attempt == len(exporters):
                raise
            continue
        break
    onnx.helper.set_model_props(model, metadata)   # metadata last, on the final graph
    with atomic_file(path) as temporary:           # kept only if ONNX Runtime agrees with torch
        onnx.save_model(model, temporary)
        onnx.checker.check_model(temporary)
        return check_parity(temporary, reference, _parity_inputs(backbone.in_chans, input_size))


def read_metadata(path: str) -> dict[str, str]:
    """The metadata_props of an ONNX file (for tests and ``gal-train export`` summaries)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def export_checkpoint(checkpoint_path: str, out_path: str, overwrite: bool = False, tta: int = 1) -> dict:
    """Re-export the query backbone of a gal-train checkpoint (``gal-train export``); ``tta``: see export_encoder."""
    from galtools.models import build_encoder
    from galtools.train import checkpoint as ckpt
    from galtools.train.config import TrainConfig

    check_output_path(out_path, overwrite)          # before reading a checkpoint that may be large
    state = ckpt.load(checkpoint_path)
    config = TrainConfig.from_json(state["config"])
    bands = list(state["bands"])
    backbone = build_encoder(config.arch, len(bands), width=config.width, pool=config.pool)
    backbone.load_state_dict(ckpt.backbone_state(state["model"]))
    check_finite_weights(backbone, checkpoint_path, "the run diverged; export an earlier checkpoint from "
                         "RUN/checkpoints/ and train again with a lower --lr")
    metadata = encoder_metadata(bands, config.crop, state["preprocess"], backbone.num_features, config.arch,
                                state["config"], state["augment"])
    worst = export_encoder(backbone, out_path, metadata, config.crop, overwrite=overwrite, tta=tta)
    return {"path": out_path, "step": int(state["step"]), "parity": worst, "metadata": metadata, "tta": tta,
            "embedding_dim": backbone.num_features}


