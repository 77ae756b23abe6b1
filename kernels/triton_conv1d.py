"""Triton depthwise causal conv1d (+ SiLU), one or both directions per launch, forward and backward.

Layout: x (batch, L, E) with channels contiguous; weight (ndir, E, W); bias (ndir, E); output (ndir, batch, L, E).
Direction d scans forward (causal: out_t reads x_{t-W+1} .. x_t) or, when reversed, backward
(anti-causal: out_t reads x_t .. x_{t+W-1}, tap k at x_{t+W-1-k}), as :func:`.reference.causal_conv1d`.
A program owns a (BLOCK_T, BLOCK_E) tile of one batch element and computes it for every direction, so the tile of
x and its halo come from memory once for both.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_common import autograd_op, call, cdiv, check, grads_like, needs_grad, unit_last_stride
from .triton_math import sigmoid


@triton.jit
def _pre_activation(x_row, w_row, bias, t, sign, mask_e, L, sx_t, W: tl.constexpr, BLOCK_T: tl.constexpr,
                    BLOCK_E: tl.constexpr):
    """bias + sum_k w[k] * x[t - sign * (W-1-k)] on a tile of times t (zero padding outside [0, L))."""
    acc = tl.zeros((BLOCK_T, BLOCK_E), tl.float32) + bias[None, :]
    for k in tl.static_range(W):
        src = t - sign * (W - 1 - k)
        xk = tl.load(x_row + src[:, None] * sx_t, mask=((src >= 0) & (src < L))[:, None] & mask_e[None, :],
                     other=0.).to(tl.float32)
        acc += tl.load(w_row + k, mask=mask_e, other=0.).to(tl.float32)[None, :] * xk
    return acc


@triton.jit
def _tile(E, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):
    """This program's tile (grid (cdiv(L, BLOCK_T), cdiv(E, BLOCK_E), batch)): batch element, times, channels
    and their mask."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    return tl.program_id(2).to(tl.int64), t, offs_e, offs_e < E


@triton.jit
def _tap_sign(d, REVERSE: tl.constexpr):
    """Direction d's tap direction: +1 when its taps reach back in time, -1 when they reach forward."""
    return 1 - 2 * ((d + REVERSE) % 2)


