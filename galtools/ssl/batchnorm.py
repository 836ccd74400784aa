"""Batch norm that does not leak information between the two views of an object.

MoCo (He et al. 2020, section 3.3) found that a model "cheats" the contrastive task through batch statistics when
a query and its positive key are normalised with statistics of the same batch.  Across GPUs MoCo shuffles the keys
between devices (see ``galtools.ssl.moco``).  On one device the equivalent is to normalise ``G`` sub-batches
separately (here: samples ``g, g+G, g+2G, ...``) and to permute the keys before their encoder, so that the key of
an object meets other objects in its sub-batch than its query does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed on ``num_splits`` interleaved sub-batches.

    Same parameters and buffers as BatchNorm2d (a state dict moves freely between the two); in eval mode it is
    BatchNorm2d.  The running statistics are the average of the sub-batches' running updates.
    """

    def __init__(self, num_features: int, num_splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        splits = self.num_splits
        if n % splits:
            raise ValueError(f"batch of {n} cannot be split into {splits} batch-norm groups")
        running_mean = self.running_mean.repeat(splits)
        running_var = self.running_var.repeat(splits)
        # view(n/G, G*C, ...) puts sample j*G+g's channel c at channel g*C+c: one batch_norm call, G groups.
        grouped = x.reshape(n // splits, c * splits, h, w)
        out = F.batch_norm(grouped, running_mean, running_var, self.weight.repeat(splits), self.bias.repeat(splits),
                           True, self.momentum, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(running_mean.view(splits, c).mean(dim=0))
            self.running_var.copy_(running_var.view(splits, c).mean(dim=0))
            self.num_batches_tracked.add_(1)
        out = out.view(n, c, h, w)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            out = out.contiguous(memory_format=torch.channels_last)
        return out


def convert_split_batchnorm(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` (in place) by a SplitBatchNorm2d with the same state."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm2d):
            split = SplitBatchNorm2d(child.num_features, num_splits, eps=child.eps, momentum=child.momentum,
                                     affine=child.affine, track_running_stats=child.track_running_stats)
            split.load_state_dict(child.state_dict())
            split.to(child.weight.device)
            setattr(module, name, split)
        else:
            convert_split_batchnorm(child, num_splits)
    return module
