"""Time the Triton kernels against the PyTorch reference and, when installed, the official CUDA kernels
(mamba_ssm's selective_scan_cuda, causal_conv1d), at Vim's shapes; report each time as a fraction of the
memory floor (bytes that must cross device memory once / copy bandwidth measured in the same run).

    python bench/bench_kernels.py [--sweep | --sweep-only] [--no-reference] [--scan-only] [--shapes 0,1]
                                  [--sweep-rows 0,8] [--graph] [--out results.md]

Times are medians of triton.testing.do_bench (CUDA events) after warm-up. bf16 activations, fp32 parameters.
Those time back-to-back calls from Python, so an op whose host-side work (autograd, allocations, launches)
outlasts its GPU work is timed by the host: the forward+backward rows of the small ops (RMSNorm about 0.85 ms
at every shape in eager timing) look like that. --graph replays the calls from a CUDA graph instead
(triton.testing.do_bench_cudagraph), which leaves GPU time alone.
The official kernels take (batch, channels, L) activations; their inputs are transposed outside the timed region,
so their numbers exclude the layout copies the released Vim code pays for.
"""
import argparse
import platform

import torch
import torch.nn.functional as F
import triton

from vim.kernels import reference, triton_ops, triton_scan
from report import emit, finish

N = 16
SHAPES = [  # (name, batch, L, E)
    ('Vim-Tiny 224px', 128, 197, 384),
    ('Vim-Tiny 1248px', 8, 6085, 384),
    ('Vim-Small 224px', 128, 197, 768),
    ('Vim-Base 224px', 128, 197, 1536),
    ('Vim-Small 1248px', 8, 6085, 768),
]


GRAPH = False                                                           # --graph: replay from a CUDA graph


def timed(fn):
    if GRAPH:
        return triton.testing.do_bench_cudagraph(fn, rep=150, return_mode='median')
    return triton.testing.do_bench(fn, warmup=25, rep=150, return_mode='median')


