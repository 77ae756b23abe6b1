"""The mixer core on a GPU, its three ways: the default op (vim.kernels.triton_mixer: conv1d -> x_proj -> dt_proj
-> scan with a written-out backward, the conv output and dt kept), the same op with ``recompute=True`` (the scan
recomputes conv + SiLU and dt, in both passes), and the plain autograd composition of the separate Triton conv1d
and scan ops (reference.composed_mixer_core): forward and forward + backward GPU time (CUDA-graph replay), the
memory kept for the backward and the peak, and two floors: the bytes that must cross memory (over the copy
bandwidth measured in the same run) and the scan's exponentials (over the special-function units' rate at the
peak SM clock).

    python bench/bench_mixer.py [--shapes 0,1] [--eager] [--profile]

Vim-Tiny width (E = 384), bf16 activations and projection weights, fp32 conv, A, D, dt_bias; a few minutes on
an H100. Each shape also checks that the paths agree (output and input gradients). --profile adds, per shape
and path, the kernels of a forward + backward in launch order with their GPU times: where the mixer's time goes.
"""
import argparse
import functools
import platform

import torch
import triton

import bench_kernels
from bench_kernels import N, copy_bandwidth, fwd_bwd, mixer_core, timed
from profile_scan import kernel_times
from vim.kernels import reference, triton_ops

MUFU_PER_CLOCK = 16     # exp2 results per clock per SM on sm_90

SHAPES = [('Vim-Tiny 224px', 128, 197, 384), ('Vim-Tiny 1248px', 8, 6085, 384)]


def paths(batch, L, E):
    """({path: fn}, inputs); each fn(xz, conv_w, conv_b, w_x, w_dt, A_log, D, dt_bias) -> (batch, L, E)."""
    op, params = mixer_core(batch, L, E, official=False)

    def autograd(xz, conv_w, conv_b, w_x, w_dt, A_log, D, dt_bias):
        return reference.composed_mixer_core(
            triton_ops.bidirectional_conv1d, triton_ops.bidirectional_scan, xz[..., :E], xz[..., E:], conv_w, conv_b,
            w_x.transpose(1, 2), w_dt.transpose(1, 2), A_log, D, dt_bias)
    return {'op': op, 'recompute': functools.partial(op, recompute=True), 'autograd': autograd}, params


def floors(batch, L, E, bandwidth):
    """((forward, forward + backward) ms of the byte floor, the same of the exponential floor). Bytes: in_proj's
    output xz read and the output written; the backward reads dout and xz again and writes xz's gradient (bf16;
    every intermediate could stay on chip). Exponentials: one per state update and direction in the forward,
    two in the backward (it replays the forward's decays and takes the adjoint's)."""
    xz, out = batch * L * 2 * E * 2, batch * L * E * 2
    fwd_bytes, bwd_bytes = xz + out, out + xz + xz
    props = triton.runtime.driver.active.utils.get_device_properties(torch.cuda.current_device())
    exps_per_s = MUFU_PER_CLOCK * props['multiprocessor_count'] * props['sm_clock_rate'] * 1e3   # kHz
    updates = 2 * batch * L * E * N
    return ((fwd_bytes / bandwidth * 1e3, (fwd_bytes + bwd_bytes) / bandwidth * 1e3),
            (updates / exps_per_s * 1e3, 3 * updates / exps_per_s * 1e3))


def memory(fn, params):
    """(MiB kept for the backward after the forward, MiB peak above the inputs over forward + backward)."""
    leaves = [t.detach().requires_grad_() for t in params]
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn(*leaves)
    kept = torch.cuda.memory_allocated() - base - out.numel() * out.element_size()
    out.backward(torch.ones_like(out))
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    return kept / 2 ** 20, peak / 2 ** 20


def agree(fn, baseline, params):
    """Largest relative error of fn's output and input gradients against the baseline's."""
    results = []
    for f in (fn, baseline):
        leaves = [t.detach().requires_grad_() for t in params]
        out = f(*leaves)
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
        results.append([out, *grads])
    return max(((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()
               for a, b in zip(results[0], results[1]))


def kernel_table(fn, params, runs=5):
    """The kernels of a forward + backward in launch order, mean GPU ms each (profile_scan.kernel_times)."""
    kernels = kernel_times(fwd_bwd(fn, params), runs)
    lines = [f'GPU time {sum(ms for _, ms in kernels):.3f} ms per forward + backward, {len(kernels)} kernels',
             '| kernel | ms |', '| --- | --- |']
    return '\n'.join(lines + [f'| {name[:90]} | {ms:.3f} |' for name, ms in kernels])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--shapes', default=None, help='indices into SHAPES, e.g. 0,1 (default: all)')
    parser.add_argument('--eager', action='store_true', help='time Python calls instead of CUDA-graph replays')
    parser.add_argument('--profile', action='store_true', help="also list each path's kernels (torch.profiler)")
    args = parser.parse_args()
    bench_kernels.GRAPH = not args.eager
    print(f'{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, '
          f'python {platform.python_version()}; timing: {"CUDA events" if args.eager else "CUDA-graph replay"}')
    shapes = SHAPES if args.shapes is None else [SHAPES[int(i)] for i in args.shapes.split(',')]
    bandwidth = copy_bandwidth()
    print(f'copy bandwidth {bandwidth / 1e12:.2f} TB/s')
    print('| shape | path | fwd ms | fwd+bwd ms | kept for bwd MiB | peak fwd+bwd MiB | rel. diff vs op |')
    print('| --- | --- | --- | --- | --- | --- | --- |')
    for name, batch, L, E in shapes:
        fns, params = paths(batch, L, E)
        shape = f'{name} b{batch} L{L}'
        # Eager runs before any memory reading: the first one allocates cuBLAS's workspace (32 MiB on an H100),
        # which would otherwise count as kept by whichever path is measured first.
        diffs = {label: f'{agree(fn, fns["op"], params):.1e}' for label, fn in fns.items() if label != 'op'}
        times = {}
        for label, fn in fns.items():
            fwd = timed(lambda: fn(*params))
            fb = timed(fwd_bwd(fn, params))
            kept, peak = memory(fn, params)
            times[label] = (fwd, fb)
            print(f'| {shape} | {label} | {fwd:.3f} | {fb:.3f} | {kept:.1f} | {peak:.1f} | {diffs.get(label, "-")} |',
                  flush=True)
        of, ob = times['op']
        for label in ('recompute', 'autograd'):
            f, b = times[label]
            print(f'| {shape} | op speed-up over {label} | {f / of:.2f}x | {b / ob:.2f}x | | | |', flush=True)
        for label, (floor_f, floor_fb) in zip(('byte floor', 'exp floor'), floors(batch, L, E, bandwidth)):
            print(f'| {shape} | {label} (op at) | {floor_f:.3f} ({floor_f / of:.0%}) | '
                  f'{floor_fb:.3f} ({floor_fb / ob:.0%}) | | | |', flush=True)
        if args.profile:
            for label, fn in fns.items():
                print(f'\n{shape}, {label}:\n{kernel_table(fn, params)}\n', flush=True)


if __name__ == '__main__':
    main()
