"""Command lines ``vim-train`` and ``vim-evaluate`` (also ``tools/train.py`` and ``tools/evaluate.py``)."""
import argparse
import json
import os
import sys
from typing import List, Optional

import yaml

from .config import ConfigError, load_config
from .state import CheckpointError, load_checkpoint

__all__ = ['train_main', 'evaluate_main']

_EXPECTED = (ConfigError, CheckpointError, FileNotFoundError, FileExistsError, ImportError, ValueError,
             FloatingPointError)

_OVERRIDES_HELP = ("config overrides as dotted.key=value, values parsed as YAML, e.g. schedule.epochs=10 "
                   "optim.lr=1e-3 data.root=/data/imagenet 'aug.scale=[0.5, 1.0]'")


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='vim-train', description='Train or fine-tune a Vim classifier from a YAML recipe. Under torchrun '
        '(torchrun --nproc_per_node=N tools/train.py ...) the same command trains with DDP.')
    p.add_argument('--config', '-c', help='recipe YAML (configs/*.yaml); optional with --resume')
    p.add_argument('--output', '-o', help='run directory (default: <output_dir>/<name>-<date-time>)')
    p.add_argument('--resume', help='continue a run: its directory (uses last.pth) or a checkpoint file')
    p.add_argument('--print-config', action='store_true', help='print the merged recipe and exit')
    p.add_argument('overrides', nargs='*', metavar='key=value', help=_OVERRIDES_HELP)
    return p


def _train_config(args) -> dict:
    if args.config:
        return load_config(args.config, args.overrides)
    if args.resume:  # the recipe the checkpoint was written with (which also checks that the file reads)
        saved = load_checkpoint(args.resume).get('config')
        if saved is None:
            raise ConfigError(f"{args.resume} carries no recipe (not written by vim-train): pass --config")
        return load_config(recipe=saved, overrides=args.overrides)
    raise ConfigError('give a recipe with --config (see configs/), or --resume a run')


def train_main(argv: Optional[List[str]] = None) -> int:
    args = _train_parser().parse_args(argv)
    try:
        cfg = _train_config(args)
        if args.print_config:
            yaml.safe_dump(cfg, sys.stdout, sort_keys=False)
            return 0
        from .trainer import train
        train(cfg, output=args.output, resume=args.resume)
    except _EXPECTED as err:
        print(f'vim-train: error: {err}', file=sys.stderr)
        return 1
    return 0


def _evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='vim-evaluate', description='Top-1/top-5 of a checkpoint (raw and EMA weights) on a validation set.')
    p.add_argument('--checkpoint', help='a run directory (best.pth, else last.pth) or a checkpoint file '
                   '(this package\'s or a released Vim one)')
    p.add_argument('--config', '-c', help='recipe YAML; default: the config saved in the checkpoint')
    p.add_argument('--output', '-o', help='write the results as JSON to this file')
    p.add_argument('overrides', nargs='*', metavar='key=value', help=_OVERRIDES_HELP)
    return p


def _pick_checkpoint(path: Optional[str]) -> Optional[str]:
    if path and os.path.isdir(path):
        for name in ('best.pth', 'last.pth'):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise FileNotFoundError(f"no best.pth or last.pth in {path}")
    return path


def evaluate_main(argv: Optional[List[str]] = None) -> int:
    args = _evaluate_parser().parse_args(argv)
    try:
        checkpoint = _pick_checkpoint(args.checkpoint)
        if args.config:
            cfg = load_config(args.config, args.overrides)
        elif checkpoint:
            saved = load_checkpoint(checkpoint).get('config')
            if saved is None:
                raise ConfigError(f"{checkpoint} carries no recipe (not written by vim-train): pass --config")
            cfg = load_config(recipe=saved, overrides=args.overrides)
        else:
            raise ConfigError('give --checkpoint, --config, or both')
        from .evaluate import run_evaluation
        results = run_evaluation(cfg, checkpoint, args.output)
    except _EXPECTED as err:
        print(f'vim-evaluate: error: {err}', file=sys.stderr)
        return 1
    if int(os.environ.get('RANK', '0')) == 0:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == '__main__':  # torchrun -m vim.engine.cli <train args>
    sys.exit(train_main())
