"""Triton residual-add + RMSNorm, forward and backward.

s = x + residual (or x), out = s * rstd * weight with rstd = 1 / sqrt(mean(s^2) + eps), computed in fp32;
the new residual s is returned in fp32 (residual_in_fp32) or x's dtype. Rows are the flattened leading axes.
The backward recomputes s and rstd from x and residual instead of saving them.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_common import (autograd_op, call, cdiv, check, grads_like, needs_grad, next_power_of_2,
                            unit_last_stride)


@triton.jit
def _normalise_rows(x_ptr, res_ptr, w_ptr, M, D, eps, sx_m, sr_m, HAS_RES: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    """This program's rows (grid (cdiv(M, BLOCK_M),), BLOCK_D >= D): s = x + residual, rstd, weight, in fp32,
    and the offsets and mask of the rows in a contiguous (M, D) tensor."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < M)[:, None] & (cols < D)[None, :]
    s = tl.load(x_ptr + rows[:, None] * sx_m + cols[None, :], mask=mask, other=0.).to(tl.float32)
    if HAS_RES:
        s += tl.load(res_ptr + rows[:, None] * sr_m + cols[None, :], mask=mask, other=0.).to(tl.float32)
    rstd = 1. / tl.sqrt(tl.sum(s * s, 1) / D + eps)
    w = tl.load(w_ptr + cols, mask=cols < D, other=0.).to(tl.float32)
    return s, rstd, w, cols, rows[:, None] * D + cols[None, :], mask


@triton.jit
def _rmsnorm_fwd_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, M, D, eps, sx_m, sr_m,
                        HAS_RES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    # Grid: (cdiv(M, BLOCK_M),): BLOCK_M whole rows per program (BLOCK_D >= D).
    s, rstd, w, cols, offs, mask = _normalise_rows(x_ptr, res_ptr, w_ptr, M, D, eps, sx_m, sr_m, HAS_RES, BLOCK_M,
                                                   BLOCK_D)
    tl.store(out_ptr + offs, (s * rstd[:, None] * w[None, :]).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(res_out_ptr + offs, s.to(res_out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rmsnorm_bwd_kernel(x_ptr, res_ptr, w_ptr, dout_ptr, dres_out_ptr, dx_ptr, dres_ptr, dw_ptr, M, D, eps,
                        sx_m, sr_m, HAS_RES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    # Grid as the forward. ds = rstd * w * g - s * rstd^3 * mean(s * w * g) + (grad of the new residual);
    # dx = dresidual = ds; dw is summed over this program's rows into row program_id of a (programs, D) buffer
    # (summed by the caller: atomics from every program onto the same D addresses serialise).
    s, rstd, w, cols, offs, mask = _normalise_rows(x_ptr, res_ptr, w_ptr, M, D, eps, sx_m, sr_m, HAS_RES, BLOCK_M,
                                                   BLOCK_D)
    g = tl.load(dout_ptr + offs, mask=mask, other=0.).to(tl.float32)
    gw = g * w[None, :]
    ds = rstd[:, None] * gw - s * (rstd * rstd * rstd * tl.sum(gw * s, 1) / D)[:, None]
    ds += tl.load(dres_out_ptr + offs, mask=mask, other=0.).to(tl.float32)
    tl.store(dx_ptr + offs, ds.to(dx_ptr.dtype.element_ty), mask=mask)
    if HAS_RES:
        tl.store(dres_ptr + offs, ds.to(dres_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_ptr + tl.program_id(0) * D + cols, tl.sum(g * s * rstd[:, None], 0), mask=cols < D)


def _rows(t):
    """(M, D) view (or copy) of t with unit stride along D."""
    return unit_last_stride(t.reshape(-1, t.shape[-1]))


def _block_m(D):
    return max(1, min(16, 4096 // next_power_of_2(D)))


def _norm_outputs(x, residual_in_fp32):
    """out in x's dtype and the new residual, fp32 or x's dtype: contiguous, x's shape (real or fake alike)."""
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device),
            torch.empty(x.shape, dtype=torch.float32 if residual_in_fp32 else x.dtype, device=x.device))


def _norm_forward(x: Tensor, residual: Optional[Tensor], weight: Tensor, eps: float,
                  residual_in_fp32: bool) -> Tuple[Tensor, Tensor]:
    x2, r2 = _rows(x), None if residual is None else _rows(residual)
    M, D = x2.shape
    out, res_out = _norm_outputs(x, residual_in_fp32)
    BLOCK_M = _block_m(D)
    _rmsnorm_fwd_kernel[(cdiv(M, BLOCK_M),)](
        x2, x2 if r2 is None else r2, weight, out, res_out, M, D, eps, x2.stride(0),
        0 if r2 is None else r2.stride(0), HAS_RES=r2 is not None, BLOCK_M=BLOCK_M, BLOCK_D=next_power_of_2(D))
    return out, res_out


def _norm_backward(dout: Tensor, dres_out: Tensor, x: Tensor, residual: Optional[Tensor], weight: Tensor,
                   eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    """dx, dresidual (empty without a residual), dweight."""
    x2, r2 = _rows(x), None if residual is None else _rows(residual)
    M, D = x2.shape
    dout, dres_out = (g.reshape(M, D).contiguous() for g in (dout, dres_out))
    dx, dres = grads_like(x, x, residual)
    BLOCK_M = _block_m(D)
    dw = torch.empty((cdiv(M, BLOCK_M), D), dtype=torch.float32, device=x.device)
    _rmsnorm_bwd_kernel[(dw.shape[0],)](
        x2, x2 if r2 is None else r2, weight, dout, dres_out, dx, dx if r2 is None else dres, dw, M, D, eps,
        x2.stride(0), 0 if r2 is None else r2.stride(0), HAS_RES=r2 is not None, BLOCK_M=BLOCK_M,
        BLOCK_D=next_power_of_2(D))
    return dx, dres, dw.sum(0).to(weight.dtype)


# Forward and backward as PyTorch custom ops (opaque to torch.compile and torch.export).
add_rms_norm_op = torch.library.custom_op('vim::add_rms_norm', _norm_forward, mutates_args=())
add_rms_norm_op.register_fake(lambda x, residual, weight, eps, residual_in_fp32: _norm_outputs(x, residual_in_fp32))
add_rms_norm_backward_op = torch.library.custom_op('vim::add_rms_norm_backward', _norm_backward, mutates_args=())
add_rms_norm_backward_op.register_fake(
    lambda dout, dres_out, x, residual, weight, eps: grads_like(x, x, residual, weight))


def _setup_norm(ctx, inputs, output):
    x, residual, weight, eps, _ = inputs
    ctx.save_for_backward(x, residual, weight)
    ctx.eps = eps


def _norm_vjp(ctx, dout, dres_out):
    x, residual, weight = ctx.saved_tensors
    dx, dres, dw = call(add_rms_norm_backward_op, _norm_backward, dout, dres_out, x, residual, weight, ctx.eps)
    return dx, None if residual is None else dres, dw, None, None


run_add_rms_norm = autograd_op(add_rms_norm_op, _norm_forward, _setup_norm, _norm_vjp)


def add_rms_norm(x, residual, weight, eps=1e-5, residual_in_fp32=True):
    op = 'add_rms_norm'
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise ValueError(f'{op}: x must be a tensor with a channel axis')
    check(op, 'x', x, x.shape, x.device)
    check(op, 'residual', residual, x.shape, x.device, optional=True)
    check(op, 'weight', weight, x.shape[-1:], x.device)
    return run_add_rms_norm(needs_grad(x, residual, weight), x, residual, weight, float(eps), bool(residual_in_fp32))
