"""Training checkpoints: atomic writes, validated loads, and the RNG state that makes a resume exact.

A checkpoint keeps the envelope of the released Vim checkpoints (``model``, ``model_ema``,
``optimizer``) so timm's file loader reads it, plus what a resume needs: scheduler, scaler, epoch,
step, the position inside the epoch, best metric, every process's RNG state and the resolved config.
Everything is stored as tensors and plain Python values, so it loads with ``weights_only=True``.
"""
import os
import random
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..checkpoint import CheckpointError, read_checkpoint

__all__ = ['CheckpointError', 'FORMAT', 'save_atomic', 'load_checkpoint', 'check_compatible',
           'load_model_state', 'capture_rng', 'restore_rng']

# Training checkpoints. 2: the Vim mixers hold both directions in each parameter, so the optimizer state of a
# format-1 run (one parameter per direction) does not map onto a new run's; its weights still load.
FORMAT = 'vim-train/2'


def save_atomic(obj: Dict[str, Any], path: str) -> None:
    """Write ``obj`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    A crash at any moment leaves either the old file or the new one, never a partial file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f'.{os.path.basename(path)}.tmp.{os.getpid()}')
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    try:  # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Read a checkpoint file, with a clear error for a missing, truncated or foreign file."""
    if os.path.isdir(path):
        path = os.path.join(path, 'last.pth')
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or 'model' not in ckpt:
        got = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a training checkpoint: expected a dict with a 'model' entry, got {got}")
    return ckpt


def check_compatible(ckpt: Dict[str, Any], arch: Dict[str, Any], path: str = 'checkpoint') -> None:
    """Refuse a training checkpoint written for another architecture (model name, classes, kwargs)."""
    saved = ckpt.get('arch')
    if saved is None:
        return
    diffs = [f"{k}: checkpoint has {saved.get(k)!r}, this run builds {arch.get(k)!r}"
             for k in sorted(set(saved) | set(arch)) if saved.get(k) != arch.get(k)]
    if diffs:
        raise CheckpointError(f"{path} was written for a different model:\n  " + '\n  '.join(diffs))


def load_model_state(model: torch.nn.Module, state: Dict[str, torch.Tensor], what: str = 'checkpoint') -> None:
    """``load_state_dict(strict=True)`` with an error that lists missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: model expects {tuple(own[k].shape)}, {what} has {tuple(state[k].shape)}"
              for k in own if k in state and hasattr(state[k], 'shape') and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        lines = []
        if missing:
            lines.append(f"{len(missing)} missing keys, e.g. {missing[:5]}")
        if unexpected:
            lines.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:5]}")
        lines.extend(shapes[:10])
        raise CheckpointError(f"{what} does not fit model {type(model).__name__}:\n  " + '\n  '.join(lines))
    model.load_state_dict(state, strict=True)


def capture_rng() -> Dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) RNG states, as tensors and plain values."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        'python': [py_version, list(py_state), py_gauss],
        'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: Dict[str, Any]) -> None:
    version, py_state, gauss = state['python']
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])


def pick_rng(states: Optional[List[Dict[str, Any]]], rank: int, world_size: int) -> Optional[Dict[str, Any]]:
    """The RNG state saved by this rank, or None if the checkpoint came from another world size."""
    if not states or len(states) != world_size:
        return None
    return states[rank]