@triton.jit
def _bias(d, bias_ptr, offs_e, mask_e, E, HAS_BIAS: tl.constexpr, BLOCK_E: tl.constexpr):
    """Direction d's bias at this tile's channels, fp32 (zeros if none)."""
    bias = tl.zeros((BLOCK_E,), tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d * E + offs_e, mask=mask_e, other=0.).to(tl.float32)
    return bias


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, batch, L, E, sx_b, sx_t,
                     NDIR: tl.constexpr, REVERSE: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                     W: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):
    # Grid: (cdiv(L, BLOCK_T), cdiv(E, BLOCK_E), batch): one (time, channel) tile of one batch element.
    pid_b, t, offs_e, mask_e = _tile(E, BLOCK_T, BLOCK_E)
    x_row = x_ptr + pid_b * sx_b + offs_e[None, :]
    mask = (t < L)[:, None] & mask_e[None, :]
    for d in tl.static_range(NDIR):
        sign, bias = _tap_sign(d, REVERSE), _bias(d, bias_ptr, offs_e, mask_e, E, HAS_BIAS, BLOCK_E)
        out = _pre_activation(x_row, w_ptr + (d * E + offs_e) * W, bias, t, sign, mask_e, L, sx_t, W, BLOCK_T,
                              BLOCK_E)
        if SILU:
            out *= sigmoid(out)
        tl.store(out_ptr + ((d * batch + pid_b) * L + t[:, None]) * E + offs_e[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _conv_bwd_gate_kernel(x_ptr, w_ptr, bias_ptr, dout_ptr, g_ptr, dw_ptr, dbias_ptr, batch, L, E, sx_b, sx_t,
                          sdo_d, sdo_b, sdo_t,
                          NDIR: tl.constexpr, REVERSE: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                          W: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):
    # Backward, step 1 (grid as the forward): g = dL/d(pre-activation) of this tile's own outputs, each
    # recomputed once (for SiLU's derivative), written to g (ndir, batch, L, E) for step 2; dw and dbias summed
    # over the tile into its own slot of fp32 buffers (tiles, ndir, E, W) and (tiles, ndir, E), which the caller
    # sums: atomics from every tile onto the same few addresses would serialise.
    pid_b, t, offs_e, mask_e = _tile(E, BLOCK_T, BLOCK_E)
    x_row = x_ptr + pid_b * sx_b + offs_e[None, :]
    tile = pid_b * tl.num_programs(0) + tl.program_id(0)    # this tile's slot in the dw, dbias buffers
    mask = (t < L)[:, None] & mask_e[None, :]
    for d in tl.static_range(NDIR):
        sign, bias = _tap_sign(d, REVERSE), _bias(d, bias_ptr, offs_e, mask_e, E, HAS_BIAS, BLOCK_E)
        g = tl.load(dout_ptr + d * sdo_d + pid_b * sdo_b + t[:, None] * sdo_t + offs_e[None, :], mask=mask,
                    other=0.).to(tl.float32)
        if SILU:
            pre = _pre_activation(x_row, w_ptr + (d * E + offs_e) * W, bias, t, sign, mask_e, L, sx_t, W, BLOCK_T,
                                  BLOCK_E)
            sig = sigmoid(pre)
            g *= sig * (1. + pre * (1. - sig))
        tl.store(g_ptr + ((d * batch + pid_b) * L + t[:, None]) * E + offs_e[None, :],
                 g.to(g_ptr.dtype.element_ty), mask=mask)
        if HAS_BIAS:
            tl.store(dbias_ptr + (tile * NDIR + d) * E + offs_e, tl.sum(g, 0), mask=mask_e)
        for k in tl.static_range(W):
            src = t - sign * (W - 1 - k)
            xk = tl.load(x_row + src[:, None] * sx_t, mask=((src >= 0) & (src < L))[:, None] & mask_e[None, :],
                         other=0.).to(tl.float32)
            tl.store(dw_ptr + ((tile * NDIR + d) * E + offs_e) * W + k, tl.sum(g * xk, 0), mask=mask_e)


@triton.jit
def _conv_bwd_dx_kernel(w_ptr, g_ptr, dx_ptr, batch, L, E,
                        NDIR: tl.constexpr, REVERSE: tl.constexpr, W: tl.constexpr, BLOCK_T: tl.constexpr,
                        BLOCK_E: tl.constexpr):
    # Backward, step 2 (grid as the forward): x_t feeds output s = t + sign * (W-1-j) through tap j, so
    # dx_t = sum over directions and taps of w_j g_s, with g from step 1 (zero outside [0, L)).
    pid_b, t, offs_e, mask_e = _tile(E, BLOCK_T, BLOCK_E)
    dx = tl.zeros((BLOCK_T, BLOCK_E), tl.float32)
    for d in tl.static_range(NDIR):
        sign = _tap_sign(d, REVERSE)
        for j in tl.static_range(W):
            s = t + sign * (W - 1 - j)
            g = tl.load(g_ptr + ((d * batch + pid_b) * L + s[:, None]) * E + offs_e[None, :],
                        mask=((s >= 0) & (s < L))[:, None] & mask_e[None, :], other=0.).to(tl.float32)
            dx += tl.load(w_ptr + (d * E + offs_e) * W + j, mask=mask_e, other=0.).to(tl.float32)[None, :] * g
    tl.store(dx_ptr + (pid_b * L + t[:, None]) * E + offs_e[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=(t < L)[:, None] & mask_e[None, :])


# Tiles of 32 steps x 64 channels, 2 warps (32 values per thread): the best of bench/conv_sweep.py
# (H100, bidirectional, bf16): forward at 79-88% of the byte floor at Vim-Tiny's shapes against 42-48% with the
# 4 warps, forward+backward 1.6-1.7x faster.
CONV_CONFIG = dict(BLOCK_T=32, BLOCK_E=64, num_warps=2)


def _conv_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool, reverse: bool) -> Tensor:
    """x (batch, L, E), weight (ndir, E, W), bias (ndir, E) or None -> (ndir, batch, L, E)."""
    x = unit_last_stride(x)
    weight = weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    batch, L, E = x.shape
    ndir, _, W = weight.shape
    cfg = CONV_CONFIG
    out = torch.empty((ndir, batch, L, E), dtype=x.dtype, device=x.device)
    grid = (cdiv(L, cfg['BLOCK_T']), cdiv(E, cfg['BLOCK_E']), batch)
    _conv_fwd_kernel[grid](x, weight, x if bias is None else bias, out, batch, L, E, *x.stride()[:2],
                           NDIR=ndir, REVERSE=reverse, HAS_BIAS=bias is not None, SILU=silu, W=W,
                           BLOCK_T=cfg['BLOCK_T'], BLOCK_E=cfg['BLOCK_E'], num_warps=cfg['num_warps'])
    return out


def _conv_backward(dout: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool,
                   reverse: bool) -> Tuple[Tensor, Tensor, Tensor]:
    x, dout = unit_last_stride(x), unit_last_stride(dout)
    weight = weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    batch, L, E = x.shape
    ndir, _, W = weight.shape
    cfg = CONV_CONFIG
    dx, = grads_like(x, x)
    g = torch.empty((ndir, batch, L, E), dtype=dout.dtype, device=x.device)   # dL/d(pre-activation)
    grid = (cdiv(L, cfg['BLOCK_T']), cdiv(E, cfg['BLOCK_E']), batch)
    dw = torch.empty((grid[0] * batch, *weight.shape), dtype=torch.float32, device=x.device)
    dbias = torch.empty((grid[0] * batch, ndir, E), dtype=torch.float32, device=x.device)
    blocks = dict(W=W, BLOCK_T=cfg['BLOCK_T'], BLOCK_E=cfg['BLOCK_E'], num_warps=cfg['num_warps'])
    _conv_bwd_gate_kernel[grid](x, weight, x if bias is None else bias, dout, g, dw, dbias, batch, L, E,
                                *x.stride()[:2], *dout.stride()[:3], NDIR=ndir, REVERSE=reverse,
                                HAS_BIAS=bias is not None, SILU=silu, **blocks)
    _conv_bwd_dx_kernel[grid](weight, g, dx, batch, L, E, NDIR=ndir, REVERSE=reverse, **blocks)
    return dx, dw.sum(0).to(weight.dtype), x.new_empty(0) if bias is None else dbias.sum(0).to(bias.dtype)


# Forward and backward as PyTorch custom ops (opaque to torch.compile and torch.export).
conv1d_op = torch.library.custom_op('vim::conv1d', _conv_forward, mutates_args=())
conv1d_op.register_fake(lambda x, weight, bias, silu, reverse: x.new_empty((weight.shape[0], *x.shape)))
conv1d_backward_op = torch.library.custom_op('vim::conv1d_backward', _conv_backward, mutates_args=())
conv1d_backward_op.register_fake(lambda dout, x, weight, bias, silu, reverse: grads_like(x, x, weight, bias))


def _setup_conv(ctx, inputs, output):
    x, weight, bias, silu, reverse = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.flags = silu, reverse


def _conv_vjp(ctx, dout):
    x, weight, bias = ctx.saved_tensors
    dx, dw, dbias = call(conv1d_backward_op, _conv_backward, dout, x, weight, bias, *ctx.flags)
    return dx, dw, None if bias is None else dbias, None, None


run_conv1d = autograd_op(conv1d_op, _conv_forward, _setup_conv, _conv_vjp)


def _conv(x, weight, bias, silu, reverse):
    return run_conv1d(needs_grad(x, weight, bias), x, weight, bias, silu, reverse)


def _check_x(op, x):
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f'{op}: x must be a (batch, L, channels) tensor, got '
                         f'{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}')
    check(op, 'x', x, x.shape, x.device)


def causal_conv1d(x, weight, bias=None, silu=False, reverse=False):
    _check_x('causal_conv1d', x)
    E = x.shape[2]
    width = weight.shape[-1] if isinstance(weight, torch.Tensor) and weight.dim() == 2 else 4
    check('causal_conv1d', 'weight', weight, (E, width), x.device)
    check('causal_conv1d', 'bias', bias, (E,), x.device, optional=True)
    return _conv(x, weight[None], None if bias is None else bias[None], bool(silu), bool(reverse))[0]


def bidirectional_conv1d(x, weight, bias):
    _check_x('bidirectional_conv1d', x)
    E = x.shape[2]
    width = weight.shape[-1] if isinstance(weight, torch.Tensor) and weight.dim() == 3 else 4
    check('bidirectional_conv1d', 'weight', weight, (2, E, width), x.device)
    check('bidirectional_conv1d', 'bias', bias, (2, E), x.device)
    return _conv(x, weight, bias, True, False)
