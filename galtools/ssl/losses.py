"""Contrastive losses, written as in the papers.

InfoNCE is equation (1) of Hayat et al. 2021 (after Oord et al. 2018 and MoCo v2):

    L(q, k+, {k-}) = -log( exp(sim(q, k+)) / (exp(sim(q, k+)) + sum_k- exp(sim(q, k-))) ),
    sim(a, b) = a.b / (tau |a| |b|)            (cosine similarity over a temperature tau; 0.2 in MoCo v2)

NT-Xent is SimCLR's loss (Chen et al. 2020): every view is an anchor, its other view the positive, and all the other
2N-2 views of the batch the negatives, with the same temperature-scaled cosine similarity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def full_precision(tensor: torch.Tensor):
    """Leave the caller's bf16 autocast for the similarities: under it a matmul of float32 inputs still runs in
    bf16 (8-bit mantissa), logit errors of ~0.02 at temperature 0.2; in float32 the (N x K) product costs little."""
    return torch.autocast(tensor.device.type, enabled=False)


def info_nce(q: torch.Tensor, k_pos: torch.Tensor, k_neg: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """Mean InfoNCE over the N queries.  q, k_pos: (N, D); k_neg: (K, D) negatives shared by all queries (the queue)."""
    with full_precision(q):
        q = F.normalize(q.float(), dim=1)
        k_pos = F.normalize(k_pos.float(), dim=1)
        k_neg = F.normalize(k_neg.float(), dim=1)
        l_pos = (q * k_pos).sum(dim=1, keepdim=True)           # (N, 1) cosine similarity to the positive
        l_neg = q @ k_neg.T                                     # (N, K) cosine similarity to each negative
        logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    # -log softmax at index 0 is exactly -log(exp(s+) / (exp(s+) + sum exp(s-))).
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2,
            all_z1: torch.Tensor | None = None, all_z2: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
    """Mean NT-Xent over the 2n local views z1, z2 (n, D).

    Under data parallelism ``all_z1``/``all_z2`` (N, D) hold every rank's views (gathered with gradient) and
    ``offset`` is where this rank's n rows start in them, so the negatives are the whole global batch.
    """
    all_z1 = z1 if all_z1 is None else all_z1
    all_z2 = z2 if all_z2 is None else all_z2
    n, big_n = len(z1), len(all_z1)
    with full_precision(z1):
        anchors = F.normalize(torch.cat([z1, z2]).float(), dim=1)                   # (2n, D)
        candidates = F.normalize(torch.cat([all_z1, all_z2]).float(), dim=1)        # (2N, D)
        logits = anchors @ candidates.T / temperature                               # (2n, 2N)
    local = torch.arange(n, device=z1.device) + offset
    self_index = torch.cat([local, local + big_n])
    positive_index = torch.cat([local + big_n, local])
    # An anchor is never its own negative: remove it from the softmax's denominator.
    logits = logits.masked_fill(F.one_hot(self_index, 2 * big_n).bool(), float("-inf"))
    return F.cross_entropy(logits, positive_index)
