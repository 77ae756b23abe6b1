"""Host time per call of each Triton op: what Python, autograd, the checks, the allocations and the launches
cost before the GPU sees any work. At a tiny shape the GPU finishes each call long before the host has issued
the next, so the wall time of many back-to-back calls divided by their number is the host's time per call.
When that exceeds an op's GPU time at a real shape, the op is host-bound in eager mode (bench_kernels.py
without --graph times it so).

    python bench/host_overhead.py [--profile] [--out results.md]
    python bench/host_overhead.py --wrapper-only        # any machine: the wrappers with their launches stubbed

--wrapper-only runs on CPU tensors with every kernel replaced by a no-op: the Python around the scan's launches
(forward, and forward + backward: the checks, shapes, allocations and autograd plumbing that every call pays on
top of Triton's own launch cost), and a whole Vim-Tiny training step, with its Triton launches and aten calls
counted (on a GPU each aten call that is not a view is a kernel launch).
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


def per_call_us(fn, calls=CALLS, warmup=20):
    """Wall us per call of ``fn`` after ``warmup`` calls (which compile and warm every cache); on a GPU the
    queued work is waited for at both ends."""
    sync = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
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


class _NoLaunch:
    """Stands in for a Triton kernel: ``kernel[grid](...)`` does nothing but count the launch."""

    def __init__(self, counts, name):
        self.counts, self.name = counts, name

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.counts[self.name] += 1
        return launch


def wrapper_only():
    """Host time with every Triton launch a no-op, on CPU tensors: the scan wrapper alone (forward with and without
    autograd, forward + backward), and one eager training step of Vim-Tiny at 32 px (4 patches, batch 2; the
    CPU's own work on such tensors is small next to the Python), with its launches and aten calls counted."""
    import collections
    import os

    import timm
    import torch.nn.functional as F
    from torch.utils._python_dispatch import TorchDispatchMode

    import vim
    from vim.kernels import triton_conv1d, triton_mixer, triton_rmsnorm, triton_scan, triton_weight_grad
    launches = collections.Counter()
    for module in (triton_conv1d, triton_mixer, triton_rmsnorm, triton_scan, triton_weight_grad):
        for name in dir(module):
            if name.endswith('_kernel'):
                setattr(module, name, _NoLaunch(launches, name))
    batch, L, E, N = 2, 16, 64, 16
    x, dt, z = (torch.randn(batch, L, E).to(torch.bfloat16) for _ in range(3))
    B, C = (torch.randn(batch, L, N).to(torch.bfloat16) for _ in range(2))
    inputs = [x, dt, -torch.rand(E, N), B, C, torch.randn(E), z, torch.randn(E)]
    leaves = [t.detach().requires_grad_() for t in inputs]
    for label, grad, run in (('forward, with autograd', True, lambda: triton_scan.selective_scan(*leaves)),
                             ('forward, no grad', False, lambda: triton_scan.selective_scan(*leaves)),
                             ('forward + backward', True, fwd_bwd(triton_scan.selective_scan, inputs))):
        with torch.set_grad_enabled(grad):
            us = per_call_us(run, 2000, warmup=100)
            print(f'selective_scan wrapper, launches stubbed, {label}: {us:.1f} us / call')

    os.environ['TRITON_INTERPRET'] = '1'                     # lets the 'triton' backend take CPU tensors
    model = timm.create_model('vim_tiny_patch16_224', img_size=32, num_classes=10).train()
    images, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))

    def step():
        with vim.kernels.use_backend('triton'):
            F.cross_entropy(model(images), labels).backward()
        model.zero_grad(set_to_none=True)

    class CountCalls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls[str(func)] += 1
            return func(*args, **(kwargs or {}))
    step()
    launches.clear()
    with CountCalls() as aten:
        step()
    n_launches = sum(launches.values())
    views = sum(n for op, n in aten.calls.items() if op.split('.')[1] in VIEW_OPS)
    print(f'vim_tiny training step (forward + backward, 32 px, batch 2), launches stubbed: '
          f'{per_call_us(step, 30, warmup=5) / 1e3:.1f} ms host; {n_launches} Triton launches, '
          f'{sum(aten.calls.values())} aten calls ({views} of them views)')
    print('  most frequent aten calls: ' + ', '.join(f'{op} {n}' for op, n in aten.calls.most_common(12)))


# aten ops that only make views or metadata (no kernel on a GPU)
VIEW_OPS = {'view', 'detach', 'select', 't', 'slice', 'transpose', 'permute', 'unsqueeze', 'squeeze', 'expand',
            '_unsafe_view', 'split', 'alias', 'as_strided', 'reshape', 'chunk', 'unbind'}


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
