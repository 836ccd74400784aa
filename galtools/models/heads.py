"""Projection heads used by the contrastive losses (never exported: the representation is the backbone's output)."""
from __future__ import annotations

from torch import nn


class ProjectionHead(nn.Sequential):
    """MoCo v2 / SimCLR projection: Linear(d, hidden) -> ReLU -> Linear(hidden, out_dim), hidden = d by default."""

    def __init__(self, in_dim: int, out_dim: int = 128, hidden_dim: int | None = None):
        hidden_dim = hidden_dim or in_dim
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
        self.in_dim, self.out_dim, self.hidden_dim = in_dim, out_dim, hidden_dim
