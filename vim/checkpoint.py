"""Released hustvl/Vim checkpoints: read, convert to safetensors. Unwrapping and adapting one to a model
(:func:`unwrap_state_dict`, :func:`checkpoint_filter_fn`) live in the model file, as in timm.

A released file is a training envelope ``{'model', 'model_ema', 'optimizer', 'lr_scheduler', 'epoch',
'scaler', 'args'}`` whose weights carry the parameter names of hustvl/Vim's ``models_mamba.py`` (the
names :class:`vim.VisionMamba` uses). timm's file loader picks the envelope entry itself; a hub load
hands us the whole envelope, so :func:`unwrap_state_dict` picks the same entry the same way.
"""
import argparse
import json
import os
import sys
import tempfile
from typing import Any, Dict, Optional

import torch

from .loading import CheckpointError, pretrained_checkpoint, read_checkpoint
from .vision_mamba import checkpoint_filter_fn, unwrap_state_dict

__all__ = ['CheckpointError', 'read_checkpoint', 'pretrained_checkpoint', 'convert_checkpoint', 'main']


def convert_checkpoint(src: str, dst: str, model_name: Optional[str] = None, use_ema: bool = True) -> Dict[str, Any]:
    """Convert a released Vim checkpoint to a safetensors file of plain weights (written atomically),
    checking that it loads into ``model_name`` when given. Returns a small report."""
    import timm
    from safetensors.torch import save_file

    state_dict = unwrap_state_dict(read_checkpoint(src), use_ema=use_ema)
    state_dict = {k: v.contiguous() for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    report = {'source': src, 'destination': dst, 'tensors': len(state_dict),
              'parameters': sum(v.numel() for v in state_dict.values())}
    if model_name:
        model = timm.create_model(model_name, pretrained=False, num_classes=state_dict['head.weight'].shape[0]
                                  if 'head.weight' in state_dict else 0)
        model.load_state_dict(checkpoint_filter_fn(dict(state_dict), model))
        report['model'] = model_name
    directory = os.path.dirname(os.path.abspath(dst))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix='.tmp')
    os.close(fd)
    try:
        save_file(state_dict, tmp, metadata={'format': 'pt', 'source': os.path.basename(src)})
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description='Convert a released hustvl/Vim checkpoint (.pth envelope) to a safetensors weight file '
                    'that loads with timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...)).')
    parser.add_argument('src', help='released checkpoint, e.g. vim_t_midclstok_76p1acc.pth')
    parser.add_argument('dst', help='output .safetensors path')
    parser.add_argument('--model', default=None, help='check that the weights load into this model, e.g. vim_tiny_patch16_224')
    parser.add_argument('--no-ema', action='store_true', help="take 'model' even when 'model_ema' is present")
    args = parser.parse_args(argv)
    import vim  # noqa: F401  registers the models
    try:
        report = convert_checkpoint(args.src, args.dst, args.model, use_ema=not args.no_ema)
    except (CheckpointError, KeyError, ValueError, RuntimeError) as err:
        # KeyError: not a Vim checkpoint; RuntimeError: an unknown --model, or weights that do not fit it
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f'vim-convert: error: {message}', file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0
