"""Where the scan's GPU time goes, launch by launch: torch.profiler's kernel times for the scan's inference
forward, its forward with checkpoints, and its backward, at the benchmark shapes.

    python bench/profile_scan.py [--shapes 0,1] [--steps 20] [--out profile.md]

Each phase runs ``steps`` times under the profiler; its kernels are listed in launch order with their mean GPU
time (the segmented scan launches its summaries before its replay, see kernels/triton_scan.py). Single
direction and the bidirectional scan, bf16, inputs of bench_kernels.py.
"""
import argparse
import platform
import statistics

import torch
import triton
from torch.profiler import ProfilerActivity, profile

from bench_kernels import SHAPES, scan_inputs
from report import emit, finish
from vim.kernels import triton_ops, triton_scan


def kernel_times(run, steps):
    """[(kernel name, mean ms)] of the kernels ``run`` launches, in launch order (run launches the same kernels
    each time)."""
    run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            run()
        torch.cuda.synchronize()
    kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.time_range.start)
    per_step = len(kernels) // steps
    us = [[kernels[i + k * per_step].time_range.elapsed_us() for k in range(steps)] for i in range(per_step)]
    return [(kernels[i].name, statistics.mean(us[i]) / 1e3) for i in range(per_step)]


def phases(op, inputs):
    """(phase, fn) to profile: the inference forward (inputs without gradients), the forward that keeps
    checkpoints, the backward alone (the inputs' gradients dropped first, as bench_kernels.fwd_bwd does)."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    state = {}

    def forward_saving():
        state['out'] = op(*leaves)

    def backward():
        for leaf in leaves:
            leaf.grad = None
        state['out'].backward(state['grad'], retain_graph=True)
    forward_saving()
    state['grad'] = torch.ones_like(state['out'])
    yield 'forward (inference)', lambda: op(*inputs)
    yield 'forward (saving)', forward_saving
    forward_saving()
    yield 'backward', backward


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--shapes', default='0,1', help='comma-separated indices into bench_kernels.SHAPES')
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    lines = [f'device: {props.name}; torch {torch.__version__}, triton {triton.__version__}, '
             f'python {platform.python_version()}; torch.profiler kernel times, mean of {args.steps}', '',
             '| shape | scan | phase | kernel | ms |', '| --- | --- | --- | --- | --- |']
    for i in args.shapes.split(','):
        name, batch, L, E = SHAPES[int(i)]
        for label, ndir, op in (('one direction', None, triton_ops.selective_scan),
                                ('bidirectional', 2, triton_ops.bidirectional_scan)):
            inputs = scan_inputs(ndir, batch, L, E)
            (_, fwd_seg), (_, bwd_seg) = triton_scan.launch_config(batch, L, E, inputs[0].device)[1::2]
            for phase, fn in phases(op, inputs):
                times = kernel_times(fn, args.steps)
                segments = bwd_seg if phase == 'backward' else fwd_seg
                for kernel, ms in times:
                    emit(lines, f'| {name} b{batch} L{L} | {label}, {segments} segment(s) | {phase} | '
                                f'{kernel[:60]} | {ms:.3f} |')
                emit(lines, f'| {name} b{batch} L{L} | {label} | {phase} | **all** | '
                            f'{sum(ms for _, ms in times):.3f} |')
    finish(lines, args.out)


if __name__ == '__main__':
    main()
