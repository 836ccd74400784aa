"""SimCLR (Chen et al. 2020): NT-Xent between two views, negatives from the (global) batch; no queue."""
from __future__ import annotations

import torch
from torch import nn

from galtools.models import ResNet
from galtools.ssl import distributed as ddp
from galtools.ssl.losses import nt_xent
from galtools.ssl.moco import ContrastiveEncoder


class SimCLR(nn.Module):
    """``loss = model(x1, x2, seed)``.  Each view goes through the encoder on its own, so batch-norm statistics
    never mix an object's two views; under DDP the embeddings of all ranks are gathered (with gradient)."""

    def __init__(self, backbone: ResNet, dim: int = 128, temperature: float = 0.2):
        super().__init__()
        self.temperature = temperature
        self.encoder_q = ContrastiveEncoder(backbone, dim)
        self._query_runner: list[nn.Module] = [self.encoder_q]

    def set_query_runner(self, runner: nn.Module) -> None:
        self._query_runner = [runner]

    @property
    def backbone(self) -> ResNet:
        return self.encoder_q.backbone

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        run = self._query_runner[0]
        z1, z2 = run(x1).float(), run(x2).float()
        all_z1, all_z2 = ddp.gather_with_grad(z1), ddp.gather_with_grad(z2)
        loss = nt_xent(z1, z2, self.temperature, all_z1, all_z2, offset=ddp.rank() * len(z1))
        with torch.no_grad():
            sim = torch.nn.functional.normalize(z1, dim=1) @ torch.nn.functional.normalize(all_z2, dim=1).T
            hits = sim.argmax(dim=1) == torch.arange(len(z1), device=z1.device) + ddp.rank() * len(z1)
        return loss, hits.float().mean()
