"""Prototype: forward scan over tiles of 4 loaded through tl.range(num_stages=STAGES) and split into rows
(the design kernels/triton_scan.py adopted; the row updates are its _tile_y). See scan_variants.py."""
import triton
import triton.language as tl

from vim.kernels.triton_scan import LOG2E, _tile_y


@triton.jit
def fwd_split(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, L, E, N, BLOCK_T: tl.constexpr,
              BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr, FAST_SP: tl.constexpr):
    pid_e = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    offs_n = tl.arange(0, BLOCK_N)
    steps = tl.arange(0, 4)
    mask_e = offs_e < E
    mask_n = offs_n < N
    mask_ne = mask_n[:, None] & mask_e[None, :]
    A2 = tl.load(A_ptr + offs_n[:, None] * E + offs_e[None, :], mask=mask_ne, other=0.) * LOG2E
    Dv = tl.load(D_ptr + offs_e, mask=mask_e, other=0.)
    bias = tl.load(bias_ptr + offs_e, mask=mask_e, other=0.)
    base = pid_b * L * E + offs_e[None, :]
    bc = pid_b * L * N + offs_n[None, :]
    h = tl.zeros((BLOCK_N, BLOCK_E), tl.float32)
    for t0 in tl.range(0, L, 4, num_stages=STAGES):
        t = t0 + steps
        m = mask_e[None, :] & (t < L)[:, None]
        mbc = mask_n[None, :] & (t < L)[:, None]
        xs = tl.load(x_ptr + base + t[:, None] * E, mask=m, other=0.).to(tl.float32)
        us = tl.load(dt_ptr + base + t[:, None] * E, mask=m, other=0.).to(tl.float32) + bias[None, :]
        zs = tl.load(z_ptr + base + t[:, None] * E, mask=m, other=0.).to(tl.float32)
        Bs = tl.load(B_ptr + bc + t[:, None] * N, mask=mbc, other=0.).to(tl.float32)
        Cs = tl.load(C_ptr + bc + t[:, None] * N, mask=mbc, other=0.).to(tl.float32)
        if FAST_SP:
            ds = tl.where(us > 20., us, 0.6931471805599453 * tl.log2(1. + tl.exp2(us * LOG2E)))
        else:
            ds = tl.where(us > 20., us, tl.log(1. + tl.exp(us)))
        h, ys = _tile_y(h, A2, ds, xs, Bs, Cs)
        ys = (ys + Dv[None, :] * xs) * zs * tl.sigmoid(zs)
        tl.store(out_ptr + base + t[:, None] * E, ys.to(out_ptr.dtype.element_ty), mask=m)
