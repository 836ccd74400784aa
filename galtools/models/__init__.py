"""Encoders (a ResNet family for any number of bands) and projection heads for galtools."""
from galtools.models.heads import ProjectionHead
from galtools.models.registry import DEFAULT_ARCH, build_encoder, list_encoders
from galtools.models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = ["DEFAULT_ARCH", "BasicBlock", "Bottleneck", "ProjectionHead", "ResNet", "build_encoder", "list_encoders"]
