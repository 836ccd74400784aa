"""MoCo v2 (He et al. 2020; Chen, Fan, Girshick & He 2020), as used by Hayat et al. (2021) for SDSS galaxies.

A query encoder (backbone + 2-layer MLP head) is trained with InfoNCE against the key of the other view of the same
galaxy (the positive) and a queue of K keys of earlier batches (the negatives).  The key encoder is not trained by
gradient: it is an exponential moving average of the query encoder, theta_k <- m theta_k + (1 - m) theta_q.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from galtools.models import ResNet
from galtools.ssl import distributed as ddp
from galtools.ssl.batchnorm import convert_split_batchnorm
from galtools.ssl.encoder import ContrastiveEncoder, ContrastiveMethod
from galtools.ssl.losses import full_precision, info_nce


def permutation(n: int, seed: int, device: torch.device) -> torch.Tensor:
    """A random permutation of n from its own generator: the same on every rank and on a resumed run."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator).to(device, non_blocking=True)


class MoCo(ContrastiveMethod):
    """MoCo v2: ``loss = model(x_q, x_k, seed)`` for two augmented views of the same objects.

    ``bn_splits`` > 1 turns on the one-device shuffle-BN equivalent (split batch norm + permuted keys); under
    DDP each rank's batch is one group and the keys are shuffled across ranks instead (``bn_splits`` = 1).
    """

    def __init__(self, backbone: ResNet, dim: int = 128, queue_size: int = 65536, momentum: float = 0.999,
                 temperature: float = 0.2, bn_splits: int = 1):
        super().__init__()
        self.queue_size, self.momentum, self.temperature, self.bn_splits = queue_size, momentum, temperature, bn_splits
        encoder = ContrastiveEncoder(backbone, dim)
        self.set_query_encoder(convert_split_batchnorm(encoder, bn_splits) if bn_splits > 1 else encoder)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        # The queue starts as random unit vectors (as in MoCo); it fills with real keys after K / batch steps.
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q for every parameter (buffers keep their own statistics)."""
        key_params = list(self.encoder_k.parameters())
        query_params = [p.detach() for p in self.encoder_q.parameters()]
        torch._foreach_mul_(key_params, self.momentum)
        torch._foreach_add_(key_params, query_params, alpha=1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (n, dim) over the oldest entries of the queue, wrapping around its end.

        Index arithmetic stays on the device: reading the pointer on the host would stall a GPU every step."""
        n = len(keys)
        if n > self.queue_size:
            raise ValueError(f"cannot enqueue {n} keys into a queue of {self.queue_size}")
        slots = (self.queue_ptr + torch.arange(n, device=self.queue.device)) % self.queue_size
        self.queue.index_copy_(0, slots, keys.to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + n) % self.queue_size)

    @torch.no_grad()
    def encode_keys(self, x_k: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys of this rank's objects and of the whole global batch, computed with shuffled batch norm."""
        if ddp.is_distributed():
            # Shuffle BN across ranks: every rank encodes a random slice of the global batch.
            x_all = ddp.gather_no_grad(x_k)
            perm = permutation(len(x_all), seed, x_k.device)
            local = len(x_k)
            start = ddp.rank() * local
            k_shuffled = F.normalize(self.encoder_k(x_all[perm[start:start + local]]).float(), dim=1)
            gathered = ddp.gather_no_grad(k_shuffled)
            k_all = torch.empty_like(gathered)
            k_all[perm] = gathered                      # undo the shuffle: row i is object i's key again
            return k_all[start:start + local], k_all
        if self.bn_splits > 1:
            perm = permutation(len(x_k), seed, x_k.device)
            k = torch.empty(len(x_k), self.queue.shape[1], device=x_k.device)
            k[perm] = F.normalize(self.encoder_k(x_k[perm]).float(), dim=1)
            return k, k
        k = F.normalize(self.encoder_k(x_k).float(), dim=1)
        return k, k

    def forward(self, x_q: torch.Tensor, x_k: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """InfoNCE loss of the queries against their keys and the queue; also the top-1 accuracy of the positive."""
        q = F.normalize(self.run_query_encoder(x_q).float(), dim=1)
        self.momentum_update()
        k, k_all = self.encode_keys(x_k, seed)
        negatives = self.queue.clone().detach()
        loss = info_nce(q, k, negatives, self.temperature)
        with torch.no_grad(), full_precision(q):
            positive_wins = (q * k).sum(1) > (q @ negatives.T).max(dim=1).values
        self.enqueue(k_all)
        return loss, positive_wins.float().mean()
