"""``gal-train import``: a published PyTorch ResNet checkpoint -> gal-embed's encoder.onnx with galtools metadata.

Accepted: plain state dicts, ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers and PyTorch Lightning checkpoints
(for example the MoCo v2 ResNet-50 of Stein et al. 2021: a torchvision ResNet under ``encoder_q.`` beside
``encoder_k.`` and the queue), with or without ``module.``/``model.`` prefixes.  Layer names are torchvision's
(``layer1.0.conv1.weight``, ``fc.weight``); galtools' ResNet calls the stages ``stages.0`` .. ``stages.3``.

Reading never runs code from the file.  ``torch.load(weights_only=True)`` first; when that refuses a global (a
Lightning checkpoint's hyper-parameter container), an unpickler that knows only tensor storage, plain containers,
a few plain values (paths, dates, numpy numbers and arrays of numbers) and hyper-parameter containers (read as plain
dicts) reads it; other objects of Lightning's own classes read as inert placeholders (nothing of Lightning is
imported or called); anything else is refused with the name of what the file asks for.  TorchScript archives (code)
and plain pickles (not written by torch.save) are refused outright, in one line.  The hyper-parameters are kept, as
JSON (``json_safe``), in the encoder's ``galtools.train_config``; NaN or infinite weights are refused.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import types

import numpy as np

from galtools.errors import BadData, InputMissing, UsageProblem
from galtools.io import meta

_log = logging.getLogger("galtools")
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50")
PREFERRED_PREFIXES = ("encoder_q.", "encoder.", "backbone.", "")
REFUSED_HINT = "galtools reads only tensors and plain containers from a checkpoint; save the state_dict alone"

# Hyper-parameter containers of Lightning checkpoints: dicts (or attribute bags) whose contents are plain values.
_HYPERPARAMETER_CONTAINERS = {
    ("pytorch_lightning.utilities.parsing", "AttributeDict"),
    ("lightning.pytorch.utilities.parsing", "AttributeDict"),
    ("lightning.fabric.utilities.data", "AttributeDict"),
    ("lightning_fabric.utilities.data", "AttributeDict"),
    ("argparse", "Namespace"),
}
_SAFE_BUILTINS = {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
                  ("builtins", "slice"), ("builtins", "complex")}
_LIGHTNING_PACKAGES = ("pytorch_lightning", "lightning", "lightning_fabric")
# Plain values a hyper-parameter dict may hold; building them runs nothing but their own constructors.
_PLAIN_VALUES = {("pathlib", "PosixPath"): "PurePosixPath", ("pathlib", "PurePosixPath"): "PurePosixPath",
                 ("pathlib", "WindowsPath"): "PureWindowsPath", ("pathlib", "PureWindowsPath"): "PureWindowsPath",
                 ("datetime", "datetime"): None, ("datetime", "date"): None, ("datetime", "timedelta"): None,
                 ("torch", "Size"): None, ("torch", "device"): None}
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_TEXT_ENCODINGS = ("latin1", "latin-1", "utf-8", "utf8", "ascii")   # how pickle protocol 2 stores bytes
_TENSOR_REBUILDERS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
                      ("torch._utils", "_rebuild_parameter")}


class HyperParameters(dict):
    """What a hyper-parameter container reads as: a plain dict, its attributes (if any) as items."""

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.update(state)


class SkippedLightningObject(dict):
    """What any other object of Lightning's own classes reads as: inert (nothing of Lightning is imported or
    called), its state dropped. Only the model's tensors matter here."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __setstate__(self, state):
        """The state of a skipped object is not kept."""

    def append(self, item):
        """Items of a skipped object are not kept."""

    def extend(self, items):
        """Items of a skipped object are not kept."""


class RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.qualified = f"{module}.{name}"


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only tensor rebuilding, torch dtypes, plain containers and hyper-parameter containers."""

    def find_class(self, module, name):
        import torch

        if (module, name) in _TENSOR_REBUILDERS:
            return getattr(torch._utils, name)
        if (module, name) in _SAFE_BUILTINS:
            import collections

            return {"OrderedDict": collections.OrderedDict, "set": set, "frozenset": frozenset, "slice": slice,
                    "complex": complex}[name]
        if (module, name) in _HYPERPARAMETER_CONTAINERS:
            return HyperParameters
        if (module, name) in _PLAIN_VALUES:
            import datetime
            import pathlib

            target = _PLAIN_VALUES[(module, name)]
            home = {"pathlib": pathlib, "datetime": datetime, "torch": torch}[module]
            return getattr(home, target or name)
        numpy_value = _numpy_value(module, name)
        if numpy_value is not None:
            return numpy_value
        if (module, name) == ("_codecs", "encode"):
            return _encode_text
        if module.split(".")[0] in _LIGHTNING_PACKAGES:
            return SkippedLightningObject
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise RefusedGlobal(module, name)


def _encode_text(text, encoding="utf-8"):
    """What pickle protocol 2 calls to rebuild bytes (dates, numpy scalars hold theirs so): text to bytes only."""
    import codecs

    if not isinstance(text, str) or encoding.lower() not in _TEXT_ENCODINGS:
        raise RefusedGlobal("_codecs", f"encode({type(text).__name__}, {encoding!r})")
    return codecs.encode(text, encoding)


def _numpy_value(module: str, name: str):
    """numpy scalars, dtypes and arrays of numbers (hyper-parameters saved from numpy): their constructors only;
    an array or scalar of Python objects is refused (its items would be arbitrary objects)."""
    if module == "numpy" and name in ("dtype", "ndarray"):
        return getattr(np, name)      # as the argument of _reconstruct below (an ndarray call alone runs nothing)
    if module not in _NUMPY_MODULES or name not in ("scalar", "_reconstruct"):
        return None
    if name == "scalar":
        def scalar(dtype, data=None):
            if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
                raise RefusedGlobal(module, "scalar of Python objects")
            return np.frombuffer(data, dtype=dtype, count=1)[0]
        return scalar

    def reconstruct(cls, shape, dtype_char):
        if cls is not np.ndarray:
            raise RefusedGlobal(module, f"_reconstruct of {getattr(cls, '__name__', cls)}")
        return _NumericArray(shape, dtype_char)
    return reconstruct


class _NumericArray(np.ndarray):
    """An ndarray rebuilt from a pickle, refusing a state of Python objects (numbers only)."""

    def __new__(cls, shape, dtype_char):
        return np.ndarray.__new__(cls, shape, dtype_char)

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], np.dtype)
                and not state[2].hasobject and isinstance(state[4], bytes)):
            raise RefusedGlobal("numpy", "ndarray of Python objects")
        super().__setstate__(state)


def json_safe(value, depth: int = 0):
    """A hyper-parameter as JSON can hold it: dates as ISO text, numpy and 0-d torch numbers as numbers, paths as
    text, sets as sorted lists, small arrays as lists (larger ones by their shape); skipped Lightning objects drop."""
    import datetime
    import pathlib

    if depth > 20:
        return None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else repr(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, np.generic):
        return json_safe(value.item(), depth + 1)
    if isinstance(value, np.dtype):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, complex):
        return [value.real, value.imag]
    if hasattr(value, "detach") and hasattr(value, "shape"):    # a torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist(), depth + 1) if value.size <= 64 else f"array of shape {list(value.shape)}"
    if isinstance(value, SkippedLightningObject):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v, depth + 1) for k, v in value.items()
                if not isinstance(v, SkippedLightningObject)}
    if isinstance(value, (set, frozenset)):
        return sorted((json_safe(v, depth + 1) for v in value), key=repr)
    if isinstance(value, (list, tuple)):
        return [json_safe(v, depth + 1) for v in value]
    return repr(value)[:200]


_RESTRICTED_PICKLE = types.SimpleNamespace(Unpickler=RestrictedUnpickler,
                                           load=lambda f, **kw: RestrictedUnpickler(f, **kw).load(),
                                           __name__="galtools_restricted_pickle")


def read_checkpoint(path: str):
    """The checkpoint's contents, read without running anything it holds."""
    import torch

    from galtools.train.checkpoint import file_kind, refuse_unreadable_kind, warnings_silenced

    if not os.path.isfile(path):
        raise InputMissing(f"{path}: no such checkpoint", "check the path")
    refuse_unreadable_kind(path, file_kind(path), "save the weights alone with torch.save(model.state_dict(), PATH)")
    try:
        with warnings_silenced():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        _log.debug(f"{path}: weights_only load refused ({' '.join(str(exc).split())[:160]}); "
                   "reading with galtools' restricted unpickler")
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise BadData(f"{path}: not a readable PyTorch checkpoint ({' '.join(str(exc).split())[:120]})",
                      "give a file written by torch.save") from None
    try:
        with warnings_silenced():
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RESTRICTED_PICKLE)
    except RefusedGlobal as exc:
        raise BadData(f"{path}: holds a {exc.qualified} object, refused (reading it could run code)",
                      REFUSED_HINT) from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError) as exc:
        raise BadData(f"{path}: not a readable PyTorch checkpoint ({' '.join(str(exc).split())[:120]})",
                      "give a file written by torch.save") from None


