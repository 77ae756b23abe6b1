"""Triton selective scan (Mamba S6), forward and backward, one or two directions per launch.

Layout (see :mod:`.reference`): x, dt (ndir, batch, L, E); B, C (ndir, batch, L, N); A (ndir, E, N);
D, dt_bias (ndir, E); z (batch, L, E); channels contiguous, other strides free. ndir is 1 for a plain scan
and 2 for the bidirectional scan of a Vim mixer, whose directions run one after the other in the same program
and whose outputs are summed, halved and gated in the kernel.

A program owns BLOCK_E channels of one batch element and all N states of each, h as (BLOCK_N, BLOCK_E) fp32
registers (the forward holds a channel's N states in one thread, see _states_in_thread; the backward spreads
them over 4 lanes, which keeps its sums of dB and dC over channels short), and walks the sequence in tiles of 4
steps. A tile's x, dt, z, B and C are loaded as 2-D tiles through a software pipeline
(``tl.range(num_stages=...)``: the loads of later tiles are in flight while this one computes), split into rows,
and the recurrence h_s = exp(delta_s A) h_{s-1} + delta_s x_s B_s runs row by row: one exponential and five
multiplies or adds per state update. ``s`` counts steps in scan order: time t = s forward,
L-1-s in reverse, so the reverse direction reads the sequence backwards instead of flipping it.

Segmented scan (long sequences, few batch elements x channel blocks: b8 L6085 gives 96 programs for 132 SMs):
the sequence is cut into segments of whole checkpoint chunks, one program per (channel block, batch element,
segment). Pass 1 runs each segment from a zero state and keeps its end state and the sum of its deltas (the
segment's decay is exp(A * sum delta)); pass 2 folds the earlier segments' summaries into the true entry state
and replays the segment. The backward does the same with dh, in reverse: its summaries (_dh_summary_kernel) run
in the forward's layout, since they sum nothing over channels. launch_config picks the segmented scan by shape.

Backward: the forward (when autograd needs it) stores the state every CKPT_TILES * 4 steps and, with z, the
output before the gate (dz needs it; recomputing it instead cost the backward ~13%). The backward
walks those chunks last to first: it recomputes the states entering each tile of the chunk from the chunk's
checkpoint (kept in a small per-program scratch buffer), then sweeps the tiles in reverse, recomputing each
tile's states and decays row by row and running dh_s = C_s dy_s + a_{s+1} dh_{s+1} back over the rows; a_{s+1}
is the decay of the row after (carried over from the tile after), so each state update costs one exponential
per pass. It never inverts the recurrence: the previous state is kept, not reconstructed. Its sums over
channels (dB, dC) and states (<dh, B>, d delta) are taken once per tile through shared memory (_sum_rows).

Layouts: Triton lays a loaded tile out by its memory order and the arithmetic inherits it, converting through
shared memory wherever two layouts meet. So every fp32 state buffer the backward reads (scratch, summaries)
is states-contiguous like A: one that was not cost a conversion per step.
"""
import functools
import math
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_common import cdiv, check, grads_like, needs_grad, next_power_of_2, traced, unit_last_stride
from .triton_conv1d import _pre_activation
from .triton_math import LOG2E, sigmoid, softplus, to_f32

BLOCK_T = 4                                                  # steps per tile: _rows splits a tile into 4 rows


@triton.jit
def _rows(tile):
    """The 4 rows of a (4, X) tile as (X,) tensors. Two splits of the transposed tile: each row comes out in the
    layout of the state's channel (or state) axis, through one shared-memory exchange instead of a masked sum
    (a cross-lane reduction) per row."""
    X: tl.constexpr = tile.shape[1]
    even, odd = tl.split(tl.reshape(tl.trans(tile), (X, 2, 2)))   # rows (0, 2) and (1, 3), as (X, 2)
    r0, r2 = tl.split(even)
    r1, r3 = tl.split(odd)
    return r0, r1, r2, r3


@triton.jit
def _stack(r0, r1, r2, r3):
    """The inverse of _rows: four (X,) rows -> a (4, X) tile."""
    X: tl.constexpr = r0.shape[0]
    return tl.trans(tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (X, 4)))


@triton.jit
def _delta(dt_row, t, mask, bias, L, sdt_t, wdt, R, SOFTPLUS: tl.constexpr, FUSED_DT: tl.constexpr):
    """delta = softplus(u), u = dt + bias, at time indices t (T,) of a (T, BLOCK_E) tile; zero where masked.
    Returns (d delta / du, delta); the forward drops the derivative. With FUSED_DT, dt_row points at the rows of
    dt_low (R values a step, the low-rank half of x_proj's output) and dt = dt_low @ wdt, wdt the dt_proj weight
    (BLOCK_R, BLOCK_E) zero-padded past R: a broadcast product summed over the short R axis, so the full-width
    dt never goes through memory."""
    if FUSED_DT:
        BLOCK_R: tl.constexpr = wdt.shape[0]
        offs_r = tl.arange(0, BLOCK_R)
        low = to_f32(tl.load(dt_row + t[:, None] * sdt_t + offs_r[None, :],
                             mask=((t >= 0) & (t < L))[:, None] & (offs_r < R)[None, :], other=0.))
        dt = tl.sum(low[:, :, None] * wdt[None, :, :], 1)
    else:
        dt = to_f32(tl.load(dt_row + t[:, None] * sdt_t, mask=mask, other=0.))
    u = dt + bias
    if SOFTPLUS:
        delta, ddelta_du = softplus(u)
    else:
        delta = u
        ddelta_du = tl.full(u.shape, 1., tl.float32)
    return ddelta_du, tl.where(mask, delta, 0.)


@triton.jit
def _in_place(v):
    """v, computed in its own layout: a sum over a joined zero, which Triton 3.6 does not recompute in another
    layout. 3.6 otherwise recomputes an elementwise result in the layout of each use, e.g. every lane widening
    all of B's and C's values after their rows are broadcast (in place: a fifth fewer instructions in the
    forward loop under 3.6), or softplus on every (state, channel) pair of the backward (a tenth fewer in
    pass 2). 3.8 keeps them in place either way. The cost: the results held in registers (B and
    C in place slowed the backward, which has none to spare)."""
    return tl.sum(tl.join(v, tl.zeros_like(v)), 2)


@triton.jit
def _load_x(x_row, t, mask, mask_e, L, flip, sx_t, conv_w_row, conv_b, W: tl.constexpr, FUSED_CONV: tl.constexpr):
    """x at time indices t (4,), fp32, zero where masked. With FUSED_CONV, x_row points at the raw input of the
    mixer's conv and x is conv + SiLU computed here from shifted loads of the raw rows (they hit cache): the
    direction that scans backward (flip) convolves the reversed sequence, its taps reaching forward in time, as in
    the conv kernels (conv_w_row: this direction's taps, conv_b its bias)."""
    if FUSED_CONV:
        T: tl.constexpr = t.shape[0]
        BLOCK_E: tl.constexpr = conv_b.shape[0]
        pre = _pre_activation(x_row, conv_w_row, conv_b, t, 1 - 2 * flip, mask_e, L, sx_t, W, T, BLOCK_E)
        x = tl.where(mask, pre * sigmoid(pre), 0.)
    else:
        x = to_f32(tl.load(x_row + t[:, None] * sx_t, mask=mask, other=0.))
    return x


