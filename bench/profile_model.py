"""Where a model's step spends its GPU time: torch.profiler's per-kernel totals over a few steps, and the same
time grouped by what each kernel does (scan, conv1d, norm, matrix multiply, elementwise glue, optimizer).

    python bench/profile_model.py [--model vim_tiny_patch16_224] [--size 224] [--batch 256] [--steps 5]
                                  [--train] [--host]

bf16 autocast. Inference by default, timed as bench/model_throughput.py does; --train profiles training steps
instead (forward, backward, fused AdamW). Prints the median wall time per step, the GPU time per step (all
kernels' time summed), the grouped breakdown and the kernels sorted by their total GPU time; --host adds
cProfile's top functions of the host over the same steps.
"""
import argparse
import cProfile
import pstats
import statistics

import timm
import torch
from torch.profiler import ProfilerActivity, profile

import vim  # noqa: F401  registers vim_*
from model_throughput import batch_times, train_step

# Kernel-name fragments of each group, first match wins: our Triton kernels by their function names, cuBLAS and
# CUTLASS GEMMs by theirs, then PyTorch's own kernels.
GROUPS = [
    ('scan backward', ('_scan_bwd', '_dh_summary')),
    ('scan forward', ('_scan_fwd',)),
    ('conv1d', ('conv1d',)),
    ('add + RMSNorm', ('rms', 'norm')),
    ('matrix multiply', ('gemm', 'nvjet', 'xmma', 'cutlass', 'matmul', 'sm90_', 'wgmma')),
    ('optimizer', ('adam', 'multi_tensor', 'foreach')),
    ('attention', ('flash', 'attention', 'fmha')),
    ('reductions', ('reduce', 'sum')),
    ('copies and casts', ('copy', 'cat', 'transpose', 'cast')),
]


def group_of(kernel: str) -> str:
    name = kernel.lower()
    for group, fragments in GROUPS:
        if any(f in name for f in fragments):
            return group
    return 'other elementwise'


def grouped(events, steps):
    """{group: ms per step} from the profiler's kernel totals."""
    totals = {}
    for e in events:
        if e.self_device_time_total > 0:
            totals[group_of(e.key)] = totals.get(group_of(e.key), 0.) + e.self_device_time_total / 1e3 / steps
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='vim_tiny_patch16_224')
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--batch', type=int, default=256)
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--rows', type=int, default=15)
    parser.add_argument('--train', action='store_true', help='profile training steps instead of inference')
    parser.add_argument('--host', action='store_true', help='also profile the host side (cProfile) of a few steps')
    args = parser.parse_args()
    model = timm.create_model(args.model, img_size=args.size).cuda()
    images = torch.randn(args.batch, 3, args.size, args.size, device='cuda')
    if args.train:
        step, context = train_step(model, images), torch.autocast('cuda', dtype=torch.bfloat16)
    else:
        step, context = model.eval(), torch.inference_mode()
    with context, torch.autocast('cuda', dtype=torch.bfloat16):
        ms = [t * 1e3 for t in batch_times(step, images, repeats=10)]
        what = 'training step' if args.train else 'inference batch'
        print(f'{args.model} {args.size}px batch {args.batch}, {what}: {statistics.median(ms):.2f} ms '
              f'(min {min(ms):.2f}, max {max(ms):.2f}), {args.batch / statistics.median(ms) * 1e3:.0f} img/s')
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                step(images)
            torch.cuda.synchronize()
        if args.host:                                        # where the host's time per step goes
            host = cProfile.Profile()
            with host:
                for _ in range(args.steps):
                    step(images)
                torch.cuda.synchronize()
            pstats.Stats(host).sort_stats('tottime').print_stats(args.rows)
    events = prof.key_averages()
    gpu_ms = sum(e.self_device_time_total for e in events) / 1e3 / args.steps
    print(f'GPU time {gpu_ms:.2f} ms per step (kernels back to back: {args.batch / gpu_ms * 1e3:.0f} img/s); '
          f'the wall time above beyond it is the host')
    print('\n| kernels | ms per step | share |\n| --- | --- | --- |')
    for group, group_ms in grouped(events, args.steps).items():
        print(f'| {group} | {group_ms:.2f} | {group_ms / gpu_ms:.0%} |')
    print()
    print(events.table(sort_by='cuda_time_total', row_limit=args.rows, max_name_column_width=60))


if __name__ == '__main__':
    main()
