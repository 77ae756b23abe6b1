"""Freezing and layer-wise learning-rate decay for fine-tuning a detector on a Vim backbone.

Both work on the trunk's timm ``group_matcher``: group 0 is the stem (``patch_embed``, ``pos_embed``,
``cls_token``), groups 1 .. depth are the blocks, and the final norm joins the last block (timm's
convention). Every parameter outside the trunk (pyramid, RPN, RoI heads) sits above the last block.
"""
import fnmatch
from typing import Collection, Dict, Iterable, List, Optional

from timm.models import group_parameters
from torch import nn

from .backbone import VimDetectionBackbone, trunk_blocks

__all__ = ['find_detection_backbone', 'freeze_backbone', 'param_groups_layer_decay']


def _matches(name: str, patterns: Collection[str]) -> bool:
    """``name`` equals one of ``patterns`` or matches it as an fnmatch pattern (``'layers.*.mixer.A_log'``)."""
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def find_detection_backbone(model: nn.Module) -> VimDetectionBackbone:
    """The :class:`VimDetectionBackbone` in ``model`` (``model`` itself, or e.g. ``detector.backbone``)."""
    found = [m for m in model.modules() if isinstance(m, VimDetectionBackbone)]
    if len(found) != 1:
        raise ValueError(f"Expected exactly one VimDetectionBackbone in {type(model).__name__}, found {len(found)}.")
    return found[0]


def _trunk_layer_ids(backbone: VimDetectionBackbone) -> Dict[str, int]:
    """Trunk parameter name -> layer id: 0 stem, i + 1 block i (the final norm: depth), depth + 1 for
    anything after (a classifier head, when the trunk kept one)."""
    trunk = backbone.trunk
    depth = len(trunk_blocks(trunk))
    groups = group_parameters(trunk, trunk.group_matcher(coarse=False))
    return {name: min(group_id, depth + 1) for group_id, names in groups.items() for name in names}


def freeze_backbone(model: nn.Module, patch_embed: bool = True, num_blocks: int = 0) -> int:
    """Stop gradients to the stem (patch embedding, position embedding, cls token) and/or the first
    ``num_blocks`` blocks of the Vim trunk inside ``model`` (all blocks: the final norm too, which
    timm groups with the last block). Returns the number of frozen parameters."""
    backbone = find_detection_backbone(model)
    depth = len(trunk_blocks(backbone.trunk))
    if not 0 <= num_blocks <= depth:
        raise ValueError(f"num_blocks must be in [0, {depth}] for this backbone, got {num_blocks}.")
    layer_ids = _trunk_layer_ids(backbone)
    frozen = 0
    for name, param in backbone.trunk.named_parameters():
        layer = layer_ids[name]
        if (patch_embed and layer == 0) or 1 <= layer <= num_blocks:
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def param_groups_layer_decay(
        model: nn.Module,
        lr: Optional[float] = None,
        weight_decay: float = 0.05,
        layer_decay: float = 0.7,
        no_weight_decay: Iterable[str] = (),
) -> List[dict]:
    """Optimizer parameter groups with layer-wise learning-rate decay (as in ViTDet / BEiT fine-tuning).

    The trunk's groups are the classification engine's (:func:`vim.engine.optim.param_groups`: timm's layer
    decay over the trunk's ``group_matcher``), one layer further down, since everything outside the trunk
    (pyramid, RPN, RoI heads) is the top layer: a trunk parameter at layer id ``l`` (0 stem, ``i + 1`` for
    block ``i``, the final norm with the last block) gets ``lr_scale = layer_decay ** (depth + 1 - l)``, the
    rest 1. Parameters with fewer than 2 dims, the trunk's ``no_weight_decay()`` and the ``no_weight_decay``
    names of ``model`` (exact names or fnmatch patterns) get no weight decay. Frozen parameters are left
    out. Each group has ``lr_scale`` (what timm's schedulers read), ``param_names`` (names in ``model``)
    and, when ``lr`` is given, ``lr = lr * lr_scale``.
    """
    from ..engine.optim import param_groups

    trunk = find_detection_backbone(model).trunk
    names = {id(p): name for name, p in model.named_parameters()}
    trunk_ids = {id(p) for p in trunk.parameters()}
    skip = set(no_weight_decay)
    groups = param_groups(trunk, weight_decay, layer_decay, no_weight_decay=[
        name for name, p in trunk.named_parameters() if _matches(names[id(p)], skip)])
    for group in groups:
        group['lr_scale'] *= layer_decay
    rest = {True: [], False: []}  # no weight decay -> parameters outside the trunk
    for name, param in model.named_parameters():
        if param.requires_grad and id(param) not in trunk_ids:
            rest[param.ndim <= 1 or _matches(name, skip)].append(param)
    groups += [{'params': params, 'weight_decay': 0.0 if exempt else weight_decay, 'lr_scale': 1.0}
               for exempt, params in rest.items() if params]
    for group in groups:
        group['param_names'] = [names[id(p)] for p in group['params']]
        if lr is not None:
            group['lr'] = lr * group['lr_scale']
    return groups
