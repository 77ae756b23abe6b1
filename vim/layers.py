"""Vision Mamba layers, in data-path order: patch embedding, RMSNorm (with the residual add), the
bidirectional Mamba mixer, and the block that joins them.

Parameter names follow hustvl/Vim's ``models_mamba.py``, except that the mixer keeps each direction-specific
parameter of both directions in one tensor (:class:`BiMambaMixer`); released checkpoints load unchanged.
The tensor work runs through the ops of :mod:`vim.kernels` (Triton on CUDA, plain PyTorch elsewhere).
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, to_2tuple, trunc_normal_

from .kernels import add_rms_norm, mixer_core

def grid_size(img_size: Tuple[int, int], patch_size: Tuple[int, int], stride: Tuple[int, int]) -> Tuple[int, int]:
    """Token grid of a conv with kernel ``patch_size`` and ``stride`` and no padding."""
    return tuple((s - p) // st + 1 for s, p, st in zip(img_size, patch_size, stride))


def check_image(
        x: torch.Tensor,
        in_chans: int,
        img_size: Optional[Tuple[int, int]],
        patch_size: Tuple[int, int],
) -> torch.Tensor:
    """Raise a clear error for input no Vim can read; returns ``x`` so FX keeps the check in the graph.

    ``img_size`` is the one size a fixed-size model accepts, or None when any size >= the patch works.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'Expected an image batch as a torch.Tensor, got {type(x).__name__}.')
    if x.ndim != 4:
        raise ValueError(f'Expected a 4-D image batch (batch, channels, height, width), got shape {tuple(x.shape)}.')
    if not x.is_floating_point():
        raise TypeError(
            f'Expected a floating-point image tensor, got {x.dtype}: convert it (e.g. x.float() / 255) '
            f'and normalise it first.')
    if x.shape[1] != in_chans:
        raise ValueError(f'Expected {in_chans} input channels, got {x.shape[1]} (input shape {tuple(x.shape)}).')
    height, width = x.shape[-2:]
    if img_size is not None and (height, width) != tuple(img_size):
        raise ValueError(
            f'Expected images of {img_size[0]}x{img_size[1]}, got {height}x{width}. Resize them, or create the '
            f'model with img_size=({height}, {width}) or dynamic_img_size=True.')
    if height < patch_size[0] or width < patch_size[1]:
        raise ValueError(
            f'Image of {height}x{width} is smaller than one {patch_size[0]}x{patch_size[1]} patch.')
    return x


# Leaves for FX tracing: their input checks and backend dispatch are Python, not graph ops.
for _fn in (add_rms_norm, mixer_core, check_image):
    torch.fx.wrap(_fn.__name__)