def _is_tensor_dict(obj) -> bool:
    import torch

    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def state_dict_of(checkpoint, path: str) -> dict:
    """The tensors of a plain state dict, a Lightning checkpoint (``state_dict``) or a ``model`` wrapper."""
    if _is_tensor_dict(checkpoint):
        return dict(checkpoint)
    if isinstance(checkpoint, dict):
        for key in ("state_dict", "model", "model_state_dict", "net", "network"):
            if key in checkpoint and isinstance(checkpoint[key], dict):
                import torch

                tensors = {k: v for k, v in checkpoint[key].items() if isinstance(v, torch.Tensor)}
                if tensors:
                    return tensors
    keys = ", ".join(list(checkpoint)[:8]) if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise BadData(f"{path}: no state dict found (top level: {keys})",
                  "give a state dict, or a checkpoint with 'state_dict' or 'model'")


def find_prefix(state: dict, requested: str | None, path: str) -> str:
    """The prefix in front of the ResNet's own names (``encoder_q.``, ``module.encoder_q.``, ``model.``, ...)."""
    prefixes = sorted({k[: -len("conv1.weight")] for k in state
                       if k.endswith("conv1.weight") and not re.search(r"layer\d+\.\d+\.conv1\.weight$", k)})
    if requested is not None:
        if requested not in prefixes:
            found = ", ".join(repr(p) for p in prefixes)
            raise BadData(f"{path}: no ResNet under prefix '{requested}' (found: {found})",
                          "pick one of those with --prefix")
        return requested
    if not prefixes:
        raise BadData(f"{path}: no ResNet stem 'conv1.weight' among {len(state)} tensors "
                      f"(e.g. {', '.join(list(state)[:4])})", "give a torchvision-style ResNet checkpoint")

    def rank(prefix):
        stripped = re.sub(r"^(module\.|model\.)+", "", prefix)
        order = PREFERRED_PREFIXES.index(stripped) if stripped in PREFERRED_PREFIXES else len(PREFERRED_PREFIXES)
        return order, len(prefix)

    chosen = min(prefixes, key=rank)
    if len(prefixes) > 1:
        _log.info(f"{path}: ResNets under prefixes {', '.join(repr(p) for p in prefixes)}; importing '{chosen}' "
                  "(choose with --prefix)")
    return chosen


