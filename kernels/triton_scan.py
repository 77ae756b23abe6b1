"""Triton selective scan (Mamba S6), forward and backward, one or two directions per launch: launch
configuration, launches, the PyTorch custom ops and the public functions. The kernels: :mod:`.triton_scan_fwd`
(the forward and the tile walk both passes share) and :mod:`.triton_scan_bwd`.

Layout (see :mod:`.reference`): x, dt (ndir, batch, L, E); B, C (ndir, batch, L, N); A (ndir, E, N);
D, dt_bias (ndir, E); z (batch, L, E); channels contiguous, other strides free. ndir is 1 for a plain scan
and 2 for the bidirectional scan of a Vim mixer, whose directions run one after the other in the same program
and whose outputs are summed, halved and gated in the kernel.

Segmented scan (long sequences, few batch elements x channel blocks: b8 L6085 gives 96 programs for 132 SMs):
the sequence is cut into segments of whole checkpoint chunks, one program per (channel block, batch element,
segment). Pass 1 runs each segment from a zero state and keeps its end state and the sum of its deltas (the
segment's decay is exp(A * sum delta)); pass 2 folds the earlier segments' summaries into the true entry state
and replays the segment. The backward does the same with dh, in reverse: its summaries (_dh_summary_kernel) run
in the forward's layout, since they sum nothing over channels. launch_config picks the segmented scan by shape.
"""
import functools
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .triton_common import (autograd_op, call, cdiv, check, grads_like, needs_grad, next_power_of_2, sm_count,
                            unit_last_stride)
from .triton_scan_bwd import _dh_summary_kernel, _scan_bwd_kernel
from .triton_scan_fwd import _scan_fwd_kernel

BLOCK_T = 4                                                  # steps per tile: _rows splits a tile into 4 rows


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
def _unused(device):
    """A one-element fp32 buffer for the pointer arguments a launch does not read (the segment summaries of an
    unsegmented scan, the checkpoints of a scan without backward): no allocation per call."""
    return torch.empty(1, dtype=torch.float32, device=device)


def _segments(cfg, programs, target, L, device):
    """(seg_len, n_seg) for a launch of ``programs`` programs per segment: one segment (seg_len >= L) when the
    programs fill the GPU, else segments of whole checkpoint chunks, about ``target`` programs in all."""
    chunk = cfg['CKPT_TILES'] * BLOCK_T
    n_chunks = cdiv(L, chunk)
    min_programs = cfg['SEG_MIN_PROGRAMS'] or 2 * sm_count(device)
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


def _launch_scan(x, dt, A, B, C, D, z, dt_bias, softplus, reverse, save, fused=None, a_log=False):
    """The launches of :func:`_scan_forward`; ``fused`` (see :func:`_fused_args`) has the kernels compute x and
    dt from the mixer's raw conv input and dt_low, and ``a_log`` says that A holds the mixer's A_log, of which
    the kernels take A = -exp(A_log) (:mod:`.triton_mixer`)."""
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
            STAGES=_stages(cfg, n_seg), num_warps=cfg['num_warps'], maxnreg=_register_cap(cfg), A_LOG=a_log,
            **_fused_args(fused, x.device))
    return out, ckpt, y


def _launch_scan_backward(dout, x, dt, A, B, C, D, z, dt_bias, ckpt, y, softplus, reverse, fused=None, a_log=False):
    """The launches of :func:`_scan_backward`, ``fused`` and ``a_log`` as the forward had them. dx and ddt are
    (ndir, batch, L, E) either way: on the fused path the gradients of the conv's output and of the full-width
    dt; with ``a_log`` dA is A_log's gradient."""
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
                A_LOG=a_log, **_fused_args(fused, x.device, conv=False))
        else:
            _scan_bwd_kernel[grid](
                x, dt, A, B, C, x if D is None else D, x if z is None else z, x if dt_bias is None else dt_bias,
                dout, ckpt if n_ckpt else _unused(x.device), dout if z is None else y, scratch, segsum, segdh,
                dx, ddt, dA, dB, dC, dD, dx if dz.numel() == 0 else dz, dbias,
                batch, L, E, N, n_ckpt, seg_len, n_seg, *_strides(x, dt, B, C, z), *dout.stride()[:2],
                NDIR=ndir, D_FIRST=d_first, D_LAST=d_last, SEGMENTED=mode == 2, REVERSE=reverse,
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=softplus,
                BLOCK_E=block_e, BLOCK_N=BLOCK_N, CKPT_TILES=cfg['CKPT_TILES'], STAGES=stages,
                num_warps=cfg['num_warps'], A_LOG=a_log, **_fused_args(fused, x.device))
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
    grads = call(scan_backward_op, _scan_backward, dout, *saved, *ctx.flags)
    return (*(None if t is None else g for t, g in zip((x, dt, A, B, C, D, z, dt_bias), grads)), None, None, None)


run_scan = autograd_op(scan_op, _scan_forward, _setup_scan, _scan_vjp)


def _scan(x, dt, A, B, C, D, z, dt_bias, softplus, reverse):
    save = needs_grad(x, dt, A, B, C, D, z, dt_bias)
    return run_scan(save, x, dt, A, B, C, D, z, dt_bias, softplus, reverse, save)[0]


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