class PatchEmbed(nn.Module):
    """Image to a grid of patch tokens: Conv2d with kernel ``patch_size`` and ``stride`` (Vim's stride-8
    variants overlap their 16x16 patches). Returns NHWC so the caller knows the grid."""

    def __init__(
            self,
            img_size: int = 224,
            patch_size: int = 16,
            stride: int = 16,
            in_chans: int = 3,
            embed_dim: int = 192,
            dynamic_img_size: bool = False,
            dynamic_img_pad: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.stride = to_2tuple(stride)
        self.in_chans = in_chans
        self.dynamic_img_size = dynamic_img_size
        self.dynamic_img_pad = dynamic_img_pad
        self.set_input_size(img_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, self.stride, device=device, dtype=dtype)

    def set_input_size(self, img_size) -> None:
        self.img_size = to_2tuple(img_size)
        if min(i - p for i, p in zip(self.img_size, self.patch_size)) < 0:
            raise ValueError(f'img_size {self.img_size} is smaller than the patch size {self.patch_size}.')
        self.grid_size = grid_size(self.img_size, self.patch_size, self.stride)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def padding(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        """Bottom/right padding that puts the last patch flush with the image (dynamic_img_pad)."""
        if not self.dynamic_img_pad:
            return 0, 0
        return tuple((st - (s - p) % st) % st for s, p, st in zip(img_size, self.patch_size, self.stride))

    def dynamic_feat_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        padded = tuple(s + p for s, p in zip(img_size, self.padding(img_size)))
        return grid_size(padded, self.patch_size, self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fixed = None if (self.dynamic_img_size or self.dynamic_img_pad) else self.img_size
        x = check_image(x, self.in_chans, fixed, self.patch_size)
        if self.dynamic_img_pad:
            pad_h, pad_w = self.padding(x.shape[-2:])
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.proj(x).permute(0, 2, 3, 1)


class RMSNorm(nn.Module):
    """RMSNorm fused with the residual add before it: ``forward(x, residual)`` returns
    ``(norm(x + residual), x + residual)``, the sum kept in float32 when ``residual_in_fp32``."""

    def __init__(self, dim: int, eps: float = 1e-5, residual_in_fp32: bool = True, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.residual_in_fp32 = residual_in_fp32
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        return add_rms_norm(x, residual, self.weight, self.eps, self.residual_in_fp32)


class ResidualSum(nn.Module):
    """Stands in for a pruned final norm: the residual add alone."""

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        summed = x if residual is None else residual + x
        return summed.to(x.dtype), summed


def _linear_to_bmm(stacked: torch.Tensor) -> torch.Tensor:
    """(2, out, in) nn.Linear weights -> (2, in, out), contiguous: the kernels want a unit channel stride."""
    return stacked.transpose(1, 2).contiguous()


# Each stacked mixer parameter: its released (hustvl/Vim) names, forward then backward branch, and what turns
# the two released tensors, stacked, into ours (None: nothing). Conv weights (2, E, 1, W) -> (2, E, W).
RELEASED_NAMES = {
    'conv_weight': ('conv1d.weight', 'conv1d_b.weight', lambda stacked: stacked[:, :, 0]),
    'conv_bias': ('conv1d.bias', 'conv1d_b.bias', None),
    'x_proj_weight': ('x_proj.weight', 'x_proj_b.weight', _linear_to_bmm),
    'dt_proj_weight': ('dt_proj.weight', 'dt_proj_b.weight', _linear_to_bmm),
    'A_log': ('A_log', 'A_b_log', None),
    'D': ('D', 'D_b', None),
    'dt_bias': ('dt_proj.bias', 'dt_proj_b.bias', None),
}


class BiMambaMixer(nn.Module):
    """Bidirectional Mamba ("bimamba v2" of the released Vim).

    in_proj splits into x and the gate z. The forward branch runs x through a causal depthwise conv,
    SiLU, x_proj (-> dt_low, B, C), dt_proj and the selective scan; the backward branch does the same on
    the reversed sequence with its own weights. Both are gated by silu(z) at the same positions,
    averaged ("divide out") and projected back by out_proj. Reversal is a kernel flag: no flipped copies.
    ``recompute``: on the Triton path, the scan recomputes the conv output and dt instead of autograd keeping
    them for the backward (less training memory, a slower mixer; see :func:`vim.kernels.mixer_core`).

    Each direction-specific parameter holds both directions (index 0 forward, 1 backward), laid out as the
    bidirectional ops take them: ``conv_weight`` (2, E, W), ``conv_bias`` (2, E), ``x_proj_weight``
    (2, E, R + 2N) and ``dt_proj_weight`` (2, R, E) for bmm, ``A_log`` (2, E, N), ``D`` and ``dt_bias`` (2, E).
    Stacking them on every call instead cost eager training a dozen small launches and autograd nodes per
    block. A state dict in the released layout (``conv1d.weight``, ``conv1d_b.weight``, ..., see
    ``RELEASED_NAMES``) loads as well: it is stacked on the way in.
    """

    def __init__(
            self,
            dim: int,
            d_state: int = 16,
            d_conv: int = 4,
            expand: int = 2,
            dt_rank: Optional[int] = None,
            dt_min: float = 0.001,
            dt_max: float = 0.1,
            dt_init_floor: float = 1e-4,
            recompute: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.recompute = recompute
        self.d_inner = E = expand * dim
        self.d_state = d_state
        self.dt_rank = R = dt_rank or math.ceil(dim / 16)
        self.dt_limits = (dt_min, dt_max, dt_init_floor)
        self.in_proj = nn.Linear(dim, 2 * E, bias=False, **dd)
        for name, shape in (('conv_weight', (E, d_conv)), ('conv_bias', (E,)), ('x_proj_weight', (E, R + 2 * d_state)),
                            ('dt_proj_weight', (R, E)), ('A_log', (E, d_state)), ('D', (E,)), ('dt_bias', (E,))):
            self.register_parameter(name, nn.Parameter(torch.empty(2, *shape, **dd)))
        self.out_proj = nn.Linear(E, dim, bias=False, **dd)

    @torch.no_grad()
    def init_weights(self, depth: int) -> None:
        """Mamba's initialisation: the conv as torch's default for a depthwise Conv1d, S4D-real A, unit D,
        dt_proj bias = softplus^-1 of a log-uniform dt in [dt_min, dt_max], and out_proj scaled by 1/sqrt(depth)
        for the pre-norm residual stream."""
        dt_min, dt_max, dt_floor = self.dt_limits
        bound = self.conv_weight.shape[-1] ** -0.5                 # nn.Conv1d's: 1 / sqrt(fan_in), fan_in = W
        nn.init.uniform_(self.conv_weight, -bound, bound)
        nn.init.uniform_(self.conv_bias, -bound, bound)
        trunc_normal_(self.x_proj_weight, std=0.02)
        nn.init.uniform_(self.dt_proj_weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        u = torch.rand(self.dt_bias.shape, device=self.dt_bias.device, dtype=torch.float32)
        dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=dt.device)
        self.A_log.copy_(torch.log(A).expand_as(self.A_log))
        self.D.fill_(1.0)
        trunc_normal_(self.in_proj.weight, std=0.02)
        nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))
        self.out_proj.weight.div_(math.sqrt(depth))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        released = [prefix + key for forward, backward, _ in RELEASED_NAMES.values() for key in (forward, backward)]
        if all(key in state_dict for key in released):           # the released layout: one tensor per direction
            for name, (forward, backward, to_ours) in RELEASED_NAMES.items():
                stacked = torch.stack((state_dict.pop(prefix + forward), state_dict.pop(prefix + backward)))
                state_dict[prefix + name] = stacked if to_ours is None else to_ours(stacked)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(hidden).chunk(2, dim=-1)                       # (batch, L, E) each
        # conv1d + SiLU -> x_proj -> dt_proj -> scan, gated and averaged (vim.kernels.triton_mixer on the GPU)
        return self.out_proj(mixer_core(x, z, self.conv_weight, self.conv_bias, self.x_proj_weight,
                                        self.dt_proj_weight, self.A_log, self.D, self.dt_bias,
                                        recompute=self.recompute))


class Block(nn.Module):
    """Add -> RMSNorm -> mixer. Takes and returns (hidden, residual); the residual is the running sum of
    every earlier output (float32), ``hidden`` the last mixer output, stochastic depth on ``hidden``.
    ``d_state``, ``d_conv``, ``expand``, ``dt_rank`` and ``mixer_recompute`` (its ``recompute``) are the
    :class:`BiMambaMixer`'s."""

    def __init__(
            self,
            dim: int,
            drop_path: float = 0.0,
            norm_eps: float = 1e-5,
            residual_in_fp32: bool = True,
            d_state: int = 16,
            d_conv: int = 4,
            expand: int = 2,
            dt_rank: Optional[int] = None,
            mixer_recompute: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        self.norm = RMSNorm(dim, norm_eps, residual_in_fp32, device=device, dtype=dtype)
        self.mixer = BiMambaMixer(dim, d_state, d_conv, expand, dt_rank, recompute=mixer_recompute, device=device,
                                  dtype=dtype)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(
            self, hidden: torch.Tensor, residual: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        hidden, residual = self.norm(self.drop_path(hidden), residual)
        return self.mixer(hidden), residual
