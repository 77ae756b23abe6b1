"""Triton selective scan, backward kernels: the dh summaries of the segmented backward and the backward
sweep. The tile walk comes from :mod:`.triton_scan_fwd`; launches and the autograd op: :mod:`.triton_scan`.

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
import triton
import triton.language as tl

from .triton_math import LOG2E, sigmoid, to_f32
from .triton_scan_fwd import (_channel_block, _decay, _delta, _direction, _fused_params, _rows, _stack, _step, _tile,
                              _tile_y)


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
        STAGES: tl.constexpr, FUSED_DT: tl.constexpr, BLOCK_R: tl.constexpr, A_LOG: tl.constexpr,
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
            sdt_d, sdt_b, sdt_d, sdt_b, sC_d, sC_b, sC_d, sC_b, False, HAS_BIAS, BLOCK_E, BLOCK_N, True, FUSED_DT,
            A_LOG)
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
        A_LOG: tl.constexpr,
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
            sx_d, sx_b, sdt_d, sdt_b, sB_d, sB_b, sC_d, sC_b, HAS_D, HAS_BIAS, BLOCK_E, BLOCK_N, False, FUSED_DT, A_LOG)
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
        if A_LOG:                                            # dL/dA_log = dL/dA * A, as A = -exp(A_log)
            dA_acc *= A
        tl.atomic_add(dA_ptr + d * E * N + offs_e[None, :] * N + offs_n[:, None], dA_acc, mask=mask_ne,
                      sem='relaxed')
        tl.atomic_add(dD_ptr + d * E + offs_e, tl.sum(dD_acc, 0), mask=mask_e, sem='relaxed')
        tl.atomic_add(dbias_ptr + d * E + offs_e, tl.sum(dbias_acc, 0), mask=mask_e, sem='relaxed')
