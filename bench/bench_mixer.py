"""The mixer core on a GPU, fused (``recompute=True``, vim.kernels.triton_mixer: the scan recomputes conv + SiLU
and dt) against the default unfused composition (conv1d -> x_proj -> dt_proj -> scan, each op its own launch):
forward and forward + backward GPU time (CUDA-graph replay), the memory kept for the backward and the peak, and
two floors: the bytes that must cross memory (over the copy bandwidth measured in the same run) and the scan's
exponentials (over the special-function units' rate at the peak SM clock).

    python bench/bench_mixer.py [--shapes 0,1] [--eager]

Vim-Tiny width (E = 384), bf16 activations and projection weights, fp32 conv, A, D, dt_bias; a few minutes on
an H100. Each shape also checks that the two paths agree (output and input gradients).
"""
import argparse
import functools
import platform

import torch
import triton

import bench_kernels
from bench_kernels import N, copy_bandwidth, fwd_bwd, mixer_core, timed

MUFU_PER_CLOCK = 16     # exp2 results per clock per SM on sm_90

SHAPES = [('Vim-Tiny 224px', 128, 197, 384), ('Vim-Tiny 1248px', 8, 6085, 384)]


def paths(batch, L, E):
    """(unfused fn, fused fn, inputs); each fn(xz, conv_w, conv_b, w_x, w_dt, A, D, dt_bias) -> (batch, L, E)."""
    unfused, params = mixer_core(batch, L, E, official=False)
    return unfused, functools.partial(unfused, recompute=True), params


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


def agree(unfused, fused, params):
    """Largest relative error of the fused path's output and input gradients against the unfused path's."""
    results = []
    for fn in (unfused, fused):
        leaves = [t.detach().requires_grad_() for t in params]
        out = fn(*leaves)
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
        results.append([out, *grads])
    return max(((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()
               for a, b in zip(results[1], results[0]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--shapes', default=None, help='indices into SHAPES, e.g. 0,1 (default: all)')
    parser.add_argument('--eager', action='store_true', help='time Python calls instead of CUDA-graph replays')
    args = parser.parse_args()
    bench_kernels.GRAPH = not args.eager
    print(f'{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, '
          f'python {platform.python_version()}; timing: {"CUDA events" if args.eager else "CUDA-graph replay"}')
    shapes = SHAPES if args.shapes is None else [SHAPES[int(i)] for i in args.shapes.split(',')]
    bandwidth = copy_bandwidth()
    print(f'copy bandwidth {bandwidth / 1e12:.2f} TB/s')
    print('| shape | path | fwd ms | fwd+bwd ms | kept for bwd MiB | peak fwd+bwd MiB | rel. diff vs unfused |')
    print('| --- | --- | --- | --- | --- | --- | --- |')
    for name, batch, L, E in shapes:
        unfused, fused, params = paths(batch, L, E)
        diff = agree(unfused, fused, params)
        times = {}
        for label, fn in (('unfused', unfused), ('fused', fused)):
            fwd = timed(lambda: fn(*params))
            fb = timed(fwd_bwd(fn, params))
            kept, peak = memory(fn, params)
            times[label] = (fwd, fb)
            print(f'| {name} b{batch} L{L} | {label} | {fwd:.3f} | {fb:.3f} | {kept:.1f} | {peak:.1f} | '
                  f'{"-" if label == "unfused" else f"{diff:.1e}"} |', flush=True)
        (uf, ub), (ff, fb) = times['unfused'], times['fused']
        print(f'| {name} b{batch} L{L} | fused speed-up | {uf / ff:.2f}x | {ub / fb:.2f}x | | | |', flush=True)
        for label, (floor_f, floor_fb) in zip(('byte floor', 'exp floor'), floors(batch, L, E, bandwidth)):
            print(f'| {name} b{batch} L{L} | {label} (unfused at) | {floor_f:.3f} ({floor_f / uf:.0%}) | '
                  f'{floor_fb:.3f} ({floor_fb / ub:.0%}) | | | |', flush=True)


if __name__ == '__main__':
    main()
