"""Triton selective scan, forward kernel, and the tile walk the backward kernels (:mod:`.triton_scan_bwd`)
share with it. Tensor layouts, launches and the autograd op: :mod:`.triton_scan`.

A program owns BLOCK_E channels of one batch element and all N states of each, h as (BLOCK_N, BLOCK_E) fp32
registers (the forward holds a channel's N states in one thread, see _states_in_thread; the backward spreads
them over 4 lanes, which keeps its sums of dB and dC over channels short), and walks the sequence in tiles of 4
steps. A tile's x, dt, z, B and C are loaded as 2-D tiles through a software pipeline
(``tl.range(num_stages=...)``: the loads of later tiles are in flight while this one computes), split into rows,
and the recurrence h_s = exp(delta_s A) h_{s-1} + delta_s x_s B_s runs row by row: one exponential and five
multiplies or adds per state update. ``s`` counts steps in scan order: time t = s forward,
L-1-s in reverse, so the reverse direction reads the sequence backwards instead of flipping it.
"""
import triton
import triton.language as tl

from .triton_conv1d import _pre_activation
from .triton_math import LOG2E, sigmoid, softplus, to_f32


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
               STATES_IN_THREAD: tl.constexpr, FUSED_DT: tl.constexpr, A_LOG: tl.constexpr):
    """Direction d's parameters, A as (BLOCK_N, BLOCK_E), D and dt_bias (zeros when absent), fp32, and the
    pointers to its rows of x, dt (at this program's channels; dt_low's whole rows with FUSED_DT), B and C. A's
    layout sets the state's: all N states in one thread (STATES_IN_THREAD) or as loaded. A_LOG: A_ptr holds the
    mixer's parameter A_log and A = -exp(A_log) is taken here, once per program, not as a launch per call."""
    if STATES_IN_THREAD:
        A = _states_in_thread(A_ptr + d * E * N + offs_e * N, mask_e, 1, N, BLOCK_N)
    else:
        A = tl.load(A_ptr + d * E * N + offs_e[None, :] * N + offs_n[:, None], mask=mask_ne, other=0.).to(tl.float32)
    if A_LOG:
        A = -tl.exp(A)
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
        A_LOG: tl.constexpr,
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
            sx_d, sx_b, sdt_d, sdt_b, sB_d, sB_b, sC_d, sC_b, HAS_D, HAS_BIAS, BLOCK_E, BLOCK_N, True, FUSED_DT, A_LOG)
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
