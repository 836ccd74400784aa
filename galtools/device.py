"""``--device auto|cpu|cuda[:N]``: the one Device type and parser of every tool, and the availability check (torch
only when asked).

    device = Device.parse("cuda:1")            # Device(kind="cuda", index=1); UsageProblem (2) when malformed
    parse_device("cuda:1")                     # the same
    torch_device("auto")                       # torch.device: a usable GPU, else the CPU (imports torch)
    cuda_available()                           # False without torch installed (never imports it in that case)

Parsing imports nothing; gal-embed and gal-knn parse their --device here without importing torch (gal-embed adds
its ONNX Runtime kinds, ``tensorrt[:N]``, with ``kinds``).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from galtools.errors import DeviceUnavailable, UsageProblem

KINDS = ("auto", "cpu", "cuda")
ALIASES = {"gpu": "cuda", "trt": "tensorrt"}
GPU_HINT = "use --device cpu, or check the driver and CUDA_VISIBLE_DEVICES"


@dataclass(frozen=True)
class Device:
    """Where to compute: torch's tools turn it into a torch.device (:func:`torch_device`), gal-embed into ONNX Runtime
    providers (galtools.embed.providers), gal-knn into a search backend (galtools.search.exact)."""

    kind: str                 # one of the kinds the caller accepts: auto, cpu, cuda (tensorrt ...)
    index: int | None = None  # the GPU asked for (cuda:N); None: not given

    @classmethod
    def parse(cls, text: str | None, kinds: tuple[str, ...] = KINDS) -> "Device":
        return parse_device(text, kinds)

    @property
    def is_gpu(self) -> bool:
        return self.kind not in ("auto", "cpu")

    @property
    def gpu(self) -> int:
        """The GPU's number: the one asked for, else 0."""
        return self.index or 0

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"


def parse_device(text: str | None, kinds: tuple[str, ...] = KINDS) -> Device:
    """``auto``, ``cpu`` or ``KIND[:N]`` for a GPU kind in ``kinds`` (``gpu`` means cuda, ``trt`` tensorrt)."""
    name, colon, number = (text or "").strip().lower().partition(":")
    name = ALIASES.get(name, name)
    listed = ", ".join(k if k in ("auto", "cpu") else f"{k}[:N]" for k in kinds)
    if name not in kinds or (colon and name in ("auto", "cpu")):
        raise UsageProblem(f"--device '{text}' is not one of {listed}", "e.g. --device cuda:1 for the second GPU")
    if colon and not number.isdigit():
        raise UsageProblem(f"--device '{text}': the GPU number must be a non-negative integer", "e.g. cuda:0")
    return Device(name, int(number) if colon else None)


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def cuda_available() -> bool:
    """A usable CUDA GPU for torch; False (without importing anything) when torch is not installed."""
    if not torch_installed():
        return False
    import torch

    return bool(torch.cuda.is_available())


def torch_device(text: str | Device | None, local_rank: int | None = None):
    """``auto|cpu|cuda[:N]`` -> torch.device; a cuda device without a usable GPU is DeviceUnavailable (exit 69).

    ``local_rank`` (one process per GPU under torchrun or srun): the process takes GPU ``local_rank`` modulo the
    GPUs it sees, whatever index was given."""
    spec = text if isinstance(text, Device) else parse_device(text or "auto")
    if spec.kind == "cpu" or (spec.kind == "auto" and not cuda_available()):
        import torch

        return torch.device("cpu")
    if not torch_installed():
        raise DeviceUnavailable(f"--device {spec} needs torch, which is not installed",
                                "install galtools[train] or use --device cpu")
    import torch

    if not torch.cuda.is_available():
        raise DeviceUnavailable(f"--device {spec}: no usable GPU (torch.cuda.is_available() is False)", GPU_HINT)
    count = torch.cuda.device_count()
    index = local_rank % count if local_rank is not None else (spec.index or 0)
    if index >= count:
        raise DeviceUnavailable(f"--device {spec}: GPU {index} does not exist ({count} visible)",
                                "choose another GPU or fewer processes per node")
    return torch.device("cuda", index)
