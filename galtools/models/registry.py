"""Encoder names -> constructors.  The name is what ``--arch`` takes and what ``galtools.arch`` records in ONNX."""
from __future__ import annotations

from typing import Any

from galtools.models.resnet import BasicBlock, Bottleneck, ResNet

DEFAULT_ARCH = "resnet50-hayat"

# name -> (block, layers, extra ResNet kwargs)
_ARCHS: dict[str, tuple[type, tuple[int, ...], dict[str, Any]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), {"stem": "imagenet"}),
    "resnet34": (BasicBlock, (3, 4, 6, 3), {"stem": "imagenet"}),
    "resnet50": (Bottleneck, (3, 4, 6, 3), {"stem": "imagenet"}),
    "resnet18-hayat": (BasicBlock, (2, 2, 2, 2), {"stem": "hayat"}),
    "resnet34-hayat": (BasicBlock, (3, 4, 6, 3), {"stem": "hayat"}),
    "resnet50-hayat": (Bottleneck, (3, 4, 6, 3), {"stem": "hayat"}),
    # For tests and quick looks on a laptop: one BasicBlock per stage, 16 base channels, 3x3 stem -> 128-d.
    "tiny": (BasicBlock, (1, 1, 1, 1), {"stem": "hayat", "base_planes": 16, "stem_kernel": 3}),
}


def list_encoders() -> list[str]:
    return sorted(_ARCHS)


def build_encoder(name: str, in_chans: int, width: float = 1.0, **kwargs: Any) -> ResNet:
    """Build the named encoder for ``in_chans`` bands; ``width`` multiplies every stage's channel count."""
    if name not in _ARCHS:
        raise KeyError(f"unknown encoder {name!r}; known: {', '.join(list_encoders())}")
    block, layers, defaults = _ARCHS[name]
    options = {**defaults, **kwargs}
    return ResNet(block, layers, in_chans=in_chans, width=width, **options)

