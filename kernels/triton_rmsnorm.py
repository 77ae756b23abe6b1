"""Triton residual-add + RMSNorm, forward and backward.

s = x + residual (or x), out = s * rstd * weight with rstd = 1 / sqrt(mean(s^2) + eps), computed in fp32;
the new residual s is returned in fp32 (residual_in_fp32) or x's dtype. Rows are the flattened leading axes.
The backward recomputes s and rstd from x and residual instead of saving them.
"""
import torch
import triton
import triton.language as tl

from .triton_common import cdiv, check, next_power_of_2, unit_last_stride


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


class AddRMSNormFn(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, residual, weight, eps, residual_in_fp32):
        shape, D = x.shape, x.shape[-1]
        x2, r2 = _rows(x), None if residual is None else _rows(residual)
        M = x2.shape[0]
        out = torch.empty((M, D), dtype=x.dtype, device=x.device)
        res_out = torch.empty((M, D), dtype=torch.float32 if residual_in_fp32 else x.dtype, device=x.device)
        BLOCK_M = _block_m(D)
        _rmsnorm_fwd_kernel[(cdiv(M, BLOCK_M),)](
            x2, x2 if r2 is None else r2, weight, out, res_out, M, D, eps, x2.stride(0),
            0 if r2 is None else r2.stride(0), HAS_RES=r2 is not None, BLOCK_M=BLOCK_M,
            BLOCK_D=next_power_of_2(D))
        ctx.save_for_backward(x2, r2, weight)
        ctx.eps, ctx.shape, ctx.res_dtype = eps, shape, None if residual is None else residual.dtype
        return out.view(shape), res_out.view(shape)

    @staticmethod
    def backward(ctx, dout, dres_out):
        x2, r2, weight = ctx.saved_tensors
        M, D = x2.shape
        dout, dres_out = (g.reshape(M, D).contiguous() for g in (dout, dres_out))
        dx = torch.empty((M, D), dtype=x2.dtype, device=x2.device)
        dres = None if r2 is None else torch.empty((M, D), dtype=ctx.res_dtype, device=x2.device)
        BLOCK_M = _block_m(D)
        dw = torch.empty((cdiv(M, BLOCK_M), D), dtype=torch.float32, device=x2.device)
        _rmsnorm_bwd_kernel[(dw.shape[0],)](
            x2, x2 if r2 is None else r2, weight, dout, dres_out, dx, dx if dres is None else dres, dw, M, D,
            ctx.eps, x2.stride(0), 0 if r2 is None else r2.stride(0), HAS_RES=r2 is not None, BLOCK_M=BLOCK_M,
            BLOCK_D=next_power_of_2(D))
        return (dx.view(ctx.shape), None if dres is None else dres.view(ctx.shape), dw.sum(0).to(weight.dtype),
                None, None)


def add_rms_norm(x, residual, weight, eps=1e-5, residual_in_fp32=True):
    op = 'add_rms_norm'
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise ValueError(f'{op}: x must be a tensor with a channel axis')
    check(op, 'x', x, x.shape, x.device)
    check(op, 'residual', residual, x.shape, x.device, optional=True)
    check(op, 'weight', weight, x.shape[-1:], x.device)
    return AddRMSNormFn.apply(x, residual, weight, float(eps), bool(residual_in_fp32))
