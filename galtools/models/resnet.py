"""ResNet encoders for multi-band galaxy cutouts (He et al. 2016), written in galtools.

One readable file in the spirit of timm's ``resnet.py``: ``in_chans`` for any number of bands, a width multiplier,
``forward_features`` returning the pooled representation and ``num_features`` giving its size.  The classifier of
ImageNet ResNets is left out on purpose: galtools only ever needs the representation (heads live in ``galtools.heads``).

Two stems:
- ``imagenet``: 7x7 stride-2 convolution + 3x3 stride-2 max-pool (the torchvision layout, for large images);
- ``hayat``: 7x7 stride-1 convolution and no max-pool, the variant of Hayat et al. (2021) for 64x64 SDSS cutouts,
  which keeps the small galaxies' pixels through the stem (feature maps 64 -> 64 -> 32 -> 16 -> 8).

Three global poolings of the last feature maps into the representation:
- ``avg``: the mean over positions (He et al.; Hayat et al.'s);
- ``gem``: the generalised mean (mean of x^3)^(1/3) (Radenovic et al. 2018, from image retrieval), between the mean
  and the maximum: a feature that fires strongly in a few places (an edge, a thin disk) is not diluted by the
  empty sky around a small galaxy;
- ``max``: the maximum over positions.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


POOLS = ("avg", "gem", "max")
GEM_POWER = 3.0
GEM_EPS = 1e-6


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class _Residual(nn.Module):
    """A residual block: ``relu(residual(x) + shortcut(x))``, the shortcut the identity or ``downsample`` (a 1x1
    projection, set by the subclass after its convolutions, so that the parameters keep their order in a
    checkpoint's optimizer state); each subclass has its ``residual(x)`` branch and ``last_bn``, the batch norm that
    ends it."""

    downsample: nn.Module | None

    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU(inplace=True)

    def zero_init_last(self) -> None:
        """Zero the last batch norm's scale: the block starts as its shortcut (Goyal et al. 2017)."""
        nn.init.zeros_(self.last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.residual(x) + shortcut)


class BasicBlock(_Residual):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut: ResNet-18/34."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))


class Bottleneck(_Residual):
    """1x1 reduce, 3x3 (stride here, as in torchvision's "ResNet v1.5"), 1x1 expand x4: ResNet-50."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class ResNet(nn.Module):
    """A ResNet backbone without classifier: ``forward`` (= ``forward_features``) returns (N, num_features)."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        in_chans: int = 5,
        width: float = 1.0,
        base_planes: int = 64,
        stem: str = "hayat",
        stem_kernel: int = 7,
        zero_init_residual: bool = True,
        pool: str = "avg",
    ):
        super().__init__()
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        if stem not in ("hayat", "imagenet"):
            raise ValueError(f"unknown stem {stem!r} (use 'hayat' or 'imagenet')")
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r} (use {', '.join(POOLS)})")
        self.pool = pool
        self.in_chans = in_chans
        self.stem = stem
        planes = [max(1, int(round(base_planes * width * 2**i))) for i in range(len(layers))]
        stem_stride = 1 if stem == "hayat" else 2
        self.conv1 = nn.Conv2d(in_chans, planes[0], kernel_size=stem_kernel, stride=stem_stride,
                               padding=stem_kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        self.in_planes = planes[0]
        stages = []
        for i, (stage_planes, depth) in enumerate(zip(planes, layers)):
            stages.append(self._make_stage(block, stage_planes, depth, stride=1 if i == 0 else 2))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.in_planes
        self._init_weights(zero_init_residual)

    def _make_stage(self, block, planes: int, depth: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.in_planes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.in_planes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        blocks = [block(self.in_planes, planes, stride, downsample)]
        self.in_planes = planes * block.expansion
        blocks += [block(self.in_planes, planes) for _ in range(1, depth)]
        return nn.Sequential(*blocks)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each residual block starts as the identity, which helps deep ResNets train from the first steps.
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    m.zero_init_last()

    def forward_feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.stages(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The representation: the globally pooled output of the last stage (``pool``), (N, num_features)."""
        maps = self.forward_feature_maps(x)
        if self.pool == "max":
            return maps.amax(dim=(2, 3))
        if self.pool == "gem":
            return maps.clamp(min=GEM_EPS).pow(GEM_POWER).mean(dim=(2, 3)).pow(1.0 / GEM_POWER)
        # global average pooling as a mean: AdaptiveAvgPool2d's CUDA backward refuses deterministic mode
        return maps.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)
