"""Whole-model inference throughput: Vim against DeiT (timm, fused attention), same run, same GPU.

    python bench/model_throughput.py [--out results.md] [--cuda-graph]

bf16 autocast, batch inference, eager mode (or, with --cuda-graph, replays of each model's forward recorded as a
CUDA graph: what the GPU does without the host's Python and launches per call); images/s from the median of
timed batches, peak memory from torch.cuda.max_memory_allocated. Shapes: 224 px at batch 256 and 1248 px at batch 8
(docs/performance.md).
"""
import argparse
import contextlib
import statistics

import timm
import torch

import vim  # noqa: F401  registers vim_*
from report import emit, finish

CASES = [(224, 256), (1248, 8)]
MODELS = ['deit_tiny_patch16_224', 'vim_tiny_patch16_224', 'deit_small_patch16_224', 'vim_small_patch16_224']


def batch_times(model, images, repeats=20):
    """Seconds per forward of ``model`` on ``images`` (CUDA events), after 3 warm-up calls; call it inside
    inference mode and autocast. Peak-memory statistics restart after the warm-up."""
    for _ in range(3):
        model(images)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(images)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times


def captured(model, images):
    """A callable that replays model(images) recorded once as a CUDA graph: the batch's kernels without the
    host's work per call. Warm-up on a side stream first, as torch.cuda.graph asks."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            model(images)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(images)
    return lambda _: graph.replay()


def throughput(name, size, batch, backend=None, repeats=20, cuda_graph=False):
    model = timm.create_model(name, img_size=size, num_classes=1000).cuda().eval()
    images = torch.randn(batch, 3, size, size, device='cuda')
    ctx = vim.kernels.use_backend(backend) if backend else contextlib.nullcontext()
    with ctx, torch.inference_mode(), torch.autocast('cuda', dtype=torch.bfloat16, cache_enabled=not cuda_graph):
        times = batch_times(captured(model, images) if cuda_graph else model, images, repeats)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    del model
    torch.cuda.empty_cache()
    return batch / statistics.median(times), peak


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--out', default=None)
    parser.add_argument('--with-reference', action='store_true', help='also time Vim on the PyTorch reference path')
    parser.add_argument('--cuda-graph', action='store_true',
                        help='time CUDA-graph replays of each model (GPU-bound) instead of eager calls')
    args = parser.parse_args()
    mode = 'CUDA-graph replay' if args.cuda_graph else 'eager'
    lines = [f'{torch.cuda.get_device_name()}, torch {torch.__version__}, timm {timm.__version__}; '
             f'timing: {mode}', '',
             '| model | backend | img size | batch | img/s | peak GiB | vs DeiT of the same size |',
             '| --- | --- | --- | --- | --- | --- | --- |']
    for size, batch in CASES:
        deit = {}
        for name in MODELS:
            backends = [None] if name.startswith('deit') else (['triton', 'reference'] if args.with_reference else ['triton'])
            for backend in backends:
                try:
                    ips, peak = throughput(name, size, batch, backend, cuda_graph=args.cuda_graph)
                except torch.cuda.OutOfMemoryError:
                    emit(lines, f'| {name} | {backend or "fused attn"} | {size} | {batch} | OOM | | |')
                    continue
                family = name.split('_')[1]
                if name.startswith('deit'):
                    deit[family] = ips
                ratio = f'{ips / deit[family]:.2f}x' if family in deit and not name.startswith('deit') else ''
                emit(lines, f'| {name} | {backend or "fused attn"} | {size} | {batch} | {ips:.0f} | {peak:.2f} | {ratio} |')
    finish(lines, args.out)


if __name__ == '__main__':
    main()