@triton.jit
def _fused_params(d, offs_e, mask_e, E, R, conv_w_ptr, conv_b_ptr, wdt_ptr, W: tl.constexpr,
                  FUSED_CONV: tl.constexpr, FUSED_DT: tl.constexpr, BLOCK_R: tl.constexpr):
    """Direction d's weights for the fused inputs (see _load_x, _delta): the pointers to its conv taps
    (conv weight (ndir, E, W)), its conv bias (BLOCK_E,) and the dt_proj weight (ndir, R, E) as a zero-padded
    (BLOCK_R, BLOCK_E) tile, fp32; zeros where a switch is off."""
    conv_b = tl.zeros(offs_e.shape, tl.float32)
    if FUSED_CONV:
        conv_b = tl.load(conv_b_ptr + d * E + offs_e, mask=mask_e, other=0.).to(tl.float32)
    offs_r = tl.arange(0, BLOCK_R)
    wdt = tl.zeros((BLOCK_R, offs_e.shape[0]), tl.float32)
    if FUSED_DT:
        wdt = tl.load(wdt_ptr + (d * R + offs_r[:, None]) * E + offs_e[None, :],
                      mask=(offs_r < R)[:, None] & mask_e[None, :], other=0.).to(tl.float32)
    return conv_w_ptr + (d * E + offs_e) * W, conv_b, wdt


@triton.jit
def _tile(x_row, dt_row, B_row, C_row, bias, steps, s0, L, s_end, flip, mask_e, offs_n, mask_n,
          sx_t, sdt_t, sB_t, sC_t, conv_w_row, conv_b, wdt, R, SOFTPLUS: tl.constexpr, WIDEN_BC: tl.constexpr,
          DELTA_IN_PLACE: tl.constexpr, W: tl.constexpr, FUSED_CONV: tl.constexpr, FUSED_DT: tl.constexpr):
    """Load the tile of scan steps s0 .. s0+3 (those below s_end <= L; zeros past it): time indices t (4,),
    the mask (4, BLOCK_E), x, d delta / d dt and delta (4, BLOCK_E), B and C (4, BLOCK_N), all fp32 (B and C
    widened in place if WIDEN_BC, delta computed in place if DELTA_IN_PLACE: see _in_place). FUSED_CONV,
    FUSED_DT: x and dt computed from the mixer's raw conv input and dt_low (_load_x, _delta)."""
    s = s0 + steps
    t = flip * (L - 1) + (1 - 2 * flip) * s                  # time index of each step
    mask_s = s < s_end
    mask = mask_s[:, None] & mask_e[None, :]
    x = _load_x(x_row, t, mask, mask_e, L, flip, sx_t, conv_w_row, conv_b, W, FUSED_CONV)
    ddelta_du, delta = _delta(dt_row, t, mask, bias[None, :], L, sdt_t, wdt, R, SOFTPLUS, FUSED_DT)
    mask_bc = mask_s[:, None] & mask_n[None, :]
    Bt = to_f32(tl.load(B_row + t[:, None] * sB_t + offs_n[None, :], mask=mask_bc, other=0.))
    Ct = to_f32(tl.load(C_row + t[:, None] * sC_t + offs_n[None, :], mask=mask_bc, other=0.))
    if WIDEN_BC:
        Bt, Ct = _in_place(Bt), _in_place(Ct)
    if DELTA_IN_PLACE:
        delta = _in_place(delta)
    return t, mask, x, ddelta_du, delta, Bt, Ct


@triton.jit
def _decay(A2, delta):
    """a = exp(delta A) of one step for every (state, channel), A2 = A log2 e."""
    return tl.exp2(delta[None, :] * A2)


@triton.jit
def _step(h, A2, delta, dx, Bs):
    """One state update: decay a = exp(delta A) and h <- a h + delta x B. Returns (a, h)."""
    a = _decay(A2, delta)
    return a, a * h + dx[None, :] * Bs[:, None]


@triton.jit
def _tile_y(h, A2, delta, x, Bt, Ct):
    """Four state updates from h: the state after the tile and y_s = <C_s, h_s> (no D skip) as (4, BLOCK_E).
    Callers that need only the state drop y, and the compiler drops its arithmetic."""
    d0, d1, d2, d3 = _rows(delta)
    x0, x1, x2, x3 = _rows(delta * x)
    b0, b1, b2, b3 = _rows(Bt)
    c0, c1, c2, c3 = _rows(Ct)
    h = _step(h, A2, d0, x0, b0)[1]
    y0 = tl.sum(h * c0[:, None], 0)
    h = _step(h, A2, d1, x1, b1)[1]
    y1 = tl.sum(h * c1[:, None], 0)
    h = _step(h, A2, d2, x2, b2)[1]
    y2 = tl.sum(h * c2[:, None], 0)
    h = _step(h, A2, d3, x3, b3)[1]
    y3 = tl.sum(h * c3[:, None], 0)
    return h, _stack(y0, y1, y2, y3)


