"""Forward-scan prototypes measured in bench/kernel_notes.md (see scan_variants.py):

- fwd_rows: one step at a time with 1-D row loads (no tile pipeline);
- fwd_split: tiles of 4 loaded through tl.range(num_stages=STAGES) and split into rows, the design
  kernels/triton_scan.py adopted (the row updates are its _tile_y).
"""
import triton
import triton.language as tl

from vim.kernels.triton_scan import LOG2E, _step, _tile_y


@triton.jit
def _program(A_ptr, D_ptr, bias_ptr, E, N, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's batch element, channels and states (grid (cdiv(E, BLOCK_E), batch)); A (given
    transposed, (N, E)) times log2 e, D and dt_bias."""
    pid_b = tl.program_id(1).to(tl.int64)
    offs_e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    offs_n = tl.arange(0, BLOCK_N)
    mask_e = offs_e < E
    mask_n = offs_n < N
    A2 = tl.load(A_ptr + offs_n[:, None] * E + offs_e[None, :], mask=mask_n[:, None] & mask_e[None, :],
                 other=0.) * LOG2E
    Dv = tl.load(D_ptr + offs_e, mask=mask_e, other=0.)
    bias = tl.load(bias_ptr + offs_e, mask=mask_e, other=0.)
    return pid_b, offs_e, offs_n, mask_e, mask_n, A2, Dv, bias


@triton.jit
def fwd_rows(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, L, E, N,
             BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_b, offs_e, offs_n, mask_e, mask_n, A2, Dv, bias = _program(A_ptr, D_ptr, bias_ptr, E, N, BLOCK_E, BLOCK_N)
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


@triton.jit
def fwd_split(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, L, E, N,
              BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr, FAST_SP: tl.constexpr):
    pid_b, offs_e, offs_n, mask_e, mask_n, A2, Dv, bias = _program(A_ptr, D_ptr, bias_ptr, E, N, BLOCK_E, BLOCK_N)
    steps = tl.arange(0, 4)
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
