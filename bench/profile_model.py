"""Where a model's forward spends its GPU time: torch.profiler's per-kernel totals over a few batches.

    python bench/profile_model.py [--model vim_tiny_patch16_224] [--size 224] [--batch 256] [--steps 5] [--host]

bf16 autocast inference, timed as bench/model_throughput.py does; prints the median wall time per batch, the
GPU time per batch (all kernels' time summed) and the kernels sorted by their total GPU time; --host adds
cProfile's top functions of the host over the same batches.
"""
import argparse
import cProfile
import pstats
import statistics

import timm
import torch
from torch.profiler import ProfilerActivity, profile

import vim  # noqa: F401  registers vim_*
from model_throughput import batch_times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='vim_tiny_patch16_224')
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--batch', type=int, default=256)
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--rows', type=int, default=15)
    parser.add_argument('--host', action='store_true', help='also profile the host side (cProfile) of a few batches')
    args = parser.parse_args()
    model = timm.create_model(args.model, img_size=args.size).cuda().eval()
    images = torch.randn(args.batch, 3, args.size, args.size, device='cuda')
    with torch.inference_mode(), torch.autocast('cuda', dtype=torch.bfloat16):
        ms = [t * 1e3 for t in batch_times(model, images, repeats=10)]
        print(f'{args.model} {args.size}px batch {args.batch}: {statistics.median(ms):.2f} ms per batch '
              f'(min {min(ms):.2f}, max {max(ms):.2f}), {args.batch / statistics.median(ms) * 1e3:.0f} img/s')
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                model(images)
            torch.cuda.synchronize()
        if args.host:                                        # where the host's time per batch goes
            host = cProfile.Profile()
            with host:
                for _ in range(args.steps):
                    model(images)
                torch.cuda.synchronize()
            pstats.Stats(host).sort_stats('tottime').print_stats(args.rows)
    events = prof.key_averages()
    gpu_ms = sum(e.self_device_time_total for e in events) / 1e3 / args.steps
    print(f'GPU time {gpu_ms:.2f} ms per batch (kernels back to back: {args.batch / gpu_ms * 1e3:.0f} img/s); '
          f'the wall time above beyond it is the host')
    print(events.table(sort_by='cuda_time_total', row_limit=args.rows, max_name_column_width=60))


if __name__ == '__main__':
    main()
