"""Training throughput (images/s) of a training recipe on generated stand-in data.

Runs the recipe's model, optimiser, schedule, mixup/cutmix, EMA and AMP through the real training loop
(vim.engine.train) for two short epochs on a synthetic class-per-pattern dataset at the recipe's image
size, and reports the second epoch's images/s (the first pays for start-up, kernel compilation and
autotuning). Augmentation is the plain backend (resize + normalise), so no albumentations or dataset
download is needed; data loading is not the bottleneck at these sizes.

    python bench/train_throughput.py --out bench/results/train_throughput_h100.json
    python bench/train_throughput.py --config configs/cifar10_scratch_vim_tiny.yaml --steps 200 --batch-size 256
    python bench/train_throughput.py train.cuda_graph=true train.compile=inductor   # the fast modes
    python bench/train_throughput.py --tiny --steps 3 --device cpu      # a check that it runs, on a CPU

Multi-GPU: torchrun --nproc_per_node=N bench/train_throughput.py ... (images/s is the global rate).
"""
import argparse
import json
import os
import platform
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default=os.path.join(REPO, 'configs', 'cifar10_scratch_vim_tiny.yaml'))
    p.add_argument('--steps', type=int, default=100, help='optimiser steps per timed epoch')
    p.add_argument('--batch-size', type=int, default=None, help='per process (default: the recipe\'s)')
    p.add_argument('--amp', choices=['none', 'bf16', 'fp16'], default=None, help='default: the recipe\'s')
    p.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto')
    p.add_argument('--workers', type=int, default=8)
    p.add_argument('--tiny', action='store_true', help='a tiny model (CPU check of the script)')
    p.add_argument('--out', default=None, help='JSON results file (default: $OUT/train_throughput.json or ./)')
    p.add_argument('overrides', nargs='*', metavar='key=value', help='further recipe overrides')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import timm
    import torch

    from vim.engine import load_config, train

    base = load_config(args.config)
    batch = args.batch_size or base['data']['batch_size']
    img = base['data']['img_size'] or 224
    overrides = [
        'data.dataset=synthetic', f'data.synthetic_img_size={img}', f'data.num_workers={args.workers}',
        f'data.synthetic_train_size={batch * args.steps * int(os.environ.get("WORLD_SIZE", "1"))}',
        'data.synthetic_val_size=512', f'data.batch_size={batch}', 'data.repeated_aug=1', 'data.download=false',
        'aug.backend=none', 'schedule.epochs=2', 'schedule.warmup_epochs=1', f'train.max_steps_per_epoch={args.steps}',
        'train.plots=false', 'train.progress=log', f'train.log_every={max(args.steps // 4, 1)}',
        f'train.device={args.device}', 'model.pretrained=false', 'model.pretrained_file=null',
    ]
    if args.amp:
        overrides.append(f'train.amp={args.amp}')
    if args.tiny:
        overrides += ['model.kwargs.embed_dim=32', 'model.kwargs.depth=2']
    cfg = load_config(args.config, overrides + list(args.overrides))

    with tempfile.TemporaryDirectory() as tmp:
        summary = train(cfg, output=os.path.join(tmp, 'run'))
        rows = [json.loads(line) for line in open(os.path.join(tmp, 'run', 'metrics.jsonl'))]
    if int(os.environ.get('RANK', '0')) != 0:
        return 0
    epochs = [r for r in rows if r['type'] == 'epoch']
    cuda = torch.cuda.is_available() and cfg['train']['device'] != 'cpu'
    result = {
        'recipe': os.path.relpath(args.config, REPO), 'model': cfg['model']['name'],
        'model_kwargs': cfg['model']['kwargs'], 'img_size': img, 'batch_per_process': batch,
        'world_size': int(os.environ.get('WORLD_SIZE', '1')), 'amp': cfg['train']['amp'], 'steps': args.steps,
        'compile': cfg['train']['compile'], 'compile_mode': cfg['train']['compile_mode'],
        'cuda_graph': cfg['train']['cuda_graph'],
        'images_per_s': epochs[-1]['images_per_s'], 'first_epoch_images_per_s': epochs[0]['images_per_s'],
        'epoch_time_s': epochs[-1]['epoch_time_s'], 'final_train_loss': epochs[-1]['train_loss'],
        'device': torch.cuda.get_device_name() if cuda else platform.processor() or 'cpu',
        'peak_memory_gib': torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None,
        'torch': torch.__version__, 'timm': timm.__version__, 'python': sys.version.split()[0],
        'train_time_s': summary['train_time_s'],
    }
    out = args.out or os.path.join(os.environ.get('OUT', '.'), 'train_throughput.json')
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
        json.dump(result, f, indent=2)
    mode = ' '.join(f'{k}={result[k]}' for k in ('compile', 'compile_mode', 'cuda_graph') if result[k])
    print(f"{result['model']} {img}px batch {batch}x{result['world_size']} amp {result['amp']} {mode or 'eager'}: "
          f"{result['images_per_s']:.0f} images/s on {result['device']} -> {out}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
