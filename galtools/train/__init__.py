"""gal-train's library: data loading, the training loop, checkpoints, monitoring and the ONNX export.

    from galtools.train import TrainConfig, train, export_checkpoint
    train(TrainConfig(inputs=["cutouts.fits"], out="runs/moco", arch="tiny", steps=100))

Importing this package does not import torch; the functions that need it do.
"""
from galtools.train.config import TrainConfig
from galtools.train.export import export_checkpoint, export_encoder, read_metadata
from galtools.train.loop import train

__all__ = ["TrainConfig", "export_checkpoint", "export_encoder", "read_metadata", "train"]