def torchvision_to_galtools(state: dict, prefix: str) -> tuple[dict, dict]:
    """(backbone tensors in galtools' names, the ``fc`` head's tensors) from torchvision names under ``prefix``."""
    backbone, head = {}, {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name.startswith("fc."):
            head[name[3:]] = value
            continue
        match = re.match(r"layer(\d+)\.(.*)$", name)
        if match:
            name = f"stages.{int(match.group(1)) - 1}.{match.group(2)}"
        backbone[name] = value
    return backbone, head


def build_backbone(arch: str, backbone_state: dict, path: str):
    """galtools' ResNet of ``arch`` with the checkpoint's band count, width and stem kernel, weights loaded."""
    from galtools.models import build_encoder, list_encoders

    if arch not in list_encoders() or arch == "tiny":
        raise UsageProblem(f"--arch {arch} is not a ResNet galtools can import into",
                           f"use one of {', '.join(a for a in list_encoders() if a != 'tiny')}")
    stem = backbone_state.get("conv1.weight")
    if stem is None or stem.ndim != 4:
        raise BadData(f"{path}: the ResNet has no 4-d conv1.weight", "give a torchvision-style ResNet checkpoint")
    width = stem.shape[0] / 64
    model = build_encoder(arch, int(stem.shape[1]), width=width, stem_kernel=int(stem.shape[2]))
    own = model.state_dict()
    missing = [k for k in own if k not in backbone_state]
    unexpected = [k for k in backbone_state if k not in own]
    wrong = [k for k in own if k in backbone_state and tuple(own[k].shape) != tuple(backbone_state[k].shape)]
    if missing or unexpected or wrong:
        detail = "; ".join(part for part in (
            f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}" if missing else "",
            f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}" if unexpected else "",
            f"shape differs for {', '.join(wrong[:3])}" if wrong else "") if part)
        raise BadData(f"{path}: the weights do not fit a {arch} ({detail})",
                      "check --arch (resnet18, resnet34 or resnet50 for torchvision checkpoints) and --prefix")
    model.load_state_dict({k: backbone_state[k] for k in own})
    return model.eval()


def _with_head(backbone, head: dict, path: str):
    import torch

    if "weight" not in head:
        raise BadData(f"{path}: --keep-head asked for, but the checkpoint has no fc.weight under this prefix",
                      "leave out --keep-head")
    weight = head["weight"]
    if weight.ndim != 2 or weight.shape[1] != backbone.num_features:
        raise BadData(f"{path}: fc.weight has shape {tuple(weight.shape)}, not (D, {backbone.num_features})",
                      "leave out --keep-head")

    class WithHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.fc = torch.nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in head)
            self.in_chans, self.num_features = backbone.in_chans, int(weight.shape[0])

        def forward_features(self, x):
            return self.fc(self.backbone.forward_features(x))

        def forward(self, x):
            return self.forward_features(x)

    model = WithHead()
    model.fc.load_state_dict({k: v for k, v in head.items() if k in ("weight", "bias")})
    return model.eval()


def load_preprocess(source: str, bands: list[str], sample_rows: int = 2048):
    """The preprocessing: a JSON file of galtools' parameters, or fitted on the cutouts of a table."""
    from galtools.preprocess import Preprocess

    if not os.path.exists(source):
        raise InputMissing(f"--preprocess {source}: no such file", "give a preprocessing JSON or a cutout table")
    with open(source, "rb") as handle:
        head = handle.read(64).lstrip()
    if head.startswith(b"{"):
        with open(source) as handle:
            preprocess = Preprocess.from_json(handle.read())
        if list(preprocess.bands) != list(bands):
            raise BadData(f"--preprocess {source} is for bands {','.join(preprocess.bands)}, not {','.join(bands)}",
                          "give parameters for the model's bands, in its order")
        return preprocess
    from galtools.io import images_of, open_table

    with open_table(source) as table:
        table.require_images()
        have = table.bands or bands
        missing = [b for b in bands if b not in have]
        if missing:
            raise BadData(f"--preprocess {source} has bands {','.join(have)}, lacking {','.join(missing)}",
                          "fit on cutouts with the model's bands")
        index = [have.index(b) for b in bands]
        images, held = [], 0
        for batch in table.iter_batches(batch_size=256, columns=["image"]):
            images.append(images_of(batch)[:, index])
            held += batch.num_rows
            if held >= sample_rows:
                break
    sample = np.concatenate(images)[:sample_rows]
    return Preprocess.fit(sample, bands)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def input_scaling(preprocess_source: str | None, scaling: list[str] | tuple[str, ...] | None, bands: list[str]):
    """What gal-embed applies to raw pixels before the model: galtools' arcsinh preprocessing (``--preprocess``, a
    JSON file or cutouts to fit it on), or the model's own scaling (``--scaling`` steps); exactly one of them."""
    from galtools.preprocess import SCALING_EXAMPLE, Scaling

    if bool(preprocess_source) == bool(scaling):
        raise UsageProblem("give either --preprocess (galtools' arcsinh scaling) or --scaling (the model's own)"
                           if scaling else "no input scaling given",
                           "--scaling for the scaling the model was trained with, "
                           f"{SCALING_EXAMPLE.removeprefix('e.g. ')} (or --scaling identity); "
                           "--preprocess JSON|CUTOUTS for galtools' own")
    if scaling:
        try:
            return Scaling.parse(scaling, bands)
        except BadData as exc:
            raise UsageProblem(exc.what, exc.hint) from None
    return load_preprocess(preprocess_source, bands)


