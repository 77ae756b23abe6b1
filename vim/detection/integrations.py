"""Registration of the Vim detection backbone in mmdetection's and detectron2's registries.

Neither framework is a dependency: they are imported only inside these functions. Importing
``vim.detection`` registers the backbone in every framework whose registry is already imported
(e.g. through mmdetection's ``custom_imports``); call :func:`register_mmdet` or
:func:`register_detectron2` to register explicitly.

- mmdetection: ``backbone=dict(type='VimSimpleFeaturePyramid', model_name='vim_small_patch16_224',
  out_channels=256, ...)`` returns a tuple of 5 maps at strides 4-64, finest first, so a config needs
  no neck (``neck=None``) and an RPN with strides ``[4, 8, 16, 32, 64]``.
- detectron2: ``MODEL.BACKBONE.NAME = 'build_vim_backbone'`` with the ``MODEL.VIM`` keys of
  :func:`add_vim_config`; the backbone returns ``p2`` - ``p6`` like detectron2's FPN. LazyConfig users
  can instantiate :func:`detectron2_backbone_class` directly.
"""
import math
import sys
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .backbone import PathOrFlag, vim_detection_backbone

__all__ = ['MMDetVimBackbone', 'register_mmdet', 'register_detectron2', 'add_vim_config',
           'detectron2_backbone_class', 'register_available']

MMDET_NAME = 'VimSimpleFeaturePyramid'
DETECTRON2_BUILDER = 'build_vim_backbone'

# MODEL.VIM keys of a detectron2 config and their defaults
DETECTRON2_DEFAULTS = {
    'MODEL_NAME': 'vim_small_patch16_224',
    'PRETRAINED': '',  # '' none, 'default' the model's default weights, else a checkpoint path
    'OUT_CHANNELS': 256,
    'TAP_INDICES': [-1],
    'DROP_PATH_RATE': 0.1,
    'GRAD_CHECKPOINTING': False,
}


class MMDetVimBackbone(nn.Module):
    """The Vim detection backbone as mmdetection wants it: built from keyword arguments (those of
    :func:`vim_detection_backbone`), ``forward`` returns a tuple of maps, finest first."""

    def __init__(self, model_name: str = 'vim_small_patch16_224', pretrained: PathOrFlag = False, **kwargs):
        super().__init__()
        self.backbone = vim_detection_backbone(model_name, pretrained=pretrained, **kwargs)
        self.out_channels = self.backbone.out_channels
        self.out_strides = self.backbone.out_strides

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(self.backbone(images).values())


def register_mmdet(registry: Optional[Any] = None) -> str:
    """Register :class:`MMDetVimBackbone` as ``'VimSimpleFeaturePyramid'`` in ``registry``
    (default: ``mmdet.registry.MODELS``). Idempotent; returns the registered name."""
    if registry is None:
        from mmdet.registry import MODELS as registry
    if MMDET_NAME not in registry:
        registry.register_module(name=MMDET_NAME, module=MMDetVimBackbone)
    return MMDET_NAME


def detectron2_backbone_class(backbone_base: Optional[type] = None, shape_spec: Optional[type] = None) -> type:
    """A ``detectron2.modeling.Backbone`` subclass wrapping the Vim detection backbone; its outputs
    are named ``p<log2 stride>`` (``p2`` - ``p6`` by default). The detectron2 classes are imported
    unless given (tests pass stand-ins)."""
    if backbone_base is None or shape_spec is None:
        from detectron2.modeling import Backbone, ShapeSpec
        backbone_base, shape_spec = backbone_base or Backbone, shape_spec or ShapeSpec

    class VimDetectron2Backbone(backbone_base):
        def __init__(self, model_name: str = 'vim_small_patch16_224', pretrained: PathOrFlag = False, **kwargs):
            super().__init__()
            self.net = vim_detection_backbone(model_name, pretrained=pretrained, **kwargs)
            strides = self.net.out_strides
            self._out_features = [f'p{int(math.log2(s))}' for s in strides]
            self._out_feature_strides = dict(zip(self._out_features, strides))
            self._out_feature_channels = {name: self.net.out_channels for name in self._out_features}

        @property
        def size_divisibility(self) -> int:
            return self.net.size_divisibility

        def output_shape(self) -> Dict[str, Any]:
            return {name: shape_spec(channels=self._out_feature_channels[name],
                                     stride=self._out_feature_strides[name])
                    for name in self._out_features}

        def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
            return dict(zip(self._out_features, self.net(images).values()))

    return VimDetectron2Backbone


def add_vim_config(cfg: Any) -> Any:
    """Add the ``MODEL.VIM`` keys (with their defaults) to a detectron2 config node."""
    node = type(cfg)()
    for key, value in DETECTRON2_DEFAULTS.items():
        setattr(node, key, value)
    cfg.MODEL.VIM = node
    return cfg


def _detectron2_kwargs(cfg: Any) -> Dict[str, Any]:
    vim_cfg = cfg.MODEL.VIM
    pretrained = vim_cfg.PRETRAINED
    return dict(
        model_name=vim_cfg.MODEL_NAME,
        pretrained=True if pretrained == 'default' else (pretrained or False),
        out_channels=vim_cfg.OUT_CHANNELS,
        tap_indices=tuple(vim_cfg.TAP_INDICES),
        drop_path_rate=vim_cfg.DROP_PATH_RATE,
        grad_checkpointing=vim_cfg.GRAD_CHECKPOINTING,
    )


def register_detectron2(registry: Optional[Any] = None, backbone_base: Optional[type] = None,
                        shape_spec: Optional[type] = None) -> str:
    """Register the builder ``build_vim_backbone(cfg, input_shape)`` in ``registry`` (default:
    ``detectron2.modeling.BACKBONE_REGISTRY``). Idempotent; returns the registered name."""
    if registry is None:
        from detectron2.modeling import BACKBONE_REGISTRY as registry
    if DETECTRON2_BUILDER in registry:
        return DETECTRON2_BUILDER
    backbone_class = detectron2_backbone_class(backbone_base, shape_spec)

    def build_vim_backbone(cfg: Any, input_shape: Any = None) -> nn.Module:
        return backbone_class(**_detectron2_kwargs(cfg))

    registry.register(build_vim_backbone)
    return DETECTRON2_BUILDER


def register_available() -> List[str]:
    """Register in every framework whose registry module is already imported; returns their names."""
    done = []
    if 'mmdet.registry' in sys.modules:
        register_mmdet()
        done.append('mmdet')
    if 'detectron2.modeling' in sys.modules:
        register_detectron2()
        done.append('detectron2')
    return done
