"""Train a Faster R-CNN on a Vim backbone on generated shapes, then draw its detections.

    python tools/detect_demo.py --out detect_demo.png                       # a small CPU run, minutes
    python tools/detect_demo.py --model vim_small_patch16_224 --pretrained vim_s_midclstok_80p5acc.pth \
        --embed-dim 0 --depth 0 --size 256 320 --steps 1000 --device cuda --out demo.png
"""
import argparse
import json

import vim  # noqa: F401  (registers the Vim models with timm)
from vim.detection.demo import run_shapes_demo


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='vim_tiny_patch16_224')
    parser.add_argument('--pretrained', default='', help="checkpoint path, or 'default' for the model's weights")
    parser.add_argument('--embed-dim', type=int, default=48, help="trunk width; 0 keeps the model's own")
    parser.add_argument('--depth', type=int, default=2, help="trunk depth; 0 keeps the model's own")
    parser.add_argument('--out-channels', type=int, default=32, help='pyramid channels')
    parser.add_argument('--size', type=int, nargs=2, default=(96, 128), metavar=('H', 'W'))
    parser.add_argument('--random-background', action='store_true',
                        help='a random background colour per image (harder) instead of dark grey')
    parser.add_argument('--steps', type=int, default=120)
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--lr', type=float, default=2e-3)
    parser.add_argument('--layer-decay', type=float, default=1.0)
    parser.add_argument('--num-train', type=int, default=512, help='generated training images')
    parser.add_argument('--num-test', type=int, default=32, help='generated held-out images')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default='detect_demo.png', help='PNG of test images with boxes drawn')
    args = parser.parse_args(argv)

    backbone_kwargs = dict(out_channels=args.out_channels, drop_path_rate=0.0)
    if args.embed_dim:
        backbone_kwargs['embed_dim'] = args.embed_dim
    if args.depth:
        backbone_kwargs['depth'] = args.depth
    pretrained = True if args.pretrained == 'default' else (args.pretrained or False)
    result = run_shapes_demo(
        args.model, pretrained=pretrained, backbone_kwargs=backbone_kwargs, image_size=tuple(args.size),
        object_size=(min(args.size) * 5 // 24, min(args.size) // 2),
        background=None if args.random_background else (0.1, 0.1, 0.1), steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, layer_decay=args.layer_decay, num_train=args.num_train, num_test=args.num_test,
        device=args.device, output=args.out, seed=args.seed)
    print(json.dumps(result['metrics']))
    return result['metrics']


if __name__ == '__main__':
    main()