def import_checkpoint(checkpoint_path: str, out_path: str, arch: str, bands: list[str], input_size: int,
                      preprocess_source: str | None, keep_head: bool = False, prefix: str | None = None,
                      pixscale: float | None = None, flux_unit: str | None = None, overwrite: bool = False,
                      scaling: list[str] | None = None) -> dict:
    """Write ``checkpoint_path``'s ResNet as an encoder.onnx that gal-embed reads; returns a summary.
    ``scaling``: the model's own input scaling (``Scaling.parse`` steps) instead of ``preprocess_source``."""
    from galtools.io import check_output_path
    from galtools.train.export import check_finite_weights, encoder_metadata, export_encoder

    check_output_path(out_path, overwrite)
    # a usage problem before reading a large checkpoint; cutouts to fit on are read after it is found good
    preprocess = input_scaling(preprocess_source, scaling, bands) if scaling or not preprocess_source else None
    if input_size < 8:
        raise UsageProblem(f"--input-size {input_size} is too small for a ResNet", "give the size it was trained at")
    checkpoint = read_checkpoint(checkpoint_path)
    state = state_dict_of(checkpoint, checkpoint_path)
    chosen = find_prefix(state, prefix, checkpoint_path)
    backbone_state, head = torchvision_to_galtools(state, chosen)
    backbone = build_backbone(arch, backbone_state, checkpoint_path)
    if backbone.in_chans != len(bands):
        raise BadData(f"{checkpoint_path}: the ResNet takes {backbone.in_chans} bands but --bands names {len(bands)} "
                      f"({','.join(bands)})", f"name {backbone.in_chans} bands, in the order the model was trained on")
    model = _with_head(backbone, head, checkpoint_path) if keep_head else backbone
    check_finite_weights(model, checkpoint_path, "the checkpoint is damaged or its training diverged; "
                         "import another one")
    if preprocess is None:
        preprocess = load_preprocess(preprocess_source, bands)
    provenance = {"imported_from": os.path.basename(checkpoint_path), "sha256": file_sha256(checkpoint_path),
                  "prefix": chosen, "arch": arch, "keep_head": keep_head}
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("hyper_parameters"), dict):
        provenance["hyper_parameters"] = json_safe(checkpoint["hyper_parameters"])
    metadata = encoder_metadata(bands, input_size, preprocess.to_json(), model.num_features, arch,
                                json.dumps(provenance, sort_keys=True), "")
    if pixscale is not None:
        metadata[meta.PIXSCALE] = repr(float(pixscale))
    if flux_unit:
        metadata[meta.FLUX_UNIT] = flux_unit
    parity = export_encoder(model, out_path, metadata, input_size, overwrite=overwrite)
    return {"path": out_path, "prefix": chosen, "embedding_dim": model.num_features, "parity": parity,
            "scaling": preprocess.describe() if scaling else "galtools arcsinh preprocessing",
            "dropped_head": bool(head) and not keep_head, "metadata": metadata}
