"""A plain Vim (or any timm ``forward_intermediates`` model) with a simple feature pyramid on top.

:class:`VimDetectionBackbone` is what torchvision's detectors take as ``backbone``: ``forward(images)``
returns an ``OrderedDict`` of maps and the module has ``out_channels``. It accepts any image size:
the batch is zero-padded at the bottom/right to a multiple of the coarsest pyramid stride (as
torchvision's ``GeneralizedRCNNTransform`` pads batches), so every level ``i`` has exactly
``padded_size / stride_i`` cells and the detector's anchors line up with the maps.
"""
import math
import os
from collections import OrderedDict
from typing import List, Sequence, Tuple, Union

import timm
import torch
from torch import nn
from torch.nn import functional as F

from .pyramid import SimpleFeaturePyramid

__all__ = ['VimDetectionBackbone', 'vim_detection_backbone', 'trunk_blocks']

PathOrFlag = Union[bool, str, os.PathLike]


def trunk_blocks(trunk: nn.Module) -> nn.ModuleList:
    """The list of blocks of a plain timm backbone (``layers`` in Vim, ``blocks`` in ViT)."""
    for name in ('layers', 'blocks'):
        blocks = getattr(trunk, name, None)
        if isinstance(blocks, (nn.ModuleList, nn.Sequential)):
            return blocks
    raise TypeError(f"{type(trunk).__name__} has neither a 'layers' nor a 'blocks' list of blocks.")


def _normalise_taps(tap_indices: Sequence[int], depth: int) -> List[int]:
    taps = [i + depth if i < 0 else i for i in tap_indices]
    if not taps or any(not 0 <= i < depth for i in taps):
        raise ValueError(f"tap_indices {list(tap_indices)} out of range for a backbone of depth {depth}.")
    if taps != sorted(set(taps)):
        raise ValueError(f"tap_indices must be distinct and increasing (finest level first), got {list(tap_indices)}.")
    return taps


