"""Released hustvl/Vim checkpoints: unwrap, adapt to a model, convert to safetensors.

A released file is a training envelope ``{'model', 'model_ema', 'optimizer', 'lr_scheduler', 'epoch',
'scaler', 'args'}`` whose weights carry the parameter names of hustvl/Vim's ``models_mamba.py`` (the
names :class:`vim.VisionMamba` uses). timm's file loader picks the envelope entry itself; a hub load
hands us the whole envelope, so :func:`unwrap_state_dict` picks the same entry the same way.
"""
import argparse
import json
import math
import os
import socket
import sys
import tempfile
import urllib.parse
from typing import Any, Dict, Optional

import torch
from timm.layers import resample_patch_embed

# The released envelopes pickle an argparse.Namespace under 'args'. A Namespace is a plain attribute
# bag, safe for weights_only loads: recent timm allows it in its own loaders; registering it here serves
# older timm (recent timm's safe_globals context removes it again on exit, so our loader adds it itself).
torch.serialization.add_safe_globals([argparse.Namespace])

# A state dict is Vim's if it holds these (layer 0 of a bimamba-v2 model).
_SIGNATURE_KEYS = ('patch_embed.proj.weight', 'pos_embed', 'norm_f.weight', 'layers.0.mixer.A_b_log')


def unwrap_state_dict(checkpoint: Dict[str, Any], use_ema: bool = True) -> Dict[str, torch.Tensor]:
    """The weights inside a checkpoint, chosen as timm's ``load_state_dict`` chooses them
    (state_dict_ema, then model_ema, then state_dict, then model), with DDP 'module.' prefixes removed."""
    if not isinstance(checkpoint, dict):
        raise TypeError(f'Expected a checkpoint dict, got {type(checkpoint).__name__}.')
    for key, wanted in (('state_dict_ema', use_ema), ('model_ema', use_ema), ('state_dict', True), ('model', True)):
        if wanted and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in checkpoint.items()}


def _square_grid(num_patches: int) -> tuple:
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(
            f'Cannot infer the patch grid of a position embedding with {num_patches} patch entries: '
            f'it is not square.')
    return side, side


def checkpoint_filter_fn(state_dict: Dict[str, Any], model) -> Dict[str, torch.Tensor]:
    """Adapt a released (or our own) Vim state dict to ``model``: unwrap the envelope, resample the
    position embedding (keeping the middle class entry) and the patch kernel where sizes differ.
    Channel and class-count changes are left to timm's loader (first_conv / classifier in the cfg)."""
    state_dict = unwrap_state_dict(state_dict)
    missing = [k for k in _SIGNATURE_KEYS if k not in state_dict]
    if missing:
        raise KeyError(
            f'Not a Vision Mamba (bimamba v2) checkpoint: missing {missing}. '
            f'Its first keys are {list(state_dict)[:5]}.')
    from .vision_mamba import resample_pos_embed  # the model module imports this one

    pos_embed = state_dict['pos_embed']
    prefix = 1 if 'cls_token' in state_dict else 0
    if prefix != model.num_prefix_tokens:
        raise ValueError(
            f'Checkpoint has {prefix} class token(s), the model {model.num_prefix_tokens}: '
            f'create the model with class_token={bool(prefix)}.')
    new_grid = model.patch_embed.grid_size
    if pos_embed.shape[1] != model.pos_embed.shape[1]:
        old_grid = _square_grid(pos_embed.shape[1] - prefix)
        state_dict['pos_embed'] = resample_pos_embed(pos_embed, new_grid, old_grid, prefix)

    kernel = state_dict['patch_embed.proj.weight']
    if kernel.shape[-2:] != model.patch_embed.proj.weight.shape[-2:]:
        state_dict['patch_embed.proj.weight'] = resample_patch_embed(
            kernel, list(model.patch_embed.patch_size), verbose=False)
    return state_dict


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or does not belong to the model being built."""


def _why_unreadable(err: Exception) -> str:
    """torch.load's reason in one clause, without its advice to load with weights_only=False (that runs
    whatever code the file holds)."""
    text = str(err)
    if 'WeightsUnpickler error:' in text:
        detail = next((line.strip() for line in text.split('WeightsUnpickler error:', 1)[1].splitlines()
                       if line.strip()), '')
        if detail.startswith('Unsupported global:'):
            name = detail.split('GLOBAL', 1)[-1].split()[0] if 'GLOBAL' in detail else '?'
            return (f'it pickles a Python object ({name}) that a safe, weights-only load refuses: it is not a '
                    f'plain weights file (save the state dict alone, or convert it with vim-convert)')
        return f'it is not a PyTorch checkpoint ({detail.rstrip(".")})'
    first = text.split('. ')[0].splitlines()[0] if text else type(err).__name__
    return f'the file is truncated or not a PyTorch checkpoint ({first})'


def read_checkpoint(path: str) -> Dict[str, Any]:
    """torch.load (weights_only) or safetensors load, with a one-line :class:`CheckpointError` for a missing,
    truncated or foreign file."""
    if not os.path.isfile(path):
        where = 'is a directory, not a checkpoint file' if os.path.isdir(path) else 'does not exist'
        raise CheckpointError(f'checkpoint {path} {where}')
    size = os.path.getsize(path)
    try:
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file
            return load_file(path, device='cpu')
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:
        raise CheckpointError(f'cannot read checkpoint {path} ({size} bytes): {_why_unreadable(err)}') from None


def _hub_file(repo: str, filename: str) -> str:
    """The local path of ``filename`` of hub repository ``repo``: the cache, else a download. Without a network
    it fails at once (no retries) with an error that says how to pass a local file instead."""
    advice = (f"download {filename} from https://huggingface.co/{repo} where a network exists and pass it: "
              f"timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file='{filename}')), or "
              f"model.pretrained_file={filename} in a recipe")
    try:
        from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    except ImportError:
        raise CheckpointError(f'loading {repo}/{filename} from the Hugging Face hub needs huggingface_hub '
                              f'(pip install huggingface_hub); or {advice}') from None
    cached = try_to_load_from_cache(repo, filename)
    if isinstance(cached, str):
        return cached
    reason = 'HF_HUB_OFFLINE is set' if constants.HF_HUB_OFFLINE else None
    if reason is None:
        host = urllib.parse.urlparse(constants.ENDPOINT).hostname
        try:
            socket.getaddrinfo(host, 443)
        except OSError as err:
            reason = f'no network: cannot resolve {host} ({err.strerror or err})'
    if reason is None:
        try:
            return hf_hub_download(repo, filename)
        except Exception as err:
            reason = f'{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ""}'
    raise CheckpointError(f'cannot download {filename} from the Hugging Face hub repository {repo} ({reason}); {advice}')


def pretrained_checkpoint(pretrained_cfg: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The checkpoint a pretrained cfg names (its ``file``, else its hub file), read by :func:`read_checkpoint`,
    so every entry point (timm.create_model, training, evaluation, detection) fails the same clear way.
    None where the cfg names neither (a state dict or URL timm loads itself)."""
    if pretrained_cfg.get('state_dict') is not None:
        return None
    if pretrained_cfg.get('file'):
        return read_checkpoint(os.fspath(pretrained_cfg['file']))
    if pretrained_cfg.get('hf_hub_id') and pretrained_cfg.get('hf_hub_filename'):
        return read_checkpoint(_hub_file(pretrained_cfg['hf_hub_id'], pretrained_cfg['hf_hub_filename']))
    return None


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
