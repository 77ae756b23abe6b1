"""Vision Mamba layers, in data-path order: patch embedding, RMSNorm (with the residual add), the
bidirectional Mamba mixer, and the block that joins them.

Parameter names follow hustvl/Vim's ``models_mamba.py`` so released checkpoints load unchanged.
The tensor work runs through the ops of :mod:`vim.kernels` (Triton on CUDA, plain PyTorch elsewhere).
"""
import math
import weakref
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, to_2tuple, trunc_normal_

from .kernels import add_rms_norm, mixer_core

# Each mixer's stacked direction parameters while autograd is off (BiMambaMixer.direction_params). A weak map
# rather than a module attribute: it never enters a state_dict, a pickle or a copy of the model.
_STACKED = weakref.WeakKeyDictionary()


def _eager(param) -> bool:
    """Not under torch.compile / export, TorchScript or FX tracing (which hands the module proxies for its
    parameters): the case where BiMambaMixer.direction_params may keep its stacks or build them in one node."""
    compiling = getattr(torch.compiler, 'is_compiling', lambda: False)()   # torch >= 2.3
    return isinstance(param, torch.Tensor) and not compiling and not torch.jit.is_tracing()


def _stack_directions(conv_w, conv_w_b, conv_b, conv_b_b, x_proj, x_proj_b, dt_proj, dt_proj_b, A_log, A_b_log, D,
                      D_b, dt_bias, dt_bias_b) -> Tuple[torch.Tensor, ...]:
    """The forward and backward branches' parameters stacked along a new leading axis of 2 (see
    BiMambaMixer.direction_params)."""
    return (torch.stack((conv_w[:, 0], conv_w_b[:, 0])), torch.stack((conv_b, conv_b_b)),
            torch.stack((x_proj, x_proj_b)).transpose(1, 2), torch.stack((dt_proj, dt_proj_b)).transpose(1, 2),
            -torch.exp(torch.stack((A_log, A_b_log)).float()), torch.stack((D, D_b)), torch.stack((dt_bias, dt_bias_b)))


class _StackDirections(torch.autograd.Function):
    """:func:`_stack_directions` as one autograd node: the dozen stack, select, transpose and exp nodes it would
    otherwise add per block cost eager training more host time than their microseconds of GPU work."""

    @staticmethod
    def forward(ctx, *params):
        stacked = _stack_directions(*params)
        ctx.save_for_backward(stacked[4])
        ctx.A_log_dtype = params[8].dtype                  # A alone is cast (to fp32); the rest keep their dtypes
        return stacked

    @staticmethod
    def backward(ctx, d_conv_w, d_conv_b, d_x_proj, d_dt_proj, d_A, d_D, d_dt_bias):
        A, = ctx.saved_tensors
        d_A_log = (d_A * A).to(ctx.A_log_dtype)            # A = -exp(A_log)
        grads = (d_conv_w.unsqueeze(2), d_conv_b, d_x_proj.transpose(1, 2), d_dt_proj.transpose(1, 2), d_A_log, d_D,
                 d_dt_bias)
        return tuple(g[i] for g in grads for i in range(2))   # in the order of the parameters


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


class BiMambaMixer(nn.Module):
    """Bidirectional Mamba ("bimamba v2" of the released Vim).

    in_proj splits into x and the gate z. The forward branch runs x through a causal depthwise conv,
    SiLU, x_proj (-> dt_low, B, C), dt_proj and the selective scan; the backward branch does the same on
    the reversed sequence with its own ``*_b`` weights. Both are gated by silu(z) at the same positions,
    averaged ("divide out") and projected back by out_proj. Reversal is a kernel flag: no flipped copies.
    ``recompute``: on the Triton path, the scan recomputes the conv output and dt instead of autograd keeping
    them for the backward (less training memory, a slower mixer; see :func:`vim.kernels.mixer_core`).
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
        self.d_inner = expand * dim
        self.d_state = d_state
        self.dt_rank = dt_rank or math.ceil(dim / 16)
        self.dt_limits = (dt_min, dt_max, dt_init_floor)
        self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=False, **dd)
        for suffix in ('', '_b'):  # forward, backward branch
            self.add_module('conv1d' + suffix, nn.Conv1d(
                self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, **dd))
            self.add_module('x_proj' + suffix, nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **dd))
            self.add_module('dt_proj' + suffix, nn.Linear(self.dt_rank, self.d_inner, **dd))
            self.register_parameter('A' + suffix + '_log', nn.Parameter(torch.empty(self.d_inner, d_state, **dd)))
            self.register_parameter('D' + suffix, nn.Parameter(torch.empty(self.d_inner, **dd)))
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False, **dd)

    @torch.no_grad()
    def init_weights(self, depth: int) -> None:
        """Mamba's initialisation: S4D-real A, unit D, dt_proj bias = softplus^-1 of a log-uniform dt in
        [dt_min, dt_max], and out_proj scaled by 1/sqrt(depth) for the pre-norm residual stream."""
        dt_min, dt_max, dt_floor = self.dt_limits
        for suffix in ('', '_b'):
            dt_proj = getattr(self, 'dt_proj' + suffix)
            nn.init.uniform_(dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
            u = torch.rand(self.d_inner, device=dt_proj.bias.device, dtype=torch.float32)
            dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_floor)
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=dt.device)
            getattr(self, 'A' + suffix + '_log').copy_(torch.log(A).expand(self.d_inner, -1))
            getattr(self, 'D' + suffix).fill_(1.0)
            trunc_normal_(getattr(self, 'x_proj' + suffix).weight, std=0.02)
        trunc_normal_(self.in_proj.weight, std=0.02)
        nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))
        self.out_proj.weight.div_(math.sqrt(depth))

    def branch_params(self) -> Tuple[torch.Tensor, ...]:
        """Each direction-specific parameter, forward branch then backward branch of each kind, in the order
        :func:`_stack_directions` takes them."""
        return (self.conv1d.weight, self.conv1d_b.weight, self.conv1d.bias, self.conv1d_b.bias, self.x_proj.weight,
                self.x_proj_b.weight, self.dt_proj.weight, self.dt_proj_b.weight, self.A_log, self.A_b_log, self.D,
                self.D_b, self.dt_proj.bias, self.dt_proj_b.bias)

    def direction_params(self) -> Tuple[torch.Tensor, ...]:
        """Both directions' parameters stacked as the bidirectional ops take them: conv weight (2, E, W) and bias,
        x_proj and dt_proj weights transposed for bmm, A = -exp(A_log) in fp32, D, dt_proj bias.

        With autograd off (eager inference) the stacks are kept until a parameter gets new storage or an in-place
        update (its data pointer or version changes): rebuilding them costs 10 small ops per block and call,
        a good part of the host's time per batch where eager inference is host-bound (small batches). In eager
        training they are built by one autograd node (:class:`_StackDirections`) instead of a dozen."""
        params = self.branch_params()
        if not _eager(self.A_log):
            return _stack_directions(*params)
        if torch.is_grad_enabled():
            return _StackDirections.apply(*params)
        key = tuple((p.data_ptr(), p._version) for p in params) + (torch.is_inference_mode_enabled(),)
        cached = _STACKED.get(self)
        if cached is None or cached[0] != key:
            cached = _STACKED[self] = key, _stack_directions(*params)
        return cached[1]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(hidden).chunk(2, dim=-1)                       # (batch, L, E) each
        # conv1d + SiLU -> x_proj -> dt_proj -> scan, gated and averaged (vim.kernels.triton_mixer on the GPU)
        return self.out_proj(mixer_core(x, z, *self.direction_params(), recompute=self.recompute))


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
