"""ViTDet's simple feature pyramid for a plain, single-stride backbone.

A plain backbone (Vim, ViT) produces one feature map at its patch stride (16, or 8 for the
"stride8" variants). Following ViTDet (Li et al., "Exploring Plain Vision Transformer Backbones for
Object Detection", ECCV 2022), a pyramid is built from that map alone: each level is reached by
2x2 stride-2 transposed convolutions (up) or max pooling (down), then a 1x1 conv to
``out_channels``, a norm, a 3x3 conv and a norm. No top-down or lateral connections are needed.

Optionally the pyramid takes one tapped block per level (earlier blocks for finer levels) instead of
the last block for every level.
"""
import math
from collections import OrderedDict
from typing import List, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from timm.layers import LayerNorm2d

__all__ = ['SimpleFeaturePyramid']


def _log2_ratio(a: int, b: int, what: str) -> int:
    """log2(a / b), which must be a whole number (positive or negative)."""
    ratio = math.log2(a / b)
    if ratio != round(ratio):
        raise ValueError(f"{what}: expected a power-of-two ratio, got {a} / {b}.")
    return int(round(ratio))


def _resample(in_channels: int, steps: int) -> nn.Sequential:
    """``steps`` > 0: that many 2x transposed convs (halving channels); < 0: one max-pool by 2**-steps."""
    layers = []
    channels = in_channels
    if steps < 0:
        factor = 2 ** -steps
        layers.append(nn.MaxPool2d(kernel_size=factor, stride=factor))
    for i in range(steps):
        if i > 0:
            layers += [LayerNorm2d(channels), nn.GELU()]
        if channels < 2:
            raise ValueError(f"Too few backbone channels ({in_channels}) to upsample {2 ** steps}x.")
        layers.append(nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2))
        channels //= 2
    block = nn.Sequential(*layers)
    block.out_channels = channels
    return block


class SimpleFeaturePyramid(nn.Module):
    """Feature maps at ``strides`` (default 4, 8, 16, 32) from a plain backbone's map(s).

    Args:
        in_channels: channels of the backbone map (``embed_dim``).
        in_stride: stride of the backbone map in pixels (16, or 8).
        out_channels: channels of every output level.
        strides: output strides, finest first; each a power-of-two multiple or fraction of
            ``in_stride``.
        num_inputs: 1 (every level is built from the same map), or ``len(strides)`` (level ``i`` is
            built from input ``i``).
        extra_pool: also return torchvision's extra ``'pool'`` level: the coarsest level subsampled by
            2 (stride ``2 * strides[-1]``), as ``torchvision.ops.FeaturePyramidNetwork``'s
            ``LastLevelMaxPool`` adds it.

    ``forward`` takes a list of ``num_inputs`` maps (B, in_channels, h, w) and returns an
    ``OrderedDict`` named ``'0'``, ``'1'``, ... (and ``'pool'``), finest first: the names torchvision's
    ``MultiScaleRoIAlign`` expects.
    """

    def __init__(
            self,
            in_channels: int,
            in_stride: int,
            out_channels: int = 256,
            strides: Sequence[int] = (4, 8, 16, 32),
            num_inputs: int = 1,
            extra_pool: bool = True,
    ):
        super().__init__()
        strides = tuple(int(s) for s in strides)
        if not strides or list(strides) != sorted(set(strides)):
            raise ValueError(f"strides must be increasing and distinct, got {strides}.")
        if num_inputs not in (1, len(strides)):
            raise ValueError(f"num_inputs must be 1 or len(strides) = {len(strides)}, got {num_inputs}.")
        self.in_channels = in_channels
        self.in_stride = in_stride
        self.out_channels = out_channels
        self.strides = strides
        self.num_inputs = num_inputs
        self.extra_pool = extra_pool
        self.names = [str(i) for i in range(len(strides))] + (['pool'] if extra_pool else [])

        self.resample = nn.ModuleList()
        self.project = nn.ModuleList()
        for stride in strides:
            steps = _log2_ratio(in_stride, stride, f"output stride {stride} vs backbone stride {in_stride}")
            resample = _resample(in_channels, steps)
            self.resample.append(resample)
            self.project.append(nn.Sequential(
                nn.Conv2d(resample.out_channels, out_channels, kernel_size=1, bias=False),
                LayerNorm2d(out_channels),
                nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
                LayerNorm2d(out_channels),
            ))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def out_strides(self) -> List[int]:
        """Stride of every output level, in the order of ``names``."""
        return list(self.strides) + ([2 * self.strides[-1]] if self.extra_pool else [])

    def forward(self, features: List[torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
        if isinstance(features, torch.Tensor):
            features = [features]
        if len(features) != self.num_inputs:
            raise ValueError(f"SimpleFeaturePyramid expects {self.num_inputs} input map(s), got {len(features)}.")
        for f in features:
            if f.ndim != 4 or f.shape[1] != self.in_channels:
                raise ValueError(
                    f"SimpleFeaturePyramid expects maps of shape (B, {self.in_channels}, h, w), "
                    f"got {tuple(f.shape)}.")
        outputs = []
        for i, (resample, project) in enumerate(zip(self.resample, self.project)):
            x = features[i if self.num_inputs > 1 else 0]
            outputs.append(project(resample(x)))
        if self.extra_pool:
            outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        return OrderedDict(zip(self.names, outputs))
