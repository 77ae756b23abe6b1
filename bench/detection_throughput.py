"""Faster R-CNN training-step throughput on a Vim backbone (generated images, one fixed batch).

    python bench/detection_throughput.py --model vim_small_patch16_224 --batch-size 8 --size 800 1216 \
        --amp bf16 --out bench/results/detection_throughput_h100.json

CPU check with a tiny trunk:
    python bench/detection_throughput.py --device cpu --model vim_tiny_patch16_224 --embed-dim 32 --depth 2 \
        --batch-size 2 --size 128 192 --steps 2 --warmup 1 --amp none
"""
import argparse
import json
import os

import vim  # noqa: F401  (registers the Vim models with timm)
from vim.detection.benchmark import AMP_DTYPES, benchmark_training_steps


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='vim_small_patch16_224')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--size', type=int, nargs=2, default=(800, 1216), metavar=('H', 'W'))
    parser.add_argument('--steps', type=int, default=20, help='timed steps')
    parser.add_argument('--warmup', type=int, default=5, help='untimed steps first (compilation, autotuning)')
    parser.add_argument('--amp', choices=sorted(AMP_DTYPES), default='bf16')
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--grad-checkpointing', action='store_true')
    parser.add_argument('--embed-dim', type=int, help='override the trunk width (small CPU checks)')
    parser.add_argument('--depth', type=int, help='override the trunk depth (small CPU checks)')
    parser.add_argument('--out', help='write the result as JSON here')
    args = parser.parse_args(argv)

    backbone_kwargs = {k: v for k, v in dict(embed_dim=args.embed_dim, depth=args.depth).items() if v is not None}
    result = benchmark_training_steps(
        args.model, batch_size=args.batch_size, image_size=tuple(args.size), steps=args.steps, warmup=args.warmup,
        amp=args.amp, device=args.device, grad_checkpointing=args.grad_checkpointing, backbone_kwargs=backbone_kwargs)
    memory = f", peak {result['peak_memory_gib']:.2f} GiB" if 'peak_memory_gib' in result else ''
    print(f"{result['model']} Faster R-CNN train, batch {args.batch_size} at {args.size[0]}x{args.size[1]}, "
          f"amp {args.amp}, {result['device']}: median step {result['median_step_s'] * 1000:.1f} ms, "
          f"{result['images_per_s']:.2f} img/s{memory}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == '__main__':
    main()
