"""gal-train's library: data loading, the training loop, checkpoints, monitoring and the ONNX export.

    from galtools.train import TrainConfig, train, export_checkpoint
    train(TrainConfig(inputs=["cutouts.fits"], out="runs/moco", arch="tiny", steps=100))

Importing this package imports nothing heavy (gal-train --help reads the presets and defaults of
galtools.train.config); the names below are loaded on first use, and the functions that need torch import it.
"""
import importlib

_HOMES = {"TrainConfig": "config", "export_checkpoint": "export", "export_encoder": "export",
          "read_metadata": "export", "train": "loop"}

__all__ = ["TrainConfig", "export_checkpoint", "export_encoder", "read_metadata", "train"]


def __getattr__(name):
    if name in _HOMES:
        return getattr(importlib.import_module(f"galtools.train.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'galtools.train' has no attribute {name!r}")
