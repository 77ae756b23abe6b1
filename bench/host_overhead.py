"""Host time per call of each Triton op: what Python, autograd, the checks, the allocations and the launches
cost before the GPU sees any work. At a tiny shape the GPU finishes each call long before the host has issued
the next, so the wall time of many back-to-back calls divided by their number is the host's time per call.
When that exceeds an op's GPU time at a real shape, the op is host-bound in eager mode (bench_kernels.py
without --graph times it so).

    python bench/host_overhead.py [--profile] [--out results.md]
    python bench/host_overhead.py --wrapper-only        # any machine: the scan wrapper with its launches stubbed

--wrapper-only times the Python around the scan's launches on CPU tensors, the kernels replaced by no-ops: the
checks, shapes, allocations and autograd plumbing that every call pays on top of Triton's own launch cost.
--profile also prints cProfile's top entries for the forward+backward of the bidirectional scan and of
add_rms_norm, with autograd's device threads off so that the backward runs where cProfile sees it.
"""
import argparse
import cProfile
import platform
import pstats
import time

import torch
import triton

from vim.kernels import triton_ops
from bench_kernels import fwd_bwd
from report import emit, finish

CALLS = 300


def per_call_us(fn, calls=CALLS):
    for _ in range(20):                                     # compile and warm every cache first
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def ops(batch=2, L=16, E=64, N=16):
    dev = dict(device='cuda')
    bf = torch.bfloat16
    x, dt, z = (torch.randn(batch, L, E, **dev).to(bf) for _ in range(3))
    B, C = (torch.randn(batch, L, N, **dev).to(bf) for _ in range(2))
    A, D, bias = -torch.rand(E, N, **dev), torch.randn(E, **dev), torch.randn(E, **dev)
    scan = [x, dt, A, B, C, D, z, bias]
    bidir = [torch.stack([t, t]) for t in (x, dt, A, B, C, D)] + [z, torch.stack([bias, bias])]
    w, b = torch.randn(2, E, 4, **dev), torch.randn(2, E, **dev)
    res, nw = torch.randn(batch, L, E, **dev), torch.randn(E, **dev)
    return [('selective_scan', triton_ops.selective_scan, scan),
            ('bidirectional_scan', triton_ops.bidirectional_scan, bidir),
            ('bidirectional_conv1d', triton_ops.bidirectional_conv1d, [x, w, b]),
            ('add_rms_norm', lambda *t: triton_ops.add_rms_norm(*t)[0], [x, res, nw])]


def wrapper_only():
    """us per scan forward (with and without autograd) with both kernel launches replaced by no-ops."""
    from vim.kernels import triton_scan

    class NoLaunch:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None
    triton_scan._scan_fwd_kernel = triton_scan._scan_bwd_kernel = NoLaunch()
    batch, L, E, N = 2, 16, 64, 16
    x, dt, z = (torch.randn(batch, L, E).to(torch.bfloat16) for _ in range(3))
    B, C = (torch.randn(batch, L, N).to(torch.bfloat16) for _ in range(2))
    leaves = [t.requires_grad_() for t in (x, dt, -torch.rand(E, N), B, C, torch.randn(E), z, torch.randn(E))]
    run = (lambda: triton_scan.selective_scan(*leaves))
    for label, grad in (('with autograd', True), ('no grad', False)):
        with torch.set_grad_enabled(grad):
            for _ in range(100):
                run()
            start = time.perf_counter()
            for _ in range(2000):
                run()
            print(f'selective_scan forward wrapper, launches stubbed, {label}: '
                  f'{(time.perf_counter() - start) / 2000 * 1e6:.1f} us / call')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--profile', action='store_true')
    parser.add_argument('--wrapper-only', action='store_true')
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    if args.wrapper_only:
        return wrapper_only()
    lines = [f'device: {torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}, '
             f'python {platform.python_version()}; {CALLS} back-to-back calls at batch 2, L 16, E 64', '',
             '| op | host us / call, fwd | host us / call, fwd+bwd |', '| --- | --- | --- |']
    for name, fn, inputs in ops():
        emit(lines, f'| {name} | {per_call_us(lambda: fn(*inputs)):.1f} | {per_call_us(fwd_bwd(fn, inputs)):.1f} |')
    empty = torch.empty(1, device='cuda')
    emit(lines, f'| (torch.empty, for scale) | {per_call_us(lambda: torch.empty_like(empty)):.1f} | |')
    finish(lines, args.out)
    if args.profile:
        torch.autograd.set_multithreading_enabled(False)
        for name, fn, inputs in (ops()[1], ops()[3]):
            run = fwd_bwd(fn, inputs)
            print(f'{name} fwd+bwd, autograd in the calling thread: {per_call_us(run):.1f} us / call')
            profiler = cProfile.Profile()
            profiler.runcall(lambda: [run() for _ in range(CALLS)])
            pstats.Stats(profiler).sort_stats('tottime').print_stats(20)


if __name__ == '__main__':
    main()
