"""AdamW with layer-wise lr decay and weight-decay groups; cosine schedule with linear warmup.

Parameter groups: the model's ``group_matcher(coarse=False)`` numbers the layers (stem first, head
last); with ``layer_decay = d`` a parameter of layer ``i`` out of ``L`` gets ``lr * d ** (L - 1 - i)``.
No weight decay for 1-D parameters (norms, biases, scalars) and for names that match any entry of
``model.no_weight_decay()`` (exact names or fnmatch patterns).
"""
import fnmatch
from typing import Dict, Iterable, List

import torch
from timm.models import group_parameters
from timm.scheduler import CosineLRScheduler

__all__ = ['param_groups', 'build_optimizer', 'build_scheduler']


def _no_decay(name: str, param: torch.Tensor, patterns: Iterable[str]) -> bool:
    return param.ndim <= 1 or name.endswith('.bias') or any(
        name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def param_groups(model: torch.nn.Module, weight_decay: float, layer_decay=None) -> List[Dict]:
    """Optimizer groups keyed by (layer, decay); each has ``lr_scale`` (timm schedulers apply it)."""
    patterns = set(model.no_weight_decay()) if hasattr(model, 'no_weight_decay') else set()
    if layer_decay is not None and hasattr(model, 'group_matcher'):
        layer_of = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
        num_layers = max(layer_of.values()) + 1
    else:
        layer_of, num_layers = {}, 1
    groups: Dict[str, Dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_of.get(name, num_layers - 1)
        decay = not _no_decay(name, param, patterns)
        key = f'layer_{layer}_{"decay" if decay else "no_decay"}'
        if key not in groups:
            scale = 1.0 if layer_decay is None else float(layer_decay) ** (num_layers - 1 - layer)
            groups[key] = {'params': [], 'param_names': [], 'weight_decay': weight_decay if decay else 0.0,
                           'lr_scale': scale}
        groups[key]['params'].append(param)
        groups[key]['param_names'].append(name)
    return list(groups.values())


def build_optimizer(model: torch.nn.Module, optim_cfg: Dict, lr: float) -> torch.optim.Optimizer:
    # group lr stays the base lr: the timm scheduler multiplies by each group's lr_scale
    groups = param_groups(model, float(optim_cfg['weight_decay']), optim_cfg['layer_decay'])
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(optim_cfg['betas']), eps=float(optim_cfg['eps']))


def build_scheduler(optimizer: torch.optim.Optimizer, schedule_cfg: Dict, steps_per_epoch: int) -> CosineLRScheduler:
    """Per-step cosine from the peak lr to ``min_lr`` after ``warmup_epochs`` of linear warmup.

    Call ``scheduler.step_update(global_step)`` before each optimizer step.
    """
    total = int(schedule_cfg['epochs']) * steps_per_epoch
    warmup = int(round(float(schedule_cfg['warmup_epochs']) * steps_per_epoch))
    warmup = min(warmup, max(total - 1, 0))
    return CosineLRScheduler(optimizer, t_initial=max(total - warmup, 1), lr_min=float(schedule_cfg['min_lr']),
                             warmup_t=warmup, warmup_lr_init=float(schedule_cfg['warmup_lr']),
                             warmup_prefix=True, t_in_epochs=False)