def copy_bandwidth():
    """Bytes read + written per second by a large device-to-device copy."""
    src = torch.randn(1 << 28, device='cuda')
    dst = torch.empty_like(src)
    ms = timed(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def nbytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def scan_inputs(ndir, batch, L, E, dtype=torch.bfloat16):
    dev = dict(device='cuda')
    lead = (ndir,) if ndir else ()
    x = torch.randn(*lead, batch, L, E, **dev).to(dtype)
    dt = (torch.randn(*lead, batch, L, E, **dev) * 0.5 - 1.).to(dtype)
    A = -torch.exp(torch.randn(*lead, E, N, **dev) * 0.5)
    B, C = (torch.randn(*lead, batch, L, N, **dev).to(dtype) for _ in range(2))
    D, bias = torch.randn(*lead, E, **dev), torch.randn(*lead, E, **dev) * 0.5
    z = torch.randn(batch, L, E, **dev).to(dtype)
    return [x, dt, A, B, C, D, z, bias]


def fwd_bwd(fn, inputs):
    """Forward, then backward for every input that takes a gradient. The inputs' gradients are dropped before
    each run, as in training, where x, dt, z, B and C are activations whose gradients flow on: kept, autograd
    would add each run's gradients to the last ones, elementwise kernels that belong to neither implementation
    (0.11 ms of the b8 L6085 scan's, docs/performance.md)."""
    leaves = [t.detach().requires_grad_() for t in inputs]

    def run():
        for leaf in leaves:
            leaf.grad = None
        out = fn(*leaves)
        out.backward(torch.ones_like(out))
    return run


class OfficialScan(torch.autograd.Function):
    """mamba_ssm's CUDA selective scan through its extension: u, delta, z (b, E, L); B, C (b, N, L)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, bias):
        import selective_scan_cuda
        B, C = B.unsqueeze(1), C.unsqueeze(1)                           # one group: (b, 1, N, L)
        out, x, *rest = selective_scan_cuda.fwd(u, delta, A, B, C, D, z, bias, True)
        ctx.save_for_backward(u, delta, A, B, C, D, z, bias, x, out)
        return rest[0]

    @staticmethod
    def backward(ctx, dout):
        import selective_scan_cuda
        u, delta, A, B, C, D, z, bias, x, out = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, dbias, dz, *_ = selective_scan_cuda.bwd(
            u, delta, A, B, C, D, z, bias, dout.contiguous(), x, out, None, True, False)
        return du, ddelta, dA, dB.squeeze(1), dC.squeeze(1), dD, dz, dbias


def official_available():
    try:
        import causal_conv1d  # noqa: F401
        import selective_scan_cuda  # noqa: F401
    except ImportError as e:
        print(f'official kernels not available ({e})')
        return False
    return True


def channels_first(t):
    return t.transpose(-1, -2).contiguous()


def scan_rows(batch, L, E, bw, with_official, with_reference):
    """Single-direction scan (D, z, dt_bias, softplus) and the bidirectional scan, fwd and fwd+bwd."""
    rows = []
    x, dt, A, B, C, D, z, bias = scan_inputs(None, batch, L, E)
    fwd_bytes = nbytes(x, dt, z, B, C, x)                               # reads + the output y
    bwd_bytes = fwd_bytes + nbytes(x, dt, z, B, C)                      # + reads again, dout, and the grads
    ours = lambda *t: triton_ops.selective_scan(*t)                     # noqa: E731
    variants = [('triton', ours, [x, dt, A, B, C, D, z, bias])]
    if with_official:
        variants.append(('official', lambda u, d, A, B, C, D, z, b: OfficialScan.apply(u, d, A, B, C, D, z, b),
                         [channels_first(t) for t in (x, dt)] + [A] + [channels_first(t) for t in (B, C)]
                         + [D, channels_first(z), bias]))
    if with_reference:
        variants.append(('reference', reference.selective_scan, [x, dt, A, B, C, D, z, bias]))
    for name, fn, args in variants:
        rows.append(('scan fwd', name, timed(lambda: fn(*args)), fwd_bytes / bw * 1e3))
        rows.append(('scan fwd+bwd', name, timed(fwd_bwd(fn, args)), (fwd_bytes + bwd_bytes) / bw * 1e3))
    xb, dtb, Ab, Bb, Cb, Db, zb, biasb = scan_inputs(2, batch, L, E)
    fwd_bytes = nbytes(xb, dtb, zb, Bb, Cb, zb)
    bwd_bytes = fwd_bytes + nbytes(xb, dtb, zb, Bb, Cb)
    args = [xb, dtb, Ab, Bb, Cb, Db, zb, biasb]
    rows.append(('bidir scan fwd', 'triton', timed(lambda: triton_ops.bidirectional_scan(*args)), fwd_bytes / bw * 1e3))
    rows.append(('bidir scan fwd+bwd', 'triton', timed(fwd_bwd(triton_ops.bidirectional_scan, args)),
                 (fwd_bytes + bwd_bytes) / bw * 1e3))
    return rows


def mixer_core(batch, L, E, official):
    """conv1d (both directions) -> x_proj -> dt_proj -> scan (both) -> gate: the mixer between in_proj and
    out_proj. Returns (fn, inputs); fn(xz, *params) -> (batch, L, E)."""
    R = -(-E // 32)                                                   # dt_rank = ceil(D / 16), D = E / 2
    dev = dict(device='cuda')
    xz = torch.randn(batch, L, 2 * E, **dev).to(torch.bfloat16)
    conv_w, conv_b = torch.randn(2, E, 4, **dev) * 0.3, torch.randn(2, E, **dev) * 0.1
    w_x = (torch.randn(2, R + 2 * N, E, **dev) / E ** 0.5).to(torch.bfloat16)
    w_dt = (torch.randn(2, E, R, **dev) / R ** 0.5).to(torch.bfloat16)
    A_log = torch.randn(2, E, N, **dev) * 0.5
    D, dt_bias = torch.randn(2, E, **dev), torch.randn(2, E, **dev) * 0.5
    params = [xz, conv_w, conv_b, w_x, w_dt, A_log, D, dt_bias]

    def ours(xz, conv_w, conv_b, w_x, w_dt, A_log, D, dt_bias, recompute=False):     # as the model calls it
        return triton_ops.mixer_core(xz[..., :E], xz[..., E:], conv_w, conv_b, w_x.transpose(1, 2),
                                     w_dt.transpose(1, 2), A_log, D, dt_bias, recompute=recompute)

    def composed(xz, conv_w, conv_b, w_x, w_dt, A_log, D, dt_bias):
        from causal_conv1d import causal_conv1d_fn
        xzt = xz.transpose(1, 2)                                                # (b, 2E, L) as the released code
        A = -torch.exp(A_log.float())                                          # as the released mixer's forward
        outs = []
        for d in range(2):
            seq = xzt if d == 0 else xzt.flip(-1)
            x, z = seq[:, :E].contiguous(), seq[:, E:].contiguous()
            u = causal_conv1d_fn(x, conv_w[d].to(x.dtype), conv_b[d].to(x.dtype), activation='silu')
            dbc = F.linear(u.transpose(1, 2).reshape(batch * L, E), w_x[d])
            dt = F.linear(dbc[:, :R], w_dt[d]).view(batch, L, E).transpose(1, 2).contiguous()
            Bm = dbc[:, R:R + N].reshape(batch, L, N).transpose(1, 2).contiguous()
            Cm = dbc[:, R + N:].reshape(batch, L, N).transpose(1, 2).contiguous()
            y = OfficialScan.apply(u, dt, A[d], Bm, Cm, D[d], z, dt_bias[d])
            outs.append(y if d == 0 else y.flip(-1))
        return ((outs[0] + outs[1]) * 0.5).transpose(1, 2)
    return (composed if official else ours), params


def conv_rows(batch, L, E, bw, with_official):
    x = torch.randn(batch, L, E, device='cuda').to(torch.bfloat16)
    w, b = torch.randn(2, E, 4, device='cuda') * 0.3, torch.randn(2, E, device='cuda')
    fwd_bytes = nbytes(x) * 3                                           # x in, two outputs
    rows = [('conv1d fwd (both dirs)', 'triton', timed(lambda: triton_ops.bidirectional_conv1d(x, w, b)),
             fwd_bytes / bw * 1e3),
            ('conv1d fwd+bwd (both dirs)', 'triton', timed(fwd_bwd(triton_ops.bidirectional_conv1d, [x, w, b])),
             (2 * fwd_bytes + nbytes(x) * 2) / bw * 1e3)]
    if with_official:
        from causal_conv1d import causal_conv1d_fn

        def official(x, w, b):
            xt = x.transpose(1, 2)
            return torch.stack([causal_conv1d_fn(xt.contiguous() if d == 0 else xt.flip(-1).contiguous(),
                                                 w[d].to(x.dtype), b[d].to(x.dtype), activation='silu')
                                for d in range(2)])
        rows.append(('conv1d fwd (both dirs)', 'official', timed(lambda: official(x, w, b)), fwd_bytes / bw * 1e3))
        rows.append(('conv1d fwd+bwd (both dirs)', 'official', timed(fwd_bwd(official, [x, w, b])),
                     (2 * fwd_bytes + nbytes(x) * 2) / bw * 1e3))
    return rows


def norm_rows(batch, L, E, bw):
    Dm = E // 2
    x = torch.randn(batch, L, Dm, device='cuda').to(torch.bfloat16)
    res = torch.randn(batch, L, Dm, device='cuda')
    w = torch.randn(Dm, device='cuda')
    fwd_bytes = nbytes(x, res, x, res)

    def fb():
        xl, rl, wl = (t.detach().requires_grad_() for t in (x, res, w))
        out, new_res = triton_ops.add_rms_norm(xl, rl, wl)
        torch.autograd.backward((out, new_res), (torch.ones_like(out), torch.ones_like(new_res)))
    return [('add+rmsnorm fwd', 'triton', timed(lambda: triton_ops.add_rms_norm(x, res, w)), fwd_bytes / bw * 1e3),
            ('add+rmsnorm fwd+bwd', 'triton', timed(fb), (2 * fwd_bytes + nbytes(x, res)) / bw * 1e3)]


SWEEP = [  # (label, SCAN_CONFIG changes): each against the shape-picked defaults
    ('auto', {}),
    ('unsegmented', dict(SEG_MIN_PROGRAMS=1)),
    ('fwd BLOCK_E 16', dict(BLOCK_E_FWD=16)),
    ('fwd BLOCK_E 64', dict(BLOCK_E_FWD=64)),
    ('bwd BLOCK_E 8', dict(BLOCK_E_BWD=8)),
    ('bwd BLOCK_E 32', dict(BLOCK_E_BWD=32)),
    ('STAGES 1', dict(STAGES=1)),
    ('STAGES 2', dict(STAGES=2)),
    ('bwd STAGES 1', dict(STAGES_BWD=1)),
    ('bwd STAGES 2', dict(STAGES_BWD=2)),
    ('segmented fwd STAGES 1', dict(STAGES_SEGMENTED_FWD=1)),
    ('segmented bwd STAGES 1', dict(STAGES_SEGMENTED_BWD=1)),
    ('segmented bwd STAGES 2', dict(STAGES_SEGMENTED_BWD=2)),
    ('CKPT_TILES 8', dict(CKPT_TILES=8)),
    ('B, C widened per lane', dict(WIDEN_BC=False)),
    ('SEG_TARGET_FWD 3072', dict(SEG_TARGET_FWD=3072)),
    ('SEG_TARGET_BWD 6144', dict(SEG_TARGET_BWD=6144)),
]


def time_configs(config, op, inputs, changes):
    """For each (label, change) of ``changes``: (label, change, fwd ms, fwd+bwd ms) of op(*inputs) with the
    launch-config dict ``config`` updated by ``change``; ``config`` is restored afterwards."""
    saved = dict(config)
    try:
        for label, change in changes:
            config.update(saved)
            config.update(change)
            yield label, change, timed(lambda: op(*inputs)), timed(fwd_bwd(op, inputs))
    finally:
        config.update(saved)


def sweep(shapes, rows=None):
    """Scan launch configurations (bidirectional scan) at the given shapes: the SWEEP rows numbered in ``rows``
    (all when None)."""
    lines = ['| shape | config | fwd ms | fwd+bwd ms |', '| --- | --- | --- | --- |']
    for name, batch, L, E in shapes:
        changes = SWEEP if rows is None else [SWEEP[i] for i in rows]
        for label, _, f, fb in time_configs(triton_scan.SCAN_CONFIG, triton_ops.bidirectional_scan,
                                            scan_inputs(2, batch, L, E), changes):
            emit(lines, f'| {name} b{batch} L{L} E{E} bidir | {label} | {f:.3f} | {fb:.3f} |')
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sweep', action='store_true', help='also time scan launch configurations')
    parser.add_argument('--sweep-only', action='store_true', help='only time scan launch configurations')
    parser.add_argument('--no-reference', action='store_true', help='skip the (slow) PyTorch reference')
    parser.add_argument('--scan-only', action='store_true', help='only the scan rows (no conv1d, RMSNorm, mixer)')
    parser.add_argument('--shapes', default=None, help='comma-separated indices into SHAPES (default: all)')
    parser.add_argument('--sweep-rows', default=None, help='comma-separated indices into SWEEP (default: all)')
    parser.add_argument('--graph', action='store_true', help='time CUDA-graph replays (GPU time without host work)')
    parser.add_argument('--out', default=None, help='write the markdown tables here')
    args = parser.parse_args()
    global GRAPH
    GRAPH = args.graph
    torch.manual_seed(0)
    bw = copy_bandwidth()
    official = official_available()
    props = torch.cuda.get_device_properties(0)
    lines = [f'device: {props.name} ({props.multi_processor_count} SMs); torch {torch.__version__}, '
             f'triton {triton.__version__}, python {platform.python_version()}; '
             f"timing: {'CUDA-graph replay' if GRAPH else 'CUDA events around Python calls'}",
             f'copy bandwidth (read + write): {bw / 1e12:.2f} TB/s', '']
    shapes = SHAPES if args.shapes is None else [SHAPES[int(i)] for i in args.shapes.split(',')]
    if args.sweep or args.sweep_only:
        rows = None if args.sweep_rows is None else [int(i) for i in args.sweep_rows.split(',')]
        lines += sweep(shapes[:2], rows) + ['']
    if args.sweep_only:
        finish(lines, args.out)
        return
    lines += ['| shape | op | impl | ms | floor ms | floor / time | speed-up vs official |',
              '| --- | --- | --- | --- | --- | --- | --- |']
    for name, batch, L, E in shapes:
        rows = scan_rows(batch, L, E, bw, official, not args.no_reference and L < 1000)
        if not args.scan_only:
            rows += conv_rows(batch, L, E, bw, official) + norm_rows(batch, L, E, bw)
        for impl in ['triton'] + (['official'] if official else []) if not args.scan_only else []:
            fn, params = mixer_core(batch, L, E, impl == 'official')
            floor = nbytes(params[0]) * 2 / bw * 1e3                    # xz in, y out (E wide, half of xz)
            rows.append(('mixer core fwd', impl, timed(lambda: fn(*params)), floor))
            rows.append(('mixer core fwd+bwd', impl, timed(fwd_bwd(fn, params)), 3 * floor))
        official_ms = {op: ms for op, impl, ms, _ in rows if impl == 'official'}
        for op, impl, ms, floor in rows:
            ratio = f'{official_ms[op] / ms:.2f}x' if op in official_ms and impl != 'official' else ''
            emit(lines, f'| {name} b{batch} L{L} E{E} | {op} | {impl} | {ms:.3f} | {floor:.3f} | '
                         f'{floor / ms:.2f} | {ratio} |')
    finish(lines, args.out)


if __name__ == '__main__':
    main()