@triton.jit
def _channel_block(E, N, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's batch element and channel block (grid (cdiv(E, BLOCK_E), batch)), with masks."""
    pid_e = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_e = offs_e < E
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    return pid_e, pid_b, offs_e, mask_e, offs_n, mask_n, mask_n[:, None] & mask_e[None, :]


@triton.jit
def _join_states(ptrs, mask_e, stride_n, n0, N, STEP: tl.constexpr, COUNT: tl.constexpr):
    """fp32 values at ptrs[e] + n * stride_n for n = n0, n0 + STEP, .. (COUNT of them, zero from N on) as a
    (BLOCK_E, 2, .., 2) tensor: n's lowest bit indexes the last axis. tl.join puts the axis it adds in the
    thread, so every n of a channel lands in one thread."""
    if COUNT == 1:
        return tl.load(ptrs + n0 * stride_n, mask=mask_e & (n0 < N), other=0.).to(tl.float32)
    else:
        return tl.join(_join_states(ptrs, mask_e, stride_n, n0, N, 2 * STEP, COUNT // 2),
                       _join_states(ptrs, mask_e, stride_n, n0 + STEP, N, 2 * STEP, COUNT // 2))


@triton.jit
def _states_in_thread(ptrs, mask_e, stride_n, N, BLOCK_N: tl.constexpr):
    """The (BLOCK_N, BLOCK_E) fp32 tile at ptrs[e] + n * stride_n, laid out with all BLOCK_N states of a channel in
    one thread. Triton lays a loaded tile out by its memory order (here 4 states per thread, 4 lanes per
    channel); the arithmetic on this tile inherits its layout instead, so y = <C, h> needs no shuffles and the
    per-channel work runs once per channel, not on 4 lanes."""
    BLOCK_E: tl.constexpr = ptrs.shape[0]
    return tl.trans(tl.reshape(_join_states(ptrs, mask_e, stride_n, 0, N, 1, BLOCK_N), (BLOCK_E, BLOCK_N)))


@triton.jit
def _direction(d, pid_b, offs_e, mask_e, offs_n, mask_ne, E, N, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr,
               bias_ptr, sx_d, sx_b, sdt_d, sdt_b, sB_d, sB_b, sC_d, sC_b,
               HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
               STATES_IN_THREAD: tl.constexpr, FUSED_DT: tl.constexpr):
    """Direction d's parameters, A as (BLOCK_N, BLOCK_E), D and dt_bias (zeros when absent), fp32, and the
    pointers to its rows of x, dt (at this program's channels; dt_low's whole rows with FUSED_DT), B and C. A's
    layout sets the state's: all N states in one thread (STATES_IN_THREAD) or as loaded."""
    if STATES_IN_THREAD:
        A = _states_in_thread(A_ptr + d * E * N + offs_e * N, mask_e, 1, N, BLOCK_N)
    else:
        A = tl.load(A_ptr + d * E * N + offs_e[None, :] * N + offs_n[:, None], mask=mask_ne, other=0.).to(tl.float32)
    Dv = tl.zeros((BLOCK_E,), tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d * E + offs_e, mask=mask_e, other=0.).to(tl.float32)
    bias = tl.zeros((BLOCK_E,), tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d * E + offs_e, mask=mask_e, other=0.).to(tl.float32)
    dt_row = dt_ptr + d * sdt_d + pid_b * sdt_b
    if not FUSED_DT:
        dt_row += offs_e[None, :]
    return (A, Dv, bias, x_ptr + d * sx_d + pid_b * sx_b + offs_e[None, :], dt_row, B_ptr + d * sB_d + pid_b * sB_b,
            C_ptr + d * sC_d + pid_b * sC_b)


@triton.jit
def _scan_fwd_kernel(
        x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, ckpt_ptr, y_ptr, segsum_ptr, segh_ptr,
        batch, L, E, N, n_ckpt, seg_len, n_seg,
        sx_d, sx_b, sx_t, sdt_d, sdt_b, sdt_t, sB_d, sB_b, sB_t, sC_d, sC_b, sC_t, sz_b, sz_t,
        conv_w_ptr, conv_b_ptr, wdt_ptr, R,
        NDIR: tl.constexpr, D_FIRST: tl.constexpr, D_LAST: tl.constexpr, MODE: tl.constexpr,
        REVERSE: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, SAVE: tl.constexpr, WIDEN_BC: tl.constexpr,
        BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, CKPT_TILES: tl.constexpr, STAGES: tl.constexpr,
        W: tl.constexpr, FUSED_CONV: tl.constexpr, FUSED_DT: tl.constexpr, BLOCK_R: tl.constexpr,
):
    # Grid: (cdiv(E, BLOCK_E), batch, segments). Program (i, b, j) owns channels [i*BLOCK_E, (i+1)*BLOCK_E) of
    # batch element b for scan steps [j*seg_len, (j+1)*seg_len) of directions D_FIRST .. D_LAST-1; the state
    # lives in registers.
    # MODE 0: one segment (seg_len >= L), all directions in one program: the plain scan.
    # MODE 1 (segmented, pass 1): from a zero state, the segment's end state -> segh (ndir, batch, n_seg, N, E)
    #   and the sum of its deltas -> segsum (ndir, batch, n_seg, E); the segment's decay product is
    #   exp(A * sum delta), so it costs no extra exponential per step. No output.
    # MODE 2 (segmented, pass 2): combines the summaries of the segments before this one (j steps on an
    #   (N, BLOCK_E) state) into the true entry state, then replays the segment and writes y (and checkpoints).
    #   Programs of one direction write y at different segments than those of the other, so the bidirectional
    #   scan launches pass 2 once per direction (D_FIRST, D_LAST) and the second launch adds the first's y.
    pid_e, pid_b, offs_e, mask_e, offs_n, mask_n, mask_ne = _channel_block(E, N, BLOCK_E, BLOCK_N)
    pid_s = tl.program_id(2)
    s_begin = pid_s * seg_len                                # a multiple of CKPT_TILES * 4
    s_end = tl.minimum(s_begin + seg_len, L)
    steps = tl.arange(0, 4)
    row = pid_b * L * E + offs_e[None, :]                   # out, y: contiguous (batch, L, E)
    for d in tl.static_range(D_FIRST, D_LAST):
        flip = (d + REVERSE) % 2                             # 1: this direction scans from t = L-1 down
        A, Dv, bias, x_row, dt_row, B_row, C_row = _direction(
            d, pid_b, offs_e, mask_e, offs_n, mask_ne, E, N, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr,
            sx_d, sx_b, sdt_d, sdt_b, sB_d, sB_b, sC_d, sC_b, HAS_D, HAS_BIAS, BLOCK_E, BLOCK_N, True, FUSED_DT)
        conv_w_row, conv_b, wdt = _fused_params(d, offs_e, mask_e, E, R, conv_w_ptr, conv_b_ptr, wdt_ptr, W,
                                                FUSED_CONV, FUSED_DT, BLOCK_R)
        A2 = A * LOG2E
        seg_row = (d * batch + pid_b) * n_seg
        h = tl.zeros((BLOCK_N, BLOCK_E), tl.float32)
        if MODE == 2:                                        # entry state from the earlier segments' summaries
            for i in range(pid_s):
                dsum = tl.load(segsum_ptr + (seg_row + i) * E + offs_e, mask=mask_e, other=0.)
                h_i = _states_in_thread(segh_ptr + (seg_row + i) * N * E + offs_e, mask_e, E, N, BLOCK_N)
                h = tl.exp2(A2 * dsum[None, :]) * h + h_i
        dsum = tl.zeros((4, BLOCK_E), tl.float32)            # MODE 1: per row; summed once at the end
        for tile in tl.range(tl.cdiv(s_end - s_begin, 4), num_stages=STAGES):
            s0 = s_begin + tile * 4
            t, mask, x, _, delta, Bt, Ct = _tile(x_row, dt_row, B_row, C_row, bias, steps, s0, L, s_end, flip,
                                                 mask_e, offs_n, mask_n, sx_t, sdt_t, sB_t, sC_t, conv_w_row,
                                                 conv_b, wdt, R, SOFTPLUS, WIDEN_BC, MODE == 1, W, FUSED_CONV,
                                                 FUSED_DT)
            h, y = _tile_y(h, A2, delta, x, Bt, Ct)
            if MODE == 1:
                dsum += delta
            else:
                y += Dv[None, :] * x
                out_ptrs = out_ptr + row + t[:, None] * E
                if d == 1:                                   # second direction: add the first, halve
                    y = (y + to_f32(tl.load(out_ptrs, mask=mask, other=0.))) * 0.5
                if HAS_Z and d == NDIR - 1:
                    if SAVE:                                 # y before the gate, for the backward's dz
                        tl.store(y_ptr + row + t[:, None] * E, y.to(y_ptr.dtype.element_ty), mask=mask)
                    zt = to_f32(tl.load(z_ptr + pid_b * sz_b + t[:, None] * sz_t + offs_e[None, :], mask=mask,
                                        other=0.))
                    y *= zt * sigmoid(zt)
                tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=mask)
                if SAVE:                                     # state entering chunk k = (tile+1) / CKPT_TILES
                    k = (s0 // 4 + 1) // CKPT_TILES
                    if ((s0 // 4 + 1) % CKPT_TILES == 0) & (k <= n_ckpt):
                        ckpt = ckpt_ptr + (((d * batch + pid_b) * n_ckpt + k - 1) * N + offs_n[:, None]) * E
                        tl.store(ckpt + offs_e[None, :], h, mask=mask_ne)
        if MODE == 1:
            tl.store(segsum_ptr + (seg_row + pid_s) * E + offs_e, tl.sum(dsum, 0), mask=mask_e)
            tl.store(segh_ptr + ((seg_row + pid_s) * N + offs_n[:, None]) * E + offs_e[None, :], h, mask=mask_ne)
        tl.debug_barrier()                                   # the next direction reads this one's output


@triton.jit
def _sum_last(t):
    """(P, Q, X) -> (P, Q): the sum over the last axis by a tree of tl.splits. A split takes its halves from one
    thread, so Triton moves the tile through shared memory once, to a layout that holds each output's X values in
    one thread, and the adds need no shuffles."""
    P: tl.constexpr = t.shape[0]
    Q: tl.constexpr = t.shape[1]
    X: tl.constexpr = t.shape[2]
    if X == 1:
        return tl.reshape(t, (P, Q))
    else:
        a, b = tl.split(tl.reshape(t, (P, Q, X // 2, 2)))
        return _sum_last(a + b)


@triton.jit
def _fold(p, AXIS: tl.constexpr):
    """Partial sums of the (N, E) tile p over the values of AXIS that one thread holds in the backward's layout
    (4 states; 2 channels, c and c + E/2): (N/4, E) or (N, E/2). Plain adds, no data movement."""
    N: tl.constexpr = p.shape[0]
    E: tl.constexpr = p.shape[1]
    if AXIS == 0:
        return tl.sum(tl.reshape(p, (N // min(4, N), min(4, N), E)), 1)
    else:
        return tl.sum(tl.reshape(p, (N, min(2, E), E // min(2, E))), 1)


@triton.jit
def _sum_rows(p0, p1, p2, p3, AXIS: tl.constexpr):
    """(4, X): row r is the (N, E) tile p_r summed over its states (AXIS 0, X = E) or its channels (AXIS 1, X = N).
    tl.sum of each row would sum across lanes: a shuffle and an add per value held and lane level, every sum
    landing on every lane. Here each lane folds its own values, the four rows are stacked, and one exchange
    through shared memory gives each lane whole outputs to add (a fifth fewer instructions in the pass-2 loop,
    and no shuffles)."""
    q0, q1, q2, q3 = _fold(p0, AXIS), _fold(p1, AXIS), _fold(p2, AXIS), _fold(p3, AXIS)
    P: tl.constexpr = q0.shape[0]
    Q: tl.constexpr = q0.shape[1]
    t = tl.reshape(tl.join(tl.join(q0, q2), tl.join(q1, q3)), (P, Q, 4))    # t[.., .., r] = q_r, as in _stack
    if AXIS == 0:
        return _sum_last(tl.permute(t, (2, 1, 0)))
    else:
        return _sum_last(tl.permute(t, (2, 0, 1)))


@triton.jit
def _dh_back(dh_after, a_after, Cs, dy):
    """dL/dh_s = a_{s+1} dL/dh_{s+1} + C_s dy_s: one step of the reverse recurrence."""
    return a_after * dh_after + Cs[:, None] * dy[None, :]


@triton.jit
def _dy(dout_ptr, z_ptr, pid_b, t, offs_e, mask, sdo_b, sdo_t, sz_b, sz_t, NDIR: tl.constexpr,
        HAS_Z: tl.constexpr):
    """dL/dy of the tile at time indices t (4,), y the scan's output before the gate and the direction sum:
    (dout, z, sigmoid(z), dy), all (4, BLOCK_E) fp32 (z and sigmoid(z) zeros without a gate)."""
    do = to_f32(tl.load(dout_ptr + pid_b * sdo_b + t[:, None] * sdo_t + offs_e[None, :], mask=mask, other=0.))
    zt = tl.zeros_like(do)
    sig = zt
    if HAS_Z:
        zt = to_f32(tl.load(z_ptr + pid_b * sz_b + t[:, None] * sz_t + offs_e[None, :], mask=mask, other=0.))
        sig = sigmoid(zt)
        dy = do * zt * sig / NDIR
    else:
        dy = do / NDIR
    return do, zt, sig, dy


@triton.jit
def _dh_summary_kernel(
        dt_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, dout_ptr, segsum_ptr, segdh_ptr,
        batch, L, E, N, seg_len, n_seg, sdt_d, sdt_b, sdt_t, sC_d, sC_b, sC_t, sz_b, sz_t, sdo_b, sdo_t, wdt_ptr, R,
        NDIR: tl.constexpr, REVERSE: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
        SOFTPLUS: tl.constexpr, WIDEN_BC: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
        STAGES: tl.constexpr, FUSED_DT: tl.constexpr, BLOCK_R: tl.constexpr,
):
    # The segmented backward's first pass. Grid (cdiv(E, BLOCK_E), batch, segments), segments as the backward's
    # replay (_scan_bwd_kernel with SEGMENTED). Program (i, b, j), for each direction: from dh = 0 after segment
    # j = [s0, s1), the reverse recurrence dh_s = a_{s+1} dh_{s+1} + C_s dy_s alone (no states, one exponential
    # per update) down to dh_{s0} -> segdh (ndir, batch, n_seg, E, N), and the sum of delta over steps
    # s0+1 .. s1 -> segsum (ndir, batch, n_seg, E): the decay from dh_{s1} to dh_{s0} is exp(A * that sum).
    # The forward's layout (a channel's N states in one thread): this pass sums nothing over channels, so the
    # backward's layout (4 lanes per channel, for the sums of dB and dC) would only repeat per-channel work.
    pid_e, pid_b, offs_e, mask_e, offs_n, mask_n, mask_ne = _channel_block(E, N, BLOCK_E, BLOCK_N)
    pid_s = tl.program_id(2)
    s_begin = pid_s * seg_len
    s_end = tl.minimum(s_begin + seg_len, L)
    steps = tl.arange(0, 4)
    n_tiles = tl.cdiv(s_end - s_begin, 4)
    for d in tl.static_range(NDIR):
        flip = (d + REVERSE) % 2
        # x and B are not read here: x's row is A's first (stride 0, in bounds), B's aliases C's, and the compiler
        # drops their loads
        A, _D, bias, _x_row, dt_row, _B_row, C_row = _direction(
            d, pid_b, offs_e, mask_e, offs_n, mask_ne, E, N, dt_ptr, dt_ptr, A_ptr, C_ptr, C_ptr, A_ptr, bias_ptr,
            sdt_d, sdt_b, sdt_d, sdt_b, sC_d, sC_b, sC_d, sC_b, False, HAS_BIAS, BLOCK_E, BLOCK_N, True, FUSED_DT)
        x_stub = A_ptr + offs_e[None, :]
        _w, _b, wdt = _fused_params(d, offs_e, mask_e, E, R, A_ptr, A_ptr, wdt_ptr, 1, False, FUSED_DT, BLOCK_R)
        A2 = A * LOG2E
        seg_row = (d * batch + pid_b) * n_seg
        t_end = flip * (L - 1) + (1 - 2 * flip) * (s_end + tl.zeros((1,), tl.int32))
        delta_end = _delta(dt_row, t_end, mask_e[None, :] & (s_end < L), bias[None, :], L, sdt_t, wdt, R, SOFTPLUS,
                           FUSED_DT)[1]
        dsum = tl.where(steps[:, None] == 0, delta_end, 0.)    # per row; summed once at the end
        dh = tl.zeros((BLOCK_N, BLOCK_E), tl.float32)
        a_after = dh                                           # the decay of the step after (dh is 0 there)
        for tile in tl.range(n_tiles, num_stages=STAGES):
            s0 = s_begin + (n_tiles - 1 - tile) * 4            # tiles last to first
            t, mask, _, _, delta, _, Ct = _tile(x_stub, dt_row, C_row, C_row, bias, steps, s0, L, s_end, flip,
                                                mask_e, offs_n, mask_n, 0, sdt_t, sC_t, sC_t, _w, _b, wdt, R,
                                                SOFTPLUS, WIDEN_BC, True, 1, False, FUSED_DT)
            dy = _dy(dout_ptr, z_ptr, pid_b, t, offs_e, mask, sdo_b, sdo_t, sz_b, sz_t, NDIR, HAS_Z)[3]
            d0, d1, d2, d3 = _rows(delta)
            c0, c1, c2, c3 = _rows(Ct)
            g0, g1, g2, g3 = _rows(dy)
            dh = _dh_back(dh, a_after, c3, g3)
            dh = _dh_back(dh, _decay(A2, d3), c2, g2)
            dh = _dh_back(dh, _decay(A2, d2), c1, g1)
            dh = _dh_back(dh, _decay(A2, d1), c0, g0)
            a_after = _decay(A2, d0)
            dsum += tl.where((s0 + steps == s_begin)[:, None], 0., delta)   # s_begin itself is not in it
        tl.store(segsum_ptr + (seg_row + pid_s) * E + offs_e, tl.sum(dsum, 0), mask=mask_e)
        tl.store(segdh_ptr + ((seg_row + pid_s) * E + offs_e[None, :]) * N + offs_n[:, None], dh, mask=mask_ne)


@triton.jit
def _row_grads(dh, a, h_prev, h, A, d, x, dy, Bs):
    """Gradients of one step from dL/dh_s (dh), its decay a, the states before and after it and its inputs, all
    (BLOCK_N, BLOCK_E): this step's contribution to dA, and the products whose sums the caller takes over the whole
    tile (_sum_rows): over states, <dh, B> and the dA part of dL/d delta; over channels, dB and dC."""
    dh_ah = dh * a * h_prev                                  # dL/d(delta A) per state
    return dh_ah * d[None, :], dh * Bs[:, None], dh_ah * A, dh * (d * x)[None, :], h * dy[None, :]


@triton.jit
def _scan_bwd_kernel(
        x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, ckpt_ptr, y_ptr, scratch_ptr,
        segsum_ptr, segdh_ptr, dx_ptr, ddt_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dz_ptr, dbias_ptr,
        batch, L, E, N, n_ckpt, seg_len, n_seg,
        sx_d, sx_b, sx_t, sdt_d, sdt_b, sdt_t, sB_d, sB_b, sB_t, sC_d, sC_b, sC_t, sz_b, sz_t, sdo_b, sdo_t,
        conv_w_ptr, conv_b_ptr, wdt_ptr, R,
        NDIR: tl.constexpr, D_FIRST: tl.constexpr, D_LAST: tl.constexpr, SEGMENTED: tl.constexpr,
        REVERSE: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, CKPT_TILES: tl.constexpr, STAGES: tl.constexpr,
        W: tl.constexpr, FUSED_CONV: tl.constexpr, FUSED_DT: tl.constexpr, BLOCK_R: tl.constexpr,
):
    # Grid: (cdiv(E, BLOCK_E), batch, segments), as the forward; a segment is a whole number of checkpoint
    # chunks. dx, ddt, dz are written (own rows only); dB, dC (summed over channels) and dA, dD, dbias (summed
    # over batch and time) are accumulated with atomics into fp32 buffers.
    # One segment: all directions per program. SEGMENTED: dh after the segment from the later segments'
    # summaries (_dh_summary_kernel), then the full backward of the segment; launched once per direction.
    pid_e, pid_b, offs_e, mask_e, offs_n, mask_n, mask_ne = _channel_block(E, N, BLOCK_E, BLOCK_N)
    pid_s = tl.program_id(2)
    s_begin = pid_s * seg_len
    s_end = tl.minimum(s_begin + seg_len, L)
    steps = tl.arange(0, 4)
    n_tiles = tl.cdiv(L, 4)
    # This program's scratch: the states entering each tile of the current chunk, (CKPT_TILES, BLOCK_E, BLOCK_N).
    # States contiguous, as in A, whose layout the state tile takes: with h stored or started in another layout,
    # Triton converted it through shared memory at every step (twice the instructions in pass 1's loop under
    # Triton 3.6), so pass 1 also reads its start state back from here, not from the checkpoint.
    scratch = (scratch_ptr + ((pid_s * batch + pid_b) * tl.num_programs(0) + pid_e) * CKPT_TILES * BLOCK_N
               * BLOCK_E + offs_n[:, None] + tl.arange(0, BLOCK_E)[None, :] * BLOCK_N)
    row = pid_b * L * E + offs_e[None, :]                   # dx, ddt, dz, y: contiguous (.., batch, L, E)
    for d in tl.static_range(D_FIRST, D_LAST):
        flip = (d + REVERSE) % 2
        A, Dv, bias, x_row, dt_row, B_row, C_row = _direction(
            d, pid_b, offs_e, mask_e, offs_n, mask_ne, E, N, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr,
            sx_d, sx_b, sdt_d, sdt_b, sB_d, sB_b, sC_d, sC_b, HAS_D, HAS_BIAS, BLOCK_E, BLOCK_N, False, FUSED_DT)
        conv_w_row, conv_b, wdt = _fused_params(d, offs_e, mask_e, E, R, conv_w_ptr, conv_b_ptr, wdt_ptr, W,
                                                FUSED_CONV, FUSED_DT, BLOCK_R)
        A2 = A * LOG2E
        dBC_row = (d * batch + pid_b) * L * N + offs_n[None, :]
        seg_row = (d * batch + pid_b) * n_seg
        dh = tl.zeros((BLOCK_N, BLOCK_E), tl.float32)        # dL/dh at the step after the current tile
        if SEGMENTED:                                        # dh after this segment, from the later ones
            for ii in range(n_seg - 1 - pid_s):
                i = n_seg - 1 - ii
                dsum = tl.load(segsum_ptr + (seg_row + i) * E + offs_e, mask=mask_e, other=0.)
                dh_i = tl.load(segdh_ptr + ((seg_row + i) * E + offs_e[None, :]) * N + offs_n[:, None],
                               mask=mask_ne, other=0.)
                dh = tl.exp2(A2 * dsum[None, :]) * dh + dh_i
        # a_next: the decay of the step after the current one in scan order (the next segment's first step).
        t_end = flip * (L - 1) + (1 - 2 * flip) * (s_end + tl.zeros((1,), tl.int32))
        delta_end = _delta(dt_row, t_end, mask_e[None, :] & (s_end < L), bias[None, :], L, sdt_t, wdt, R, SOFTPLUS,
                           FUSED_DT)[1]
        a_next = tl.exp2(delta_end * A2)
        dA_acc = tl.zeros((BLOCK_N, BLOCK_E), tl.float32)
        dD_acc = tl.zeros((4, BLOCK_E), tl.float32)          # per row of the tile: summed once at the end
        dbias_acc = tl.zeros((4, BLOCK_E), tl.float32)
        k_begin = s_begin // (CKPT_TILES * 4)
        n_chunks = tl.cdiv(tl.cdiv(s_end, 4), CKPT_TILES) - k_begin
        for kk in range(n_chunks):
            k = k_begin + n_chunks - 1 - kk                  # chunks last to first
            tile0 = k * CKPT_TILES
            n_sub = tl.minimum(CKPT_TILES, n_tiles - tile0)
            # Pass 1: recompute the state entering each tile of the chunk.
            ckpt = ckpt_ptr + (((d * batch + pid_b) * n_ckpt + k - 1) * N + offs_n[:, None]) * E
            tl.store(scratch, tl.load(ckpt + offs_e[None, :], mask=mask_ne & (k > 0), other=0.))
            tl.debug_barrier()
            h = tl.load(scratch)                             # in A's layout (see scratch)
            for j in tl.range(1, n_sub, num_stages=STAGES):
                _, _, x, _, delta, Bt, Ct = _tile(x_row, dt_row, B_row, C_row, bias, steps, (tile0 + j - 1) * 4, L,
                                                  L, flip, mask_e, offs_n, mask_n, sx_t, sdt_t, sB_t, sC_t,
                                                  conv_w_row, conv_b, wdt, R, SOFTPLUS, False, True, W, FUSED_CONV,
                                                  FUSED_DT)
                h = _tile_y(h, A2, delta, x, Bt, Ct)[0]
                tl.store(scratch + j * BLOCK_N * BLOCK_E, h)
            tl.debug_barrier()
            # Pass 2: tiles in reverse, each recomputed from its entering state.
            for jj in tl.range(n_sub, num_stages=STAGES):
                j = n_sub - 1 - jj
                s0 = (tile0 + j) * 4
                t, mask, x, ddelta_du, delta, Bt, Ct = _tile(
                    x_row, dt_row, B_row, C_row, bias, steps, s0, L, L, flip, mask_e, offs_n, mask_n,
                    sx_t, sdt_t, sB_t, sC_t, conv_w_row, conv_b, wdt, R, SOFTPLUS, False, True, W, FUSED_CONV,
                    FUSED_DT)
                do, zt, sig, dy = _dy(dout_ptr, z_ptr, pid_b, t, offs_e, mask, sdo_b, sdo_t, sz_b, sz_t, NDIR, HAS_Z)
                if HAS_Z and d == NDIR - 1:                  # dz from the y the forward saved
                    y = to_f32(tl.load(y_ptr + row + t[:, None] * E, mask=mask, other=0.))
                    tl.store(dz_ptr + row + t[:, None] * E,
                             (do * y * sig * (1. + zt * (1. - sig))).to(dz_ptr.dtype.element_ty), mask=mask)
                d0, d1, d2, d3 = _rows(delta)
                x0, x1, x2, x3 = _rows(x)
                b0, b1, b2, b3 = _rows(Bt)
                c0, c1, c2, c3 = _rows(Ct)
                g0, g1, g2, g3 = _rows(dy)
                # The tile's decays and states
                h0 = tl.load(scratch + j * BLOCK_N * BLOCK_E)
                a0, h1 = _step(h0, A2, d0, d0 * x0, b0)
                a1, h2 = _step(h1, A2, d1, d1 * x1, b1)
                a2, h3 = _step(h2, A2, d2, d2 * x2, b2)
                a3, h4 = _step(h3, A2, d3, d3 * x3, b3)
                # dh back over the rows, with each row's gradients
                dh = _dh_back(dh, a_next, c3, g3)
                dA3, dhB3, dd3, dB3, dC3 = _row_grads(dh, a3, h3, h4, A, d3, x3, g3, b3)
                dh = _dh_back(dh, a3, c2, g2)
                dA2, dhB2, dd2, dB2, dC2 = _row_grads(dh, a2, h2, h3, A, d2, x2, g2, b2)
                dh = _dh_back(dh, a2, c1, g1)
                dA1, dhB1, dd1, dB1, dC1 = _row_grads(dh, a1, h1, h2, A, d1, x1, g1, b1)
                dh = _dh_back(dh, a1, c0, g0)
                dA0, dhB0, dd0, dB0, dC0 = _row_grads(dh, a0, h0, h1, A, d0, x0, g0, b0)
                a_next = a0
                dA_acc += dA0 + dA1 + dA2 + dA3
                dhB = _sum_rows(dhB0, dhB1, dhB2, dhB3, 0)
                du = tl.where(mask, (_sum_rows(dd0, dd1, dd2, dd3, 0) + x * dhB) * ddelta_du, 0.)
                dD_acc += dy * x
                dbias_acc += du
                tl.store(dx_ptr + d * batch * L * E + row + t[:, None] * E,
                         (delta * dhB + Dv[None, :] * dy).to(dx_ptr.dtype.element_ty), mask=mask)
                tl.store(ddt_ptr + d * batch * L * E + row + t[:, None] * E, du.to(ddt_ptr.dtype.element_ty),
                         mask=mask)
                mask_bc = ((s0 + steps) < L)[:, None] & mask_n[None, :]
                # relaxed: only atomicity is needed (the launch's end orders the sums); the default acq_rel
                # fences every add, and fenced adds took a fifth of the backward's time at b128 L197
                tl.atomic_add(dB_ptr + dBC_row + t[:, None] * N, _sum_rows(dB0, dB1, dB2, dB3, 1), mask=mask_bc,
                              sem='relaxed')
                tl.atomic_add(dC_ptr + dBC_row + t[:, None] * N, _sum_rows(dC0, dC1, dC2, dC3, 1), mask=mask_bc,
                              sem='relaxed')
            tl.debug_barrier()                               # the next chunk overwrites the scratch
        tl.atomic_add(dA_ptr + d * E * N + offs_e[None, :] * N + offs_n[:, None], dA_acc, mask=mask_ne,
                      sem='relaxed')
        tl.atomic_add(dD_ptr + d * E + offs_e, tl.sum(dD_acc, 0), mask=mask_e, sem='relaxed')
        tl.atomic_add(dbias_ptr + d * E + offs_e, tl.sum(dbias_acc, 0), mask=mask_e, sem='relaxed')


# Launch parameters (docs/performance.md has the current timings). BLOCK_E_FWD / BLOCK_E_BWD: None picks by shape
# (launch_config), a number forces it. The checkpoint interval CKPT_TILES * BLOCK_T is shared by both passes;
# the channel block of each pass is free, since checkpoints are stored per channel, not per program.
# STAGES is the depth of the tile-load pipeline, 3 for every launch; STAGES_BWD (the one-segment backward) and
# STAGES_SEGMENTED_FWD / _BWD (the segmented launches) override it (None: STAGES). H100, CUDA-graph timing, the
# bidirectional scan, 3 stages against 1: forward 1.6x faster at b128 L197 and 1.5x at b8 L6085; forward +
# backward 1.3x and 1.5x with only the backward's depth changed.
# WIDEN_BC: the forward passes and the dh summaries widen B and C in place (_in_place), capped at MAXNREG_WIDE
# registers so that 12 one-warp programs fit on an SM (b128 L197 runs 11.6 per SM). Uncapped, the fp32 rows took
# 168-225 registers: a second wave at b128 (forward+backward 0.492 -> 0.515 ms on an H100).
# Capped, ptxas spills 16-24 bytes (80 in the bidirectional forward with checkpoints), mostly outside the loop.
# Segmented scan: when batch * channel blocks < SEG_MIN_PROGRAMS (None: 2 x the SM count), the sequence is
# split into segments of whole checkpoint chunks so that about SEG_TARGET_FWD / _BWD programs run, but into at
# most SEG_MAX segments (None: sqrt(L / BLOCK_T), since each replay program first folds in the summaries of all
# segments before its own: n_seg steps against seg_len / BLOCK_T tiles). The forward's target is one wave of
# 12 programs per SM (its register cap): at b8 L6085 fewer, longer segments halve the folding (bidirectional
# forward 0.534 -> 0.514 ms); the backward's more programs hide its latency (forward +
# backward 2.009 -> 2.299 ms with 1536).
SCAN_CONFIG = dict(CKPT_TILES=16, STAGES=3, STAGES_BWD=None, STAGES_SEGMENTED_FWD=None, STAGES_SEGMENTED_BWD=None,
                   num_warps=1, BLOCK_E_FWD=None, BLOCK_E_BWD=None, SEG_MIN_PROGRAMS=None, SEG_TARGET_FWD=1536,
                   SEG_TARGET_BWD=3072, SEG_MAX=None, WIDEN_BC=True, MAXNREG_WIDE=160)


@functools.lru_cache(maxsize=None)
def _sm_count(device):
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == 'cuda' else 132


@functools.lru_cache(maxsize=None)
def _unused(device):
    """A one-element fp32 buffer for the pointer arguments a launch does not read (the segment summaries of an
    unsegmented scan, the checkpoints of a scan without backward): no allocation per call."""
    return torch.empty(1, dtype=torch.float32, device=device)


def _segments(cfg, programs, target, L, device):
    """(seg_len, n_seg) for a launch of ``programs`` programs per segment: one segment (seg_len >= L) when the
    programs fill the GPU, else segments of whole checkpoint chunks, about ``target`` programs in all."""
    chunk = cfg['CKPT_TILES'] * BLOCK_T
    n_chunks = cdiv(L, chunk)
    min_programs = cfg['SEG_MIN_PROGRAMS'] or 2 * _sm_count(device)
    if programs >= min_programs or n_chunks < 2:
        return n_chunks * chunk, 1
    max_seg = cfg['SEG_MAX'] or max(2, math.isqrt(L // BLOCK_T))
    want = min(n_chunks, cdiv(target, programs), max_seg)
    seg_len = cdiv(n_chunks, want) * chunk
    return seg_len, cdiv(L, seg_len)


def launch_config(batch, L, E, device, cfg=None):
    """Channel blocks of the two passes, and each pass's segments: (BLOCK_E_FWD, (seg_len, n_seg) forward,
    BLOCK_E_BWD, (seg_len, n_seg) backward). Measured on an H100: the forward is fastest with 32 channels per
    one-warp program (N in each thread, no shuffles for y), the backward with 16 (8 and 32 measured slower); where
    batch x channel blocks leaves the GPU short of programs, the sequence is segmented instead of shrinking
    the blocks."""
    cfg = SCAN_CONFIG if cfg is None else cfg
    be_f = cfg['BLOCK_E_FWD'] or 32
    be_b = cfg['BLOCK_E_BWD'] or 16
    return (be_f, _segments(cfg, batch * cdiv(E, be_f), cfg['SEG_TARGET_FWD'], L, device),
            be_b, _segments(cfg, batch * cdiv(E, be_b), cfg['SEG_TARGET_BWD'], L, device))


def _stages(cfg, n_seg, backward=False):
    """Depth of the tile-load pipeline for a forward or backward launch of n_seg segments."""
    if n_seg > 1:
        key = 'STAGES_SEGMENTED_BWD' if backward else 'STAGES_SEGMENTED_FWD'
    else:
        key = 'STAGES_BWD' if backward else 'STAGES'
    return cfg[key] or cfg['STAGES']


def _z_strides(z):
    return z.stride()[:2] if z is not None else (0, 0)


def _strides(x, dt, B, C, z):
    x_strides = x.stride()[:3] if x.dim() == 4 else (0, *x.stride()[:2])   # fused: one raw x for all directions
    return (*x_strides, *dt.stride()[:3], *B.stride()[:3], *C.stride()[:3], *_z_strides(z))


def _fused_args(fused, device, conv=True):
    """Kernel arguments of the fused inputs: ``fused`` is None (x and dt come computed) or (conv weight
    (ndir, E, W), conv bias (ndir, E), dt_proj weight (ndir, R, E)), contiguous, any of them None to load that
    input as it comes: x is then the conv's raw input (batch, L, E), dt the low-rank dt_low (ndir, batch, L, R)."""
    conv_w, conv_b, w_dt = fused or (None, None, None)
    unused = _unused(device)
    args = dict(wdt_ptr=unused if w_dt is None else w_dt, R=1 if w_dt is None else w_dt.shape[1],
                FUSED_DT=w_dt is not None, BLOCK_R=1 if w_dt is None else next_power_of_2(w_dt.shape[1]))
    if conv:
        args.update(conv_w_ptr=unused if conv_w is None else conv_w, conv_b_ptr=unused if conv_b is None else conv_b,
                    W=1 if conv_w is None else conv_w.shape[-1], FUSED_CONV=conv_w is not None)
    return args


def _register_cap(cfg):
    """maxnreg of the launches that widen B and C in place (the forward's and the dh summaries'), or None."""
    return cfg['MAXNREG_WIDE'] if cfg['WIDEN_BC'] else None


def _passes(ndir, n_seg):
    """(MODE, D_FIRST, D_LAST) of each launch, forward or backward: one plain launch (MODE 0), or a summary
    launch over all directions (MODE 1) and a replay launch per direction (MODE 2; see the kernels' comments)."""
    if n_seg == 1:
        return [(0, 0, ndir)]
    return [(1, 0, ndir)] + [(2, d, d + 1) for d in range(ndir)]


def _checkpoints(L, save):
    """How many states the forward stores for the backward: one per checkpoint chunk after the first."""
    return cdiv(L, SCAN_CONFIG['CKPT_TILES'] * BLOCK_T) - 1 if save else 0


def _scan_outputs(x, dt, A, z, save):
    """The forward's outputs, allocated (real or fake alike): out (batch, L, E) in x's dtype; the checkpoints
    (ndir, batch, n_ckpt, N, E) fp32; y before the gate, as out where the backward needs it, else empty. The sizes
    come from dt and A, since on the fused path x is the conv's raw input (batch, L, E)."""
    ndir, batch, L = dt.shape[:3]
    _, E, N = A.shape
    out = torch.empty((batch, L, E), dtype=x.dtype, device=x.device)
    ckpt = torch.empty((ndir, batch, _checkpoints(L, save), N, E), dtype=torch.float32, device=x.device)
    y = torch.empty_like(out) if save and z is not None else out.new_empty(0)
    return out, ckpt, y


def _launch_scan(x, dt, A, B, C, D, z, dt_bias, softplus, reverse, save, fused=None):
    """The launches of :func:`_scan_forward`; ``fused`` (see :func:`_fused_args`) has the kernels compute x and
    dt from the mixer's raw conv input and dt_low (:mod:`.triton_mixer`)."""
    x, dt, B, C, z = (unit_last_stride(t) for t in (x, dt, B, C, z))
    A, D, dt_bias = (None if t is None else t.contiguous() for t in (A, D, dt_bias))
    ndir, batch, L = dt.shape[:3]
    _, E, N = A.shape
    cfg = SCAN_CONFIG
    block_e, (seg_len, n_seg), _, _ = launch_config(batch, L, E, x.device, cfg)
    f32 = dict(dtype=torch.float32, device=x.device)
    out, ckpt, y = _scan_outputs(x, dt, A, z, save)
    n_ckpt = ckpt.shape[2]
    segsum = torch.empty((ndir, batch, n_seg, E), **f32) if n_seg > 1 else _unused(x.device)
    segh = torch.empty((ndir, batch, n_seg, N, E), **f32) if n_seg > 1 else _unused(x.device)
    for mode, d_first, d_last in _passes(ndir, n_seg):
        _scan_fwd_kernel[(cdiv(E, block_e), batch, n_seg)](
            x, dt, A, B, C, x if D is None else D, x if z is None else z, x if dt_bias is None else dt_bias,
            out, ckpt if n_ckpt else _unused(x.device), y if y.numel() else out, segsum, segh, batch, L, E, N,
            n_ckpt, seg_len, n_seg, *_strides(x, dt, B, C, z),
            NDIR=ndir, D_FIRST=d_first, D_LAST=d_last, MODE=mode, REVERSE=reverse, HAS_D=D is not None,
            HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=softplus, SAVE=save,
            WIDEN_BC=cfg['WIDEN_BC'], BLOCK_E=block_e, BLOCK_N=next_power_of_2(N), CKPT_TILES=cfg['CKPT_TILES'],
            STAGES=_stages(cfg, n_seg), num_warps=cfg['num_warps'], maxnreg=_register_cap(cfg),
            **_fused_args(fused, x.device))
    return out, ckpt, y


def _launch_scan_backward(dout, x, dt, A, B, C, D, z, dt_bias, ckpt, y, softplus, reverse, fused=None):
    """The launches of :func:`_scan_backward`, ``fused`` as the forward had it. dx and ddt are (ndir, batch, L,
    E) either way: on the fused path the gradients of the conv's output and of the full-width dt."""
    x, dt, B, C, z, dout = (unit_last_stride(t) for t in (x, dt, B, C, z, dout))
    A, D, dt_bias = (None if t is None else t.contiguous() for t in (A, D, dt_bias))
    ndir, batch, L = dt.shape[:3]
    _, E, N = A.shape
    n_ckpt = ckpt.shape[2]
    cfg = SCAN_CONFIG
    block_e_fwd, _, block_e, (seg_len, n_seg) = launch_config(batch, L, E, x.device, cfg)
    f32 = dict(dtype=torch.float32, device=x.device)
    dx, ddt = (torch.empty((ndir, batch, L, E), dtype=t.dtype, device=x.device) for t in (x, dt))
    dz, = grads_like(x, z)
    # The accumulated gradients, fp32 and zeroed, each its own buffer: a custom op's outputs may not share one.
    dA, dD, dbias, dB, dC = (torch.zeros(shape, **f32) for shape in (A.shape, (ndir, E), (ndir, E), B.shape, C.shape))
    grid = (cdiv(E, block_e), batch, n_seg)
    BLOCK_N = next_power_of_2(N)
    scratch = torch.empty(grid[0] * batch * n_seg * cfg['CKPT_TILES'] * BLOCK_N * block_e, **f32)
    segsum = torch.empty((ndir, batch, n_seg, E), **f32) if n_seg > 1 else _unused(x.device)
    segdh = torch.empty((ndir, batch, n_seg, E, N), **f32) if n_seg > 1 else _unused(x.device)
    stages = _stages(cfg, n_seg, backward=True)
    for mode, d_first, d_last in _passes(ndir, n_seg):
        if mode == 1:                                        # the dh summaries, in the forward's channel blocks
            _dh_summary_kernel[(cdiv(E, block_e_fwd), batch, n_seg)](
                dt, A, C, x if z is None else z, x if dt_bias is None else dt_bias, dout, segsum, segdh,
                batch, L, E, N, seg_len, n_seg, *dt.stride()[:3], *C.stride()[:3], *_z_strides(z),
                *dout.stride()[:2], NDIR=ndir, REVERSE=reverse, HAS_Z=z is not None,
                HAS_BIAS=dt_bias is not None, SOFTPLUS=softplus, WIDEN_BC=cfg['WIDEN_BC'], BLOCK_E=block_e_fwd,
                BLOCK_N=BLOCK_N, STAGES=stages, num_warps=cfg['num_warps'], maxnreg=_register_cap(cfg),
                **_fused_args(fused, x.device, conv=False))
        else:
            _scan_bwd_kernel[grid](
                x, dt, A, B, C, x if D is None else D, x if z is None else z, x if dt_bias is None else dt_bias,
                dout, ckpt if n_ckpt else _unused(x.device), dout if z is None else y, scratch, segsum, segdh,
                dx, ddt, dA, dB, dC, dD, dx if dz.numel() == 0 else dz, dbias,
                batch, L, E, N, n_ckpt, seg_len, n_seg, *_strides(x, dt, B, C, z), *dout.stride()[:2],
                NDIR=ndir, D_FIRST=d_first, D_LAST=d_last, SEGMENTED=mode == 2, REVERSE=reverse,
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=softplus,
                BLOCK_E=block_e, BLOCK_N=BLOCK_N, CKPT_TILES=cfg['CKPT_TILES'], STAGES=stages,
                num_warps=cfg['num_warps'], **_fused_args(fused, x.device))
    return (dx, ddt, dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype), x.new_empty(0) if D is None else dD.to(D.dtype),
            dz, x.new_empty(0) if dt_bias is None else dbias.to(dt_bias.dtype))


def _scan_forward(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
                  dt_bias: Optional[Tensor], softplus: bool, reverse: bool, save: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Scan over a leading direction axis: x, dt (ndir, batch, L, E) etc. -> (out, checkpoints, y before the
    gate); with ``save`` (autograd will call the backward) the launches also store what the backward reads."""
    return _launch_scan(x, dt, A, B, C, D, z, dt_bias, softplus, reverse, save)


def _scan_backward(dout: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                   z: Optional[Tensor], dt_bias: Optional[Tensor], ckpt: Tensor, y: Tensor, softplus: bool,
                   reverse: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of every input of :func:`_scan_forward` (empty for an absent D, z, dt_bias) from the gradient of
    out and the checkpoints and y the forward stored."""
    return _launch_scan_backward(dout, x, dt, A, B, C, D, z, dt_bias, ckpt, y, softplus, reverse)


# The scan as PyTorch custom ops, forward and backward each opaque to torch.compile and torch.export; their fake
# implementations allocate through the same helpers as the launches, so shapes, dtypes and strides agree.
scan_op = torch.library.custom_op('vim::scan', _scan_forward, mutates_args=())
scan_op.register_fake(lambda x, dt, A, B, C, D, z, dt_bias, softplus, reverse, save: _scan_outputs(x, dt, A, z, save))
scan_backward_op = torch.library.custom_op('vim::scan_backward', _scan_backward, mutates_args=())
scan_backward_op.register_fake(
    lambda dout, x, dt, A, B, C, D, z, dt_bias, *flags: grads_like(x, x, dt, A, B, C, D, z, dt_bias))


def _setup_scan(ctx, inputs, output):
    x, dt, A, B, C, D, z, dt_bias, softplus, reverse, save = inputs
    if not save:
        raise RuntimeError('vim::scan: called with save=False on inputs that need gradients; the backward needs '
                           'the checkpoints that save=True stores')
    _, ckpt, y = output
    ctx.mark_non_differentiable(ckpt, y)
    ctx.set_materialize_grads(False)                         # no zero-filled gradients of ckpt and y
    ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, ckpt, y)
    ctx.flags = softplus, reverse


def _scan_vjp(ctx, dout, _dckpt, _dy):
    if dout is None:
        return (None,) * 11
    x, dt, A, B, C, D, z, dt_bias, ckpt, y = saved = ctx.saved_tensors
    grads = scan_backward_op(dout, *saved, *ctx.flags)
    return (*(None if t is None else g for t, g in zip((x, dt, A, B, C, D, z, dt_bias), grads)), None, None, None)


scan_op.register_autograd(_scan_vjp, setup_context=_setup_scan)


def _scan(x, dt, A, B, C, D, z, dt_bias, softplus, reverse):
    save = needs_grad(x, dt, A, B, C, D, z, dt_bias)
    run = scan_op if save or traced(x) else _scan_forward
    return run(x, dt, A, B, C, D, z, dt_bias, softplus, reverse, save)[0]


def selective_scan(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True, reverse=False):
    op = 'selective_scan'
    check(op, 'x', x, x.shape if x.dim() == 3 else (-1, -1, -1), x.device)
    batch, L, E = x.shape
    N = A.shape[-1] if isinstance(A, torch.Tensor) else -1
    for name, t, shape, optional in (('dt', dt, (batch, L, E), False), ('A', A, (E, N), False),
                                     ('B', B, (batch, L, N), False), ('C', C, (batch, L, N), False),
                                     ('D', D, (E,), True), ('z', z, (batch, L, E), True),
                                     ('dt_bias', dt_bias, (E,), True)):
        check(op, name, t, shape, x.device, optional)
    unsq = (lambda t: None if t is None else t.unsqueeze(0))
    return _scan(*(t.unsqueeze(0) for t in (x, dt, A, B, C)), unsq(D), z, unsq(dt_bias), bool(dt_softplus),
                 bool(reverse))


def bidirectional_scan(x, dt, A, B, C, D, z, dt_bias):
    op = 'bidirectional_scan'
    check(op, 'x', x, x.shape if x.dim() == 4 and x.shape[0] == 2 else (2, -1, -1, -1), x.device)
    _, batch, L, E = x.shape
    N = A.shape[-1] if isinstance(A, torch.Tensor) else -1
    for name, t, shape in (('dt', dt, (2, batch, L, E)), ('A', A, (2, E, N)), ('B', B, (2, batch, L, N)),
                           ('C', C, (2, batch, L, N)), ('D', D, (2, E)), ('z', z, (batch, L, E)),
                           ('dt_bias', dt_bias, (2, E))):
        check(op, name, t, shape, x.device)
    return _scan(x, dt, A, B, C, D, z, dt_bias, True, False)
