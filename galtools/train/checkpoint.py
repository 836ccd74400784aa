"""Training checkpoints: plain tensors and containers only, so they load with ``torch.load(weights_only=True)``
(opening a checkpoint never runs code from it), written atomically (a killed job leaves the previous one intact).

A checkpoint holds everything a resumed run needs to continue exactly: the model (query and key encoders, the
MoCo queue and its pointer), the optimizer and scheduler, the step, the RNG states, and what the export needs
(bands, preprocessing, augmentation spec, configuration).
"""
from __future__ import annotations

import contextlib
import os
import random

import numpy as np

from galtools.errors import BadData, InputMissing, OutputError, brief
from galtools.io.files import atomic_file, replacing

FORMAT = "galtools.train.checkpoint/1"
LAST = "last.pt"
FOLDER = "checkpoints"


def save(path: str, state: dict) -> None:
    import torch

    try:
        with atomic_file(path) as temporary:
            torch.save({"format": FORMAT, **state}, temporary)
    except RuntimeError as exc:   # torch.save's writer reports a full disk as RuntimeError
        raise OutputError(f"cannot write checkpoint {path}: {' '.join(str(exc).split())[:120]}",
                          "check free space and permissions") from None


# torch.save's legacy (not zip) format starts with this number, pickled.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _first_pickled_value(head: bytes):
    """The first value a pickle stream pushes (after its protocol and frame opcodes), or None."""
    import io
    import pickletools

    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(head)):
            if opcode.name not in ("PROTO", "FRAME"):
                return arg
    except (ValueError, EOFError):
        return None
    return None


def file_kind(path: str) -> str:
    """What a would-be checkpoint is, from its first bytes: 'torchscript' (a zip archive holding code),
    'torch' (a zip archive torch.save wrote), 'legacy' (torch.save's old format), 'pickle' (a plain pickle, which
    torch.load cannot read: it lacks torch.save's magic number), or 'other'."""
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in names):
            return "torchscript"
        return "torch"
    with open(path, "rb") as handle:
        head = handle.read(32)
    if head[:1] != b"\x80":
        return "other"
    return "legacy" if _first_pickled_value(head) == _LEGACY_MAGIC else "pickle"


def refuse_unreadable_kind(path: str, kind: str, hint: str) -> None:
    """One line for the files torch.load would answer with warnings and a long message: TorchScript and plain
    pickles."""
    if kind == "torchscript":
        raise BadData(f"{path}: is a TorchScript archive (a program, not weights), refused", hint)
    if kind == "pickle":
        raise BadData(f"{path}: is a plain pickle, not a file written by torch.save, refused", hint)


@contextlib.contextmanager
def warnings_silenced():
    """torch.load's warnings (pickle protocols, TorchScript dispatch) are not the user's business: galtools says
    in one line what is wrong with a file."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def load(path: str) -> dict:
    import pickle

    import torch

    if not os.path.isfile(path):
        raise InputMissing(f"{path}: no such checkpoint", "give RUN/last.pt or a file in RUN/checkpoints/")
    refuse_unreadable_kind(path, file_kind(path), "give RUN/last.pt or a file in RUN/checkpoints/; a published "
                           "model's state_dict, saved with torch.save, goes through 'gal-train import'")
    try:
        with warnings_silenced():
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise BadData(f"{path}: not a readable gal-train checkpoint ({brief(exc)})",
                      "give a checkpoint written by gal-train") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise BadData(f"{path}: not a gal-train checkpoint", "give a checkpoint written by gal-train")
    return state


def backbone_state(model_state: dict) -> dict:
    """The query encoder's backbone weights (what gets exported) from a MoCo or SimCLR state dict."""
    prefix = "encoder_q.backbone."
    return {key[len(prefix):]: value for key, value in model_state.items() if key.startswith(prefix)}


# -- random number generators --------------------------------------------------------------------------------
def rng_state() -> dict:
    import torch

    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # this process's GPU only: get_rng_state_all() would open a context on every visible GPU (under torchrun,
        # on the other ranks' GPUs too), and a CPU run has nothing to save
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    if isinstance(state.get("cuda"), torch.Tensor) and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])     # on this process's current GPU


def save_step(run_dir: str, step: int, state: dict, keep: int) -> str:
    """Write RUN/checkpoints/step-N.pt, point RUN/last.pt at it (a hard link: one write), prune old steps."""
    path = step_path(run_dir, step)
    save(path, state)
    last = os.path.join(run_dir, LAST)
    try:
        with replacing(last, named=True) as temporary:   # named: it becomes a hard link, no bytes written
            os.unlink(temporary)
            try:
                os.link(path, temporary)
            except OSError:              # a file system without hard links
                import shutil
                shutil.copyfile(path, temporary)
    except OSError as exc:
        raise OutputError(f"cannot write checkpoint {last}: {exc.strerror}", "check free space and permissions") from None
    prune(run_dir, keep)
    return path


def step_path(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, FOLDER, f"step-{step:09d}.pt")


def prune(run_dir: str, keep: int) -> None:
    """Keep the ``keep`` most recent step checkpoints (RUN/last.pt is always kept)."""
    folder = os.path.join(run_dir, FOLDER)
    names = sorted(n for n in os.listdir(folder) if n.startswith("step-") and n.endswith(".pt"))
    for name in names[:max(0, len(names) - keep)]:
        os.unlink(os.path.join(folder, name))
