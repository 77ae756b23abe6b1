"""Top-1/top-5 evaluation, synchronised over processes, and the ``vim-evaluate`` workflow."""
import contextlib
import json
import logging
import os
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from .. import VisionMamba, checkpoint_filter_fn
from ..data import build_dataset, build_eval_loader, build_eval_transform, resolve_data_settings
from . import distributed as du
from .metrics import close_logging, setup_logging, topk_correct
from .model import build_model
from .state import FORMAT, check_compatible, load_checkpoint, load_model_state

__all__ = ['evaluate', 'autocast', 'run_evaluation']

logger = logging.getLogger('vim.train')

AMP_DTYPES = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}  # train.amp -> autocast dtype


def autocast(device: torch.device, amp: str, cache: bool = True):
    """Autocast to ``amp``'s dtype (``none``: full precision); ``cache=False`` for a CUDA-graph recording."""
    if AMP_DTYPES[amp] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp], cache_enabled=cache)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, amp: str = 'none') -> Dict[str, float]:
    """Loss, top-1 and top-5 (in %) over the whole set; sums are all-reduced, so every process agrees."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss, top1, top5, count, skipped
    for batch in loader:
        sums[4] += batch['skipped']
        if batch['images'] is None:
            continue
        images = batch['images'].to(device, non_blocking=True)
        targets = batch['targets'].to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        sums[0] += F.cross_entropy(logits, targets, reduction='sum').double()
        c1, c5 = topk_correct(logits, targets)
        sums[1] += c1
        sums[2] += c5
        sums[3] += len(targets)
    du.all_reduce_sum(sums)
    model.train(was_training)
    n = max(sums[3].item(), 1.0)
    return {'loss': sums[0].item() / n, 'top1': 100.0 * sums[1].item() / n, 'top5': 100.0 * sums[2].item() / n,
            'count': int(sums[3].item()), 'skipped': int(sums[4].item())}


def _adapt(model: torch.nn.Module, ckpt: Dict, key: str) -> Dict[str, torch.Tensor]:
    """The weights under ``key``; a checkpoint from elsewhere (a released Vim one) goes through the Vim
    checkpoint filter (position-embedding and patch-kernel resampling) as timm's loader would."""
    state = ckpt[key]
    if ckpt.get('format') != FORMAT and isinstance(model, VisionMamba):
        state = checkpoint_filter_fn(state, model)
    return state


def run_evaluation(cfg: Dict, checkpoint: Optional[str] = None, output: Optional[str] = None) -> Dict:
    """Evaluate a recipe's model (optionally loaded from ``checkpoint``) on its validation split.

    A training checkpoint yields results for the raw and (if saved) the EMA weights. A released Vim
    checkpoint (``{'model': ..., 'model_ema': ...}``) works the same way.
    """
    info = du.init_distributed(cfg['train']['device'])
    setup_logging(None, info.is_main)
    try:
        val_set = build_dataset(cfg['data'], 'val', seed=cfg['seed'])
        model, arch = build_model(cfg, val_set.num_classes, load_pretrained=checkpoint is None)
        states = {'raw': None}
        if checkpoint:
            ckpt = load_checkpoint(checkpoint)
            check_compatible(ckpt, arch, checkpoint)
            states = {'raw': _adapt(model, ckpt, 'model')}
            if ckpt.get('model_ema'):
                states['ema'] = _adapt(model, ckpt, 'model_ema')
        settings = resolve_data_settings(model, cfg['data'], cfg['aug'])
        if cfg['data']['img_size'] is None and 'img_size' in arch['kwargs']:
            settings['img_size'] = int(arch['kwargs']['img_size'])
        dcfg = {**cfg['data'], 'pin_memory': bool(cfg['data']['pin_memory']) and info.device.type == 'cuda'}
        loader = build_eval_loader(val_set, build_eval_transform(settings, cfg['aug']), dcfg,
                                   info.rank, info.world_size)
        model.to(info.device)
        results = {}
        for name, state in states.items():
            if state is not None:
                load_model_state(model, state, f'{checkpoint} [{name}]')
            results[name] = evaluate(model, loader, info.device, cfg['train']['amp'])
            if info.is_main:
                r = results[name]
                logger.info(f"{name}: top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  loss {r['loss']:.4f}  "
                            f"({r['count']} images, {r['skipped']} unreadable skipped)")
        if output and info.is_main:
            os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
            with open(output, 'w') as f:
                json.dump({'checkpoint': checkpoint, 'model': arch['model'], 'results': results}, f, indent=2)
        return results
    finally:
        close_logging()
        du.shutdown()