class VimDetectionBackbone(nn.Module):
    """Plain backbone (``trunk``) + :class:`SimpleFeaturePyramid` (``pyramid``).

    Args:
        trunk: a timm model with ``forward_intermediates`` returning NCHW maps, a ``patch_embed.proj``
            conv and ``dynamic_img_size=True`` (Vim or ViT).
        out_channels: channels of every pyramid level.
        tap_indices: blocks whose outputs feed the pyramid: one block for every level (default: the
            last block), or one block per level in ``strides``, finest level first.
        norm_taps: apply the trunk's final norm to the tapped maps.
        strides: pyramid output strides (default 4, 8, 16, 32).
        extra_pool: add torchvision's ``'pool'`` level (stride ``2 * strides[-1]``).
        prune: drop the trunk's blocks after the last tap, its classifier head and (when
            ``norm_taps`` is off) its final norm, so they hold no parameters.
    """

    def __init__(
            self,
            trunk: nn.Module,
            out_channels: int = 256,
            tap_indices: Sequence[int] = (-1,),
            norm_taps: bool = True,
            strides: Sequence[int] = (4, 8, 16, 32),
            extra_pool: bool = True,
            prune: bool = True,
    ):
        super().__init__()
        if getattr(trunk, 'dynamic_img_size', True) is False:
            raise ValueError(
                "The trunk must be created with dynamic_img_size=True so that it accepts the sizes a "
                "detector produces.")
        proj = trunk.patch_embed.proj
        self.patch_size = int(proj.kernel_size[0])
        self.patch_stride = int(proj.stride[0])
        self.in_chans = int(proj.in_channels)
        depth = len(trunk_blocks(trunk))
        self.tap_indices = _normalise_taps(tap_indices, depth)
        self.norm_taps = norm_taps
        if prune:
            trunk.prune_intermediate_layers(self.tap_indices, prune_norm=not norm_taps, prune_head=True)
        self.trunk = trunk
        self.pyramid = SimpleFeaturePyramid(
            in_channels=trunk.num_features,
            in_stride=self.patch_stride,
            out_channels=out_channels,
            strides=strides,
            num_inputs=1 if len(self.tap_indices) == 1 else len(self.tap_indices),
            extra_pool=extra_pool,
        )
        self.out_channels = out_channels
        # inputs are padded to a multiple of this, so every level's grid is exact
        self.size_divisibility = max(max(strides), self.patch_stride)

    @property
    def names(self) -> List[str]:
        return self.pyramid.names

    @property
    def out_strides(self) -> List[int]:
        return self.pyramid.out_strides

    def _pad(self, images: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        """Zero-pad bottom/right so the patch conv's output grid is (padded_h, padded_w) / patch_stride."""
        h, w = images.shape[-2:]
        div = self.size_divisibility
        padded_h, padded_w = math.ceil(h / div) * div, math.ceil(w / div) * div
        # a conv of kernel k and stride s over n + (k - s) pixels gives n / s outputs
        extra = self.patch_size - self.patch_stride
        images = F.pad(images, (0, padded_w + extra - w, 0, padded_h + extra - h))
        return images, padded_h // self.patch_stride, padded_w // self.patch_stride

    def trunk_features(self, images: torch.Tensor) -> List[torch.Tensor]:
        """The tapped trunk maps, each (B, embed_dim, ceil(H / div) * div / patch_stride, ...)."""
        if images.ndim != 4 or images.shape[1] != self.in_chans:
            raise ValueError(f"Expected images of shape (B, {self.in_chans}, H, W), got {tuple(images.shape)}.")
        padded, grid_h, grid_w = self._pad(images)
        maps = self.trunk.forward_intermediates(
            padded, indices=self.tap_indices, norm=self.norm_taps, intermediates_only=True)
        fitted = []
        for m in maps:
            if m.shape[-2] < grid_h or m.shape[-1] < grid_w:
                raise RuntimeError(
                    f"Trunk returned a {tuple(m.shape[-2:])} map for a {tuple(padded.shape[-2:])} input; "
                    f"expected at least {(grid_h, grid_w)} at stride {self.patch_stride}.")
            # a trunk that pads further (to its patch size) gives extra cells at the bottom/right
            fitted.append(m[..., :grid_h, :grid_w])
        return fitted

    def forward(self, images: torch.Tensor) -> 'OrderedDict[str, torch.Tensor]':
        return self.pyramid(self.trunk_features(images))


def vim_detection_backbone(
        model_name: str = 'vim_small_patch16_224',
        pretrained: PathOrFlag = False,
        out_channels: int = 256,
        tap_indices: Sequence[int] = (-1,),
        norm_taps: bool = True,
        strides: Sequence[int] = (4, 8, 16, 32),
        extra_pool: bool = True,
        drop_path_rate: float = 0.1,
        grad_checkpointing: bool = False,
        **model_kwargs,
) -> VimDetectionBackbone:
    """Create a timm model by name and wrap it as a detection backbone.

    Args:
        model_name: a timm model name, e.g. ``'vim_small_patch16_224'``.
        pretrained: ``False``; ``True`` (the model's default pretrained weights); or the path of a
            checkpoint file (a released Vim ``.pth``, or a timm checkpoint) to load.
        drop_path_rate: stochastic depth of the trunk (ViTDet fine-tunes with 0.1 for Base).
        grad_checkpointing: recompute the trunk's blocks in the backward pass to save memory.
        model_kwargs: passed to ``timm.create_model`` (``img_size``, ``embed_dim``, ``depth``, ...).

    Other arguments are those of :class:`VimDetectionBackbone`.
    """
    create_kwargs = dict(model_kwargs)
    if isinstance(pretrained, (str, os.PathLike)):
        create_kwargs['pretrained_cfg_overlay'] = dict(file=os.fspath(pretrained))
        pretrained = True
    create_kwargs.setdefault('dynamic_img_size', True)
    create_kwargs.setdefault('dynamic_img_pad', True)
    trunk = timm.create_model(model_name, pretrained=bool(pretrained), drop_path_rate=drop_path_rate, **create_kwargs)
    if grad_checkpointing:
        trunk.set_grad_checkpointing(True)
    return VimDetectionBackbone(
        trunk, out_channels=out_channels, tap_indices=tap_indices, norm_taps=norm_taps,
        strides=strides, extra_pool=extra_pool)
