"""Build the classifier a recipe names, through ``timm.create_model`` (``import vim`` registers Vim)."""
from typing import Any, Dict, Tuple

import timm
import torch

import vim  # noqa: F401  (registers the Vim models with timm)

__all__ = ['build_model', 'model_kwargs']


def model_kwargs(cfg: Dict) -> Dict[str, Any]:
    """The architecture kwargs: ``model.kwargs`` plus ``img_size``/``in_chans`` from the data section."""
    kwargs = dict(cfg['model']['kwargs'] or {})
    if cfg['data']['img_size'] and 'img_size' not in kwargs:
        kwargs['img_size'] = int(cfg['data']['img_size'])
    kwargs.setdefault('in_chans', int(cfg['data']['in_chans']))
    return kwargs


def build_model(cfg: Dict, num_classes: int, load_pretrained: bool = True) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Return ``(model, arch)``; ``arch`` identifies the architecture in checkpoints.

    ``model.pretrained`` loads weights from ``model.pretrained_file`` (timm's file loader) or the hub,
    unless ``load_pretrained`` is false (a resumed run restores its own weights).
    """
    mcfg = cfg['model']
    kwargs = model_kwargs(cfg)
    pretrained = bool(mcfg['pretrained']) and load_pretrained
    extra = {}
    if pretrained and mcfg['pretrained_file']:  # read (and any error raised) by vim.checkpoint's loader
        extra['pretrained_cfg_overlay'] = dict(file=mcfg['pretrained_file'])
    try:
        model = timm.create_model(mcfg['name'], pretrained=pretrained, num_classes=num_classes,
                                  drop_path_rate=float(mcfg['drop_path_rate']), drop_rate=float(mcfg['drop_rate']),
                                  **kwargs, **extra)
    except RuntimeError as err:
        if 'Unknown model' in str(err):
            raise ValueError(f"model.name={mcfg['name']!r} is not a timm model; Vim models: "
                             f"{timm.list_models('vim_*')}") from err
        raise
    arch = {'model': mcfg['name'], 'num_classes': int(num_classes), 'kwargs': kwargs}
    return model, arch
