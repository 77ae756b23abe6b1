"""Faster R-CNN on a Vim backbone, trained on the generated shapes: the logic of ``tools/detect_demo.py``.

The settings default to something a CPU trains in minutes (a narrow, shallow Vim on small images);
on a GPU pass a real model (``vim_small_patch16_224``, ``pretrained=...``) and more steps.
"""
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

from .backbone import PathOrFlag, vim_detection_backbone
from .engine import draw_detections, evaluate_detections, legend, predict, save_png, train_detector
from .finetune import param_groups_layer_decay
from .shapes import ShapesDataset

__all__ = ['small_image_detector_kwargs', 'build_shapes_detector', 'run_shapes_demo']


def small_image_detector_kwargs(image_size: Tuple[int, int]) -> Dict[str, Any]:
    """FasterRCNN keyword arguments for small images: no resizing (the transform keeps ``image_size``),
    anchors of 16-256 px (torchvision's default 32-512 px miss objects of a few dozen pixels) and
    fewer proposals and RoI samples than torchvision's defaults for 800-1333 px images."""
    return dict(
        min_size=min(image_size), max_size=max(image_size),
        rpn_anchor_generator=AnchorGenerator(sizes=((16,), (32,), (64,), (128,), (256,)),
                                             aspect_ratios=((0.5, 1.0, 2.0),) * 5),
        rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=200,
        rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
        box_batch_size_per_image=64, box_detections_per_img=20,
    )


def build_shapes_detector(
        model_name: str = 'vim_tiny_patch16_224',
        pretrained: PathOrFlag = False,
        image_size: Tuple[int, int] = (96, 128),
        backbone_kwargs: Optional[Dict[str, Any]] = None,
        representation_size: int = 256,
) -> FasterRCNN:
    """A Faster R-CNN for :class:`ShapesDataset` images of ``image_size``, with a box head of
    ``representation_size`` features (torchvision's default is 1024)."""
    backbone = vim_detection_backbone(model_name, pretrained=pretrained, **(backbone_kwargs or {}))
    return FasterRCNN(
        backbone,
        box_head=TwoMLPHead(backbone.out_channels * 7 * 7, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, len(ShapesDataset.classes)),
        **small_image_detector_kwargs(image_size))


def run_shapes_demo(
        model_name: str = 'vim_tiny_patch16_224',
        pretrained: PathOrFlag = False,
        backbone_kwargs: Optional[Dict[str, Any]] = None,
        image_size: Tuple[int, int] = (96, 128),
        object_size: Tuple[int, int] = (20, 48),
        objects: Tuple[int, int] = (1, 3),
        background: Optional[Sequence[float]] = (0.1, 0.1, 0.1),
        steps: int = 120,
        batch_size: int = 4,
        lr: float = 2e-3,
        layer_decay: float = 1.0,
        num_train: int = 512,
        num_test: int = 32,
        device: str = 'cpu',
        output: Optional[str] = None,
        num_drawn: int = 4,
        seed: int = 0,
        log: Optional[Callable[[str], None]] = print,
) -> Dict[str, Any]:
    """Train a Faster R-CNN on generated shapes (train seed ``seed + 1``), evaluate it on held-out
    images (seed ``seed + 2``) and, if ``output`` is a ``.png`` path, save ``num_drawn`` test images
    side by side with predicted (red) and ground-truth (green) boxes.

    ``objects``, ``object_size`` and ``background`` are those of :class:`ShapesDataset`; the default
    dark background is what lets a from-scratch detector learn in ~100 CPU steps (a random background
    per image needs many more).

    Returns ``{'metrics': ..., 'losses': per-step losses, 'model': the detector, 'train_seconds': ...}``
    where ``metrics`` holds :func:`evaluate_detections`'s results and, prefixed ``agnostic_``, its
    class-agnostic results (are the shapes found, whatever their class).
    """
    torch.manual_seed(seed)
    say = log or (lambda message: None)
    data = dict(image_size=image_size, objects=objects, object_size=object_size, background=background)
    train_set = ShapesDataset(num_train, seed=seed + 1, **data)
    test_set = ShapesDataset(num_test, seed=seed + 2, **data)
    model = build_shapes_detector(model_name, pretrained, image_size, backbone_kwargs).to(device)
    optimizer = torch.optim.AdamW(param_groups_layer_decay(model, lr=lr, layer_decay=layer_decay, weight_decay=0.05))

    start = time.perf_counter()

    def log_step(step: int, losses: Dict[str, float]) -> None:
        if step % 10 == 0 or step == steps - 1:
            parts = ' '.join(f'{k}={v:.3f}' for k, v in losses.items())
            say(f"step {step:4d}  {time.perf_counter() - start:6.1f}s  {parts}")

    losses = train_detector(model, train_set, optimizer, steps, batch_size=batch_size, device=torch.device(device),
                            warmup_steps=min(20, steps // 5), max_grad_norm=5.0, log=log_step, seed=seed)
    train_seconds = time.perf_counter() - start
    predictions = predict(model, test_set, device=torch.device(device))
    targets = [test_set[i][1] for i in range(len(test_set))]
    metrics = evaluate_detections(predictions, targets, test_set.num_classes)
    metrics.update({f'agnostic_{k}': v for k, v in
                    evaluate_detections(predictions, targets, test_set.num_classes, class_agnostic=True).items()})
    say("held-out: " + ' '.join(f'{k}={v:.3f}' for k, v in metrics.items()))
    if output:
        _save_panel(test_set, predictions, output, num_drawn)
        say(f"saved {output}")
    return dict(metrics=metrics, losses=losses, model=model, train_seconds=train_seconds)


def _save_panel(dataset: ShapesDataset, predictions: Sequence[Dict[str, torch.Tensor]], path: str, count: int,
                scale: int = 3) -> None:
    """Draw the first ``count`` images of ``dataset``, enlarged ``scale`` times so the labels stay
    legible, with their predictions, side by side into ``path``."""
    drawn = []
    for i in range(min(count, len(dataset))):
        image, target = dataset[i]
        image = torch.nn.functional.interpolate(image[None], scale_factor=scale, mode='nearest')[0]
        prediction = dict(predictions[i], boxes=predictions[i]['boxes'] * scale)
        target = dict(target, boxes=target['boxes'] * scale)
        drawn.append(draw_detections(image, prediction, dataset.classes, target=target))
    gap = torch.full((3, drawn[0].shape[1], 4), 255, dtype=torch.uint8)
    panel = torch.cat([part for d in drawn for part in (d, gap)][:-1], dim=2)
    save_png(torch.cat([panel, legend(panel.shape[2])], dim=1), path)
