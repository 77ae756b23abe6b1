#!/usr/bin/env python3
"""Train or fine-tune a Vim classifier from a YAML recipe (see configs/ and docs/training.md).

    python tools/train.py --config configs/quickstart_digits.yaml
    torchrun --nproc_per_node=8 tools/train.py --config configs/imagenet_vim_tiny.yaml data.root=/data/imagenet
"""
import sys

from vim.engine.cli import train_main

if __name__ == '__main__':
    sys.exit(train_main())
