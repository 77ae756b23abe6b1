"""Whole-model speed and memory: Vim against DeiT (timm, fused attention) of the same size, same run, same GPU.

    python bench/model_throughput.py [--out results.md] [--json results.json] [--modes eager,graph]
                                     [--no-train] [--compile-deit] [--models ...] [--with-reference]
                                     [--with-recompute]

bf16 autocast. Inference at 224 px batch 256, 1248 px batch 8 and 2048 px batch 2, as eager calls and as
replays of each model's forward recorded once as a CUDA graph (what the GPU does without the host's Python and
launches per call); --compile-deit adds DeiT under torch.compile beside them. Training steps (forward, backward,
fused AdamW, eager) at 224 px batch 128 and 1024 px batch 8. Images/s from the median of CUDA-event timed calls;
peak memory from torch.cuda.max_memory_allocated over the timed calls (model, optimizer state and activations).
Every row also gives the ratio to DeiT of the same size in the same mode. About 3 minutes on an H100.
"""
import argparse
import contextlib
import json
import platform
import statistics

import timm
import torch
import torch.nn.functional as F

import vim  # noqa: F401  registers vim_*
from report import emit, finish

INFERENCE = [(224, 256), (1248, 8), (2048, 2)]
TRAINING = [(224, 128), (1024, 8)]
MODELS = ['deit_tiny_patch16_224', 'vim_tiny_patch16_224', 'deit_small_patch16_224', 'vim_small_patch16_224']


def batch_times(fn, images, repeats=20):
    """Seconds per call of ``fn(images)`` (CUDA events), after 3 warm-up calls; call it inside inference mode
    (or not, for a training step) and autocast. Peak-memory statistics restart after the warm-up."""
    for _ in range(3):
        fn(images)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(images)
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


def train_step(model, images, num_classes=1000, compiled=False):
    """A callable doing one training step of ``model`` on ``images`` (cross entropy on fixed random labels,
    backward, fused AdamW); ``compiled`` compiles the model (fullgraph) first. Call it inside autocast."""
    model.train()
    fn = torch.compile(model, fullgraph=True) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    labels = torch.randint(0, num_classes, (images.shape[0],), device=images.device)

    def step(batch):
        F.cross_entropy(fn(batch), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def measure(name, size, batch, mode, backend=None, repeats=20, **kwargs):
    """(img/s, peak GiB) of one model (``kwargs`` for timm.create_model) in one mode: 'eager', 'graph' or
    'compile' inference, or 'train'."""
    model = timm.create_model(name, img_size=size, num_classes=1000, **kwargs).cuda().eval()
    images = torch.randn(batch, 3, size, size, device='cuda')
    backend_ctx = vim.kernels.use_backend(backend) if backend else contextlib.nullcontext()
    try:
        with backend_ctx:
            if mode == 'train':
                with torch.autocast('cuda', dtype=torch.bfloat16):
                    times = batch_times(train_step(model, images), images, max(repeats // 2, 5))
            else:
                fn = {'eager': lambda: model, 'graph': lambda: captured(model, images),
                      'compile': lambda: torch.compile(model, fullgraph=True)}
                with torch.inference_mode(), torch.autocast('cuda', dtype=torch.bfloat16,
                                                            cache_enabled=mode == 'eager'):
                    times = batch_times(fn[mode](), images, repeats)
        return batch / statistics.median(times), torch.cuda.max_memory_allocated() / 2 ** 30
    finally:
        del model
        torch._dynamo.reset()
        torch.cuda.empty_cache()


def environment():
    env = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, timm=timm.__version__,
               python=platform.python_version())
    with contextlib.suppress(ImportError):
        import triton
        env['triton'] = triton.__version__
    return env


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default=None, help='markdown table file')
    parser.add_argument('--json', default=None, help='every number as JSON')
    parser.add_argument('--models', default=','.join(MODELS), help='comma-separated timm model names')
    parser.add_argument('--modes', default='eager,graph', help='inference modes: eager, graph')
    parser.add_argument('--no-train', action='store_true', help='skip the training steps')
    parser.add_argument('--compile-deit', action='store_true', help='also time DeiT under torch.compile')
    parser.add_argument('--with-reference', action='store_true', help='also time Vim on the PyTorch reference path')
    parser.add_argument('--with-recompute', action='store_true',
                        help='also train Vim with mixer_recompute=True (the fused mixer: less memory, slower)')
    args = parser.parse_args()
    env = environment()
    lines = [', '.join(f'{k} {v}' for k, v in env.items()) + '; bf16 autocast', '',
             '| model | backend | mode | img size | batch | img/s | peak GiB | vs DeiT of the same size |',
             '| --- | --- | --- | --- | --- | --- | --- | --- |']
    cases = [(mode, size, batch) for mode in args.modes.split(',') for size, batch in INFERENCE]
    cases += [] if args.no_train else [('train', size, batch) for size, batch in TRAINING]
    rows = []
    for mode, size, batch in cases:
        deit = {}
        for name in args.models.split(','):
            is_deit = name.startswith('deit')
            runs = [(mode, None, {})]
            if is_deit and args.compile_deit and mode == 'graph':
                runs.append(('compile', None, {}))
            if not is_deit and args.with_reference:
                runs.append((mode, 'reference', {}))
            if not is_deit and args.with_recompute and mode == 'train':
                runs.append((mode, None, dict(mixer_recompute=True)))
            for run_mode, backend, kwargs in runs:
                label = 'fused attn' if is_deit else (backend or 'triton') + (', recompute' if kwargs else '')
                try:
                    ips, peak = measure(name, size, batch, run_mode, backend, **kwargs)
                except torch.cuda.OutOfMemoryError:
                    emit(lines, f'| {name} | {label} | {run_mode} | {size} | {batch} | OOM | | |')
                    continue
                family = name.split('_')[1]
                if is_deit and run_mode == mode:
                    deit[family] = ips
                ratio = f'{ips / deit[family]:.2f}x' if family in deit and not is_deit else ''
                rows.append(dict(model=name, backend=label, mode=run_mode, size=size, batch=batch,
                                 img_per_s=ips, peak_gib=peak))
                emit(lines, f'| {name} | {label} | {run_mode} | {size} | {batch} | {ips:,.0f} | {peak:.2f} '
                            f'| {ratio} |')
    finish(lines, args.out)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(env=env, rows=rows), f, indent=1)


if __name__ == '__main__':
    main()
