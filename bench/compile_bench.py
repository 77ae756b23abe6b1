"""Vim and DeiT (timm, fused attention) under eager, CUDA-graph replay and torch.compile, same run, same GPU.

    python bench/compile_bench.py --out compile_bench.json [--models vim_tiny_patch16_224,...] [--quick]
                                  [--modes eager,graph,...] [--no-train]

bf16 autocast, 224 px. Inference (torch.inference_mode): latency (ms, median of CUDA-event timed calls) at batch
1 and 8, throughput (img/s) at batch 256, in five modes: eager, CUDA-graph replay of the eager forward
(model_throughput.py's helpers), torch.compile (default), torch.compile(mode='reduce-overhead') and
torch.compile with inductor's freezing (compile-frozen: parameters as constants). Each compiled
mode's "compile s" is the wall time of its first call at every batch (tracing, inductor, autotuning). Training:
forward, backward and a fused AdamW step at batch 128, eager and with the model compiled, in img/s. The
markdown tables go to stdout, every number to the JSON file of --out. About 5 minutes on an H100 (--quick: the
tiny models, fewer repeats).
"""
import argparse
import json
import platform
import statistics
import time

import timm
import torch

import vim  # noqa: F401  registers vim_*
from model_throughput import batch_times, captured, train_step
from report import emit, finish

MODELS = ['vim_tiny_patch16_224', 'deit_tiny_patch16_224', 'vim_small_patch16_224', 'deit_small_patch16_224']
INFER_BATCHES = (1, 8, 256)
MODES = ('eager', 'graph', 'compile', 'reduce-overhead', 'compile-frozen')
COMPILED = ('compile', 'reduce-overhead', 'compile-frozen')


def timed_first_call(fn, images):
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn(images)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def inference(name, mode, repeats):
    """{batch: seconds per call} and the compile seconds of one model in one mode."""
    model = timm.create_model(name, num_classes=1000).cuda().eval()
    fn = model
    if mode in COMPILED:
        fn = torch.compile(model, mode='reduce-overhead' if mode == 'reduce-overhead' else None, dynamic=False,
                           fullgraph=True)
    times, compile_s = {}, 0.
    # freezing folds computations on parameters alone into constants: the mixers' stacked direction parameters,
    # which a compiled graph otherwise rebuilds on every call (eager inference keeps them between calls)
    with torch._inductor.config.patch(freezing=mode == 'compile-frozen'), torch.inference_mode(), \
            torch.autocast('cuda', dtype=torch.bfloat16, cache_enabled=mode == 'eager'):
        for batch in INFER_BATCHES:
            images = torch.randn(batch, 3, 224, 224, device='cuda')
            if fn is not model:
                compile_s += timed_first_call(fn, images)
            run = captured(model, images) if mode == 'graph' else fn
            times[batch] = statistics.median(batch_times(run, images, repeats if batch < 256 else repeats // 2))
    return times, compile_s


def training(name, compiled, steps, batch=128):
    """img/s of training steps (forward, backward, fused AdamW) and the seconds of the first (compiling) step."""
    model = timm.create_model(name, num_classes=1000).cuda()
    images = torch.randn(batch, 3, 224, 224, device='cuda')
    step = train_step(model, images, compiled=compiled)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        first = timed_first_call(step, images)
        times = batch_times(step, images, steps)
    return batch / statistics.median(times), first


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', default=','.join(MODELS), help='comma-separated timm model names')
    parser.add_argument('--quick', action='store_true', help='vim_tiny and deit_tiny only, fewer repeats')
    parser.add_argument('--out', default=None, help='JSON results file')
    parser.add_argument('--md', default=None, help='also write the markdown tables here')
    parser.add_argument('--modes', default=','.join(MODES), help=f'inference modes, of {",".join(MODES)}')
    parser.add_argument('--no-train', action='store_true', help='skip the training steps')
    args = parser.parse_args()
    modes = args.modes.split(',')
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f'unknown --modes {sorted(unknown)}; expected some of {MODES}')
    models = MODELS[:2] if args.quick else args.models.split(',')
    repeats, steps = (6, 5) if args.quick else (20, 10)
    env = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, timm=timm.__version__,
               python=platform.python_version())
    try:
        import triton
        env['triton'] = triton.__version__
    except ImportError:
        pass
    lines = [', '.join(f'{k} {v}' for k, v in env.items()) + '; bf16 autocast, 224 px', '',
             '| model | mode | batch 1 ms | batch 8 ms | batch 256 img/s | compile s |',
             '| --- | --- | --- | --- | --- | --- |']
    results = dict(env=env, inference=[], training=[])
    for name in models:
        for mode in modes:
            times, compile_s = inference(name, mode, repeats)
            results['inference'].append(dict(model=name, mode=mode, compile_s=compile_s,
                                             latency_ms={b: times[b] * 1e3 for b in INFER_BATCHES[:2]},
                                             img_per_s={256: 256 / times[256]}))
            compile_col = f'{compile_s:.1f}' if mode in COMPILED else ''
            emit(lines, f'| {name} | {mode} | {times[1] * 1e3:.2f} | {times[8] * 1e3:.2f} | {256 / times[256]:,.0f} '
                        f'| {compile_col} |')
            torch._dynamo.reset()
            torch.cuda.empty_cache()
    emit(lines, '')
    emit(lines, '| model | training step, batch 128 | img/s | first step s |')
    emit(lines, '| --- | --- | --- | --- |')
    for name in [] if args.no_train else models:
        for compiled in (False, True):
            ips, first = training(name, compiled, steps)
            mode = 'compile' if compiled else 'eager'
            results['training'].append(dict(model=name, mode=mode, batch=128, img_per_s=ips, first_step_s=first))
            emit(lines, f'| {name} | {mode} | {ips:,.0f} | {first:.1f} |')
            torch._dynamo.reset()
            torch.cuda.empty_cache()
    finish(lines, args.md)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()
