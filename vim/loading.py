"""Reading weight files: a local checkpoint (torch, weights only, or safetensors) or a Hugging Face hub file,
with one clear :class:`CheckpointError` line for a missing, truncated or foreign file and for a hub without a
network. Every entry point reads weights through here; it knows files, not models."""
import argparse
import os
import socket
import urllib.parse
from typing import Any, Dict, Optional

import torch

__all__ = ['CheckpointError', 'read_checkpoint', 'pretrained_checkpoint']

# The released envelopes pickle an argparse.Namespace under 'args'. A Namespace is a plain attribute
# bag, safe for weights_only loads: recent timm allows it in its own loaders; registering it here serves
# older timm (recent timm's safe_globals context removes it again on exit, so our loader adds it itself).
torch.serialization.add_safe_globals([argparse.Namespace])


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
