"""SimCLR (Chen et al. 2020): NT-Xent between two views, negatives from the (global) batch; no queue."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from galtools.models import ResNet
from galtools.ssl import distributed as ddp
from galtools.ssl.batchnorm import convert_split_batchnorm
from galtools.ssl.encoder import ContrastiveEncoder, ContrastiveMethod
from galtools.ssl.losses import full_precision, nt_xent


class SimCLR(ContrastiveMethod):
    """``loss = model(x1, x2, seed)``.

    Both views go through the encoder in one forward pass (one pass per step is what DDP expects), interleaved
    as x1[0], x2[0], x1[1], ... with two-group split batch norm: each view is normalised with its own batch
    statistics, so batch norm never mixes an object's two views.  Under DDP the embeddings of every rank are
    gathered (with gradient) so that the whole global batch provides the negatives.
    """

    def __init__(self, backbone: ResNet, dim: int = 128, temperature: float = 0.2):
        super().__init__()
        self.temperature = temperature
        self.set_query_encoder(convert_split_batchnorm(ContrastiveEncoder(backbone, dim), 2))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        interleaved = torch.stack([x1, x2], dim=1).flatten(0, 1)
        if x1.dim() == 4 and x1.is_contiguous(memory_format=torch.channels_last):
            interleaved = interleaved.contiguous(memory_format=torch.channels_last)   # stack returns NCHW
        z = self.run_query_encoder(interleaved).float()
        z1, z2 = z[0::2], z[1::2]
        all_z1, all_z2 = ddp.gather_with_grad(z1), ddp.gather_with_grad(z2)
        offset = ddp.rank() * len(z1)
        loss = nt_xent(z1, z2, self.temperature, all_z1, all_z2, offset=offset)
        with torch.no_grad(), full_precision(z1):
            sim = F.normalize(z1, dim=1) @ F.normalize(all_z2, dim=1).T
            hits = sim.argmax(dim=1) == torch.arange(len(z1), device=z1.device) + offset
        return loss, hits.float().mean()
