"""Prototype: forward scan one step at a time with 1-D row loads (no tile pipeline). See scan_variants.py."""
import triton
import triton.language as tl

from vim.kernels.triton_scan import LOG2E, _step


@triton.jit
def fwd_rows(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, L, E, N,
             BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_e = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    offs_n = tl.arange(0, BLOCK_N)
    mask_e = offs_e < E
    mask_n = offs_n < N
    mask_ne = mask_n[:, None] & mask_e[None, :]
    A2 = tl.load(A_ptr + offs_n[:, None] * E + offs_e[None, :], mask=mask_ne, other=0.) * LOG2E
    Dv = tl.load(D_ptr + offs_e, mask=mask_e, other=0.)
    bias = tl.load(bias_ptr + offs_e, mask=mask_e, other=0.)
    base = pid_b * L * E + offs_e
    bc = pid_b * L * N + offs_n
    h = tl.zeros((BLOCK_N, BLOCK_E), tl.float32)
    for t0 in range(0, L, BLOCK_T):
        for i in tl.static_range(BLOCK_T):
            t = t0 + i
            m = mask_e & (t < L)
            x = tl.load(x_ptr + base + t * E, mask=m, other=0.).to(tl.float32)
            u = tl.load(dt_ptr + base + t * E, mask=m, other=0.).to(tl.float32) + bias
            z = tl.load(z_ptr + base + t * E, mask=m, other=0.).to(tl.float32)
            Bt = tl.load(B_ptr + bc + t * N, mask=mask_n & (t < L), other=0.).to(tl.float32)
            Ct = tl.load(C_ptr + bc + t * N, mask=mask_n & (t < L), other=0.).to(tl.float32)
            delta = tl.where(u > 20., u, tl.log(1. + tl.exp(u)))
            h = _step(h, A2, delta, delta * x, Bt)[1]
            y = tl.sum(h * Ct[:, None], 0) + Dv * x
            y = y * z * tl.sigmoid(z)
            tl.store(out_ptr + base + t * E, y.to(out_ptr.dtype.element_ty), mask=m)
