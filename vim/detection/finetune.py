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

    A trunk parameter at layer id ``l`` (0 stem, ``i + 1`` for block ``i``) gets
    ``lr_scale = layer_decay ** (depth + 1 - l)`` (the final norm: that of the last block); every
    parameter outside the trunk gets 1. Biases, norm weights (every parameter with fewer than 2 dims), the trunk's
    ``no_weight_decay()`` names and the ``no_weight_decay`` names of ``model`` (exact names or fnmatch
    patterns) get no weight decay.
    Frozen parameters are left out. Each group has ``lr_scale`` (what timm's schedulers read) and,
    when ``lr`` is given, ``lr = lr * lr_scale``.
    """
    backbone = find_detection_backbone(model)
    depth = len(trunk_blocks(backbone.trunk))
    layer_ids = _trunk_layer_ids(backbone)
    trunk_names: Dict[int, str] = {id(p): name for name, p in backbone.trunk.named_parameters()}
    skip_trunk = set(getattr(backbone.trunk, 'no_weight_decay', lambda: set())())
    skip = set(no_weight_decay)

    groups: Dict[tuple, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        trunk_name = trunk_names.get(id(param))
        layer = depth + 1 if trunk_name is None else layer_ids[trunk_name]
        no_decay = (param.ndim <= 1 or _matches(name, skip)
                    or (trunk_name is not None and _matches(trunk_name, skip_trunk)))
        key = (layer, no_decay)
        if key not in groups:
            scale = layer_decay ** (depth + 1 - layer)
            groups[key] = {'params': [], 'param_names': [], 'weight_decay': 0.0 if no_decay else weight_decay,
                           'lr_scale': scale}
            if lr is not None:
                groups[key]['lr'] = lr * scale
        groups[key]['params'].append(param)
        groups[key]['param_names'].append(name)
    return [groups[key] for key in sorted(groups)]
