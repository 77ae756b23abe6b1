"""torchvision detectors (Faster R-CNN, Mask R-CNN, RetinaNet) on a Vim backbone, in one call.

The backbone's levels are named ``'0'``-``'3'`` (+ ``'pool'``) like torchvision's
``resnet_fpn_backbone``, so the detectors' default anchor generators (five levels) and RoI poolers
(``'0'``-``'3'``) fit unchanged.
"""
from typing import Any, Dict, Optional

from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet

from .backbone import PathOrFlag, VimDetectionBackbone, vim_detection_backbone

__all__ = ['fasterrcnn_vim', 'maskrcnn_vim', 'retinanet_vim']

# RetinaNet's usual levels are P3-P7: strides 8-64 from the pyramid, 128 from the extra 'pool' level.
RETINANET_STRIDES = (8, 16, 32, 64)


def _backbone(model_name: str, pretrained: PathOrFlag, backbone_kwargs: Optional[Dict[str, Any]],
              **defaults) -> VimDetectionBackbone:
    kwargs = {**defaults, **(backbone_kwargs or {})}
    return vim_detection_backbone(model_name, pretrained=pretrained, **kwargs)


def fasterrcnn_vim(
        num_classes: int,
        model_name: str = 'vim_small_patch16_224',
        pretrained: PathOrFlag = False,
        backbone_kwargs: Optional[Dict[str, Any]] = None,
        **kwargs,
) -> FasterRCNN:
    """Faster R-CNN on a Vim simple feature pyramid.

    Args:
        num_classes: including the background class 0.
        model_name: timm name of the trunk.
        pretrained: ``False``, ``True`` or the path of a Vim checkpoint for the trunk.
        backbone_kwargs: passed to :func:`vim_detection_backbone` (``out_channels``, ``tap_indices``,
            ``drop_path_rate``, ``embed_dim``, ...).
        kwargs: passed to ``torchvision.models.detection.FasterRCNN`` (``min_size``, ``max_size``, ...).
    """
    return FasterRCNN(_backbone(model_name, pretrained, backbone_kwargs), num_classes=num_classes, **kwargs)


def maskrcnn_vim(
        num_classes: int,
        model_name: str = 'vim_small_patch16_224',
        pretrained: PathOrFlag = False,
        backbone_kwargs: Optional[Dict[str, Any]] = None,
        **kwargs,
) -> MaskRCNN:
    """Mask R-CNN on a Vim simple feature pyramid (arguments as :func:`fasterrcnn_vim`)."""
    return MaskRCNN(_backbone(model_name, pretrained, backbone_kwargs), num_classes=num_classes, **kwargs)


def retinanet_vim(
        num_classes: int,
        model_name: str = 'vim_small_patch16_224',
        pretrained: PathOrFlag = False,
        backbone_kwargs: Optional[Dict[str, Any]] = None,
        **kwargs,
) -> RetinaNet:
    """RetinaNet on a Vim simple feature pyramid with levels at strides 8-128 (P3-P7).

    Arguments as :func:`fasterrcnn_vim`, ``num_classes`` included: torchvision counts label 0
    (background) in it for RetinaNet too, though RetinaNet never predicts that label.
    """
    backbone = _backbone(model_name, pretrained, backbone_kwargs, strides=RETINANET_STRIDES)
    return RetinaNet(backbone, num_classes=num_classes, **kwargs)
