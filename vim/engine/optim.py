"""AdamW with layer-wise lr decay and weight-decay groups; cosine schedule with linear warmup.

Parameter groups are timm's: with ``layer_decay = d``, :func:`timm.optim.param_groups_layer_decay` numbers
the layers by the model's ``group_matcher(coarse=False)`` (stem first, head last) and gives a parameter of
layer ``i`` out of ``L`` the lr scale ``d ** (L - 1 - i)``. No weight decay for 1-D parameters (norms,
biases, scalars) and for the names that match an entry of ``model.no_weight_decay()`` (exact names or
fnmatch patterns).
"""
import fnmatch
from typing import Dict, Iterable, List, Optional

import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler

__all__ = ['param_groups', 'no_weight_decay_names', 'build_optimizer', 'build_scheduler']


def no_weight_decay_names(model: torch.nn.Module) -> List[str]:
    """The parameter names that ``model.no_weight_decay()`` names or matches (its entries may be fnmatch
    patterns such as ``'layers.*.mixer.A_log'``), spelled out: every timm version takes exact names."""
    patterns = set(model.no_weight_decay()) if hasattr(model, 'no_weight_decay') else set()
    return [name for name, _ in model.named_parameters() if any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def param_groups(model: torch.nn.Module, weight_decay: float, layer_decay: Optional[float] = None,
                 no_weight_decay: Iterable[str] = ()) -> List[Dict]:
    """Optimizer groups, each with ``lr_scale`` (timm schedulers apply it) and ``param_names``; frozen
    parameters are left out. ``no_weight_decay``: further exact names to exempt from weight decay."""
    skip = no_weight_decay_names(model) + list(no_weight_decay)
    if layer_decay is None:  # two groups, not one per layer: fewer optimizer launches per step
        groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
        for group in groups:
            group['lr_scale'] = 1.0
    else:
        groups = param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip,
                                          layer_decay=float(layer_decay))
    names = {id(p): name for name, p in model.named_parameters()}
    for group in groups:
        group['param_names'] = [names[id(p)] for p in group['params']]
    return groups


def build_optimizer(model: torch.nn.Module, optim_cfg: Dict, lr: float) -> torch.optim.Optimizer:
    # group lr stays the base lr: the timm scheduler multiplies by each group's lr_scale
    groups = param_groups(model, float(optim_cfg['weight_decay']), optim_cfg['layer_decay'])
    fused = all(p.is_cuda for g in groups for p in g['params'])  # one launch per step, not one per tensor list
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(optim_cfg['betas']), eps=float(optim_cfg['eps']),
                             fused=fused or None)


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
