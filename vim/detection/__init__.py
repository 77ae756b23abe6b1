"""Vim as a detection backbone: ViTDet's simple feature pyramid, torchvision detectors on it,
fine-tuning helpers, a generated shapes dataset, and mmdetection / detectron2 registration.

    from vim.detection import fasterrcnn_vim
    model = fasterrcnn_vim(num_classes=91, model_name='vim_small_patch16_224', pretrained='vim_s_midclstok_80p5acc.pth')
"""
from .augment import AugmentedDetectionDataset, detection_augmentation
from .backbone import VimDetectionBackbone, trunk_blocks, vim_detection_backbone
from .detectors import fasterrcnn_vim, maskrcnn_vim, retinanet_vim
from .engine import average_precision, draw_detections, evaluate_detections, predict, save_png, train_detector
from .finetune import find_detection_backbone, freeze_backbone, param_groups_layer_decay
from .integrations import (
    MMDetVimBackbone, add_vim_config, detectron2_backbone_class, register_available, register_detectron2,
    register_mmdet,
)
from .pyramid import SimpleFeaturePyramid
from .shapes import SHAPE_CLASSES, ShapesDataset, collate_detection

__all__ = [
    'AugmentedDetectionDataset', 'MMDetVimBackbone', 'SHAPE_CLASSES', 'ShapesDataset', 'SimpleFeaturePyramid', 'VimDetectionBackbone',
    'add_vim_config', 'average_precision', 'collate_detection', 'detection_augmentation', 'detectron2_backbone_class',
    'draw_detections',
    'evaluate_detections', 'fasterrcnn_vim', 'find_detection_backbone', 'freeze_backbone', 'maskrcnn_vim',
    'param_groups_layer_decay', 'predict', 'register_available', 'register_detectron2', 'register_mmdet',
    'retinanet_vim', 'save_png', 'train_detector', 'trunk_blocks', 'vim_detection_backbone',
]

# mmdetection / detectron2: register where their registries are already imported (never import them here)
register_available()
