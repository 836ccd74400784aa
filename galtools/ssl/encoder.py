"""The trained part of a contrastive method: backbone + projection head, and what MoCo and SimCLR share."""
from __future__ import annotations

import torch
from torch import nn

from galtools.models import ProjectionHead, ResNet


class ContrastiveEncoder(nn.Module):
    """Backbone + projection head; ``backbone`` alone is the representation that gets exported."""

    def __init__(self, backbone: ResNet, out_dim: int = 128, hidden_dim: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = ProjectionHead(backbone.num_features, out_dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(x))


class ContrastiveMethod(nn.Module):
    """A method with a query encoder (``encoder_q``, the one that is exported) that a DDP wrapper may run."""

    def set_query_encoder(self, encoder: ContrastiveEncoder) -> None:
        self.encoder_q = encoder
        # What runs the query encoder: the encoder itself, or its DistributedDataParallel wrapper, kept out of
        # the module tree so that the state dict holds one copy of the weights.
        self._query_runner: list[nn.Module] = [encoder]

    def set_query_runner(self, runner: nn.Module) -> None:
        self._query_runner = [runner]

    def run_query_encoder(self, x: torch.Tensor) -> torch.Tensor:
        return self._query_runner[0](x)

    @property
    def backbone(self) -> ResNet:
        return self.encoder_q.backbone
