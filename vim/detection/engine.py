"""Training steps, evaluation (VOC-style AP at an IoU threshold) and drawing for torchvision detectors."""
import itertools
import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import box_iou
from torchvision.utils import draw_bounding_boxes

from .shapes import collate_detection

__all__ = ['train_detector', 'predict', 'evaluate_detections', 'average_precision', 'draw_detections',
           'place_labels', 'legend', 'save_png']


def _to_device(images, targets, device):
    images = [im.to(device) for im in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    return images, targets


def train_detector(
        model: nn.Module,
        dataset: Dataset,
        optimizer: torch.optim.Optimizer,
        steps: int,
        batch_size: int = 4,
        device: Optional[torch.device] = None,
        warmup_steps: int = 0,
        max_grad_norm: Optional[float] = None,
        log: Optional[Callable[[int, Dict[str, float]], None]] = None,
        seed: int = 0,
) -> List[Dict[str, float]]:
    """Train a torchvision detector for ``steps`` optimiser steps on ``dataset`` (cycled, shuffled).

    The learning rate of every group ramps linearly from 0 over ``warmup_steps``, then decays to 0 on
    a cosine (timm's ``CosineLRScheduler``, per step); the groups' lr is restored afterwards. Returns the
    losses of every step (the detector's loss dict plus ``'loss'``, their sum); raises ``FloatingPointError``
    at the first non-finite loss.
    """
    device = device or next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate_detection,
                        generator=torch.Generator().manual_seed(seed), drop_last=len(dataset) >= batch_size)
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    base_lrs = [group['lr'] for group in optimizer.param_groups]
    # timm's scheduler multiplies its value by a group's lr_scale, which these groups' lr already includes
    for group in optimizer.param_groups:
        group['initial_lr'] = group['lr'] / group.get('lr_scale', 1.0)
    warmup_steps = min(warmup_steps, steps - 1)
    scheduler = CosineLRScheduler(optimizer, t_initial=max(steps - warmup_steps, 1), lr_min=0.0,
                                  warmup_t=warmup_steps, warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
    params = [p for group in optimizer.param_groups for p in group['params']]
    model.train()
    history = []
    for step, (images, targets) in zip(range(steps), batches):
        scheduler.step_update(step)
        images, targets = _to_device(images, targets, device)
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"Non-finite loss at step {step}: { {k: v.item() for k, v in losses.items()} }")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        record = {k: v.item() for k, v in losses.items()}
        record['loss'] = loss.item()
        history.append(record)
        if log is not None:
            log(step, record)
    for group, base_lr in zip(optimizer.param_groups, base_lrs):
        group['lr'] = base_lr
        del group['initial_lr']
    return history


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, batch_size: int = 8,
            device: Optional[torch.device] = None) -> List[Dict[str, torch.Tensor]]:
    """The detector's eval-mode output for every image of ``dataset``, on the CPU."""
    device = device or next(model.parameters()).device
    model.eval()
    outputs = []
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_detection)
    for images, _ in loader:
        outputs += [{k: v.cpu() for k, v in out.items()} for out in model([im.to(device) for im in images])]
    return outputs


def average_precision(recall: torch.Tensor, precision: torch.Tensor) -> float:
    """Area under the precision-recall curve with precision made monotone (VOC 2010+ "all points")."""
    recall = torch.cat([torch.tensor([0.0]), recall, torch.tensor([1.0])])
    precision = torch.cat([torch.tensor([0.0]), precision, torch.tensor([0.0])])
    precision = torch.flip(torch.cummax(torch.flip(precision, [0]), 0).values, [0])
    steps = (recall[1:] != recall[:-1]).nonzero().flatten()
    return float(((recall[steps + 1] - recall[steps]) * precision[steps + 1]).sum())


def evaluate_detections(
        predictions: Sequence[Dict[str, torch.Tensor]],
        targets: Sequence[Dict[str, torch.Tensor]],
        num_classes: int,
        iou_threshold: float = 0.5,
        score_threshold: float = 0.5,
        class_agnostic: bool = False,
) -> Dict[str, float]:
    """Detection quality at one IoU threshold.

    Returns ``'map'``: the mean over foreground classes (labels 1 .. num_classes - 1) of the average
    precision, each prediction matched greedily by score to an unmatched ground-truth box of its
    class with IoU >= ``iou_threshold``; ``'ap_<label>'`` per class; ``'recall'`` and ``'precision'``
    over all classes, counting only predictions with score >= ``score_threshold``. With
    ``class_agnostic`` every label counts as 1: whether the objects are found, whatever their class.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"Got {len(predictions)} predictions for {len(targets)} targets.")
    if class_agnostic:
        predictions = [dict(p, labels=torch.ones_like(p['labels'])) for p in predictions]
        targets = [dict(t, labels=torch.ones_like(t['labels'])) for t in targets]
        num_classes = 2
    result = {}
    kept_true = kept_total = 0
    num_gt_total = sum(len(t['labels']) for t in targets)
    aps = []
    for label in range(1, num_classes):
        scores, is_true = [], []
        num_gt = 0
        for pred, target in zip(predictions, targets):
            gt = target['boxes'][target['labels'] == label]
            num_gt += len(gt)
            keep = pred['labels'] == label
            boxes, conf = pred['boxes'][keep], pred['scores'][keep]
            order = conf.argsort(descending=True)
            boxes, conf = boxes[order], conf[order]
            matched = torch.zeros(len(gt), dtype=torch.bool)
            ious = box_iou(boxes, gt) if len(gt) and len(boxes) else torch.zeros((len(boxes), len(gt)))
            for i in range(len(boxes)):
                hit = False
                if len(gt):
                    candidates = ious[i].masked_fill(matched, -1.0)
                    best = int(candidates.argmax())
                    if candidates[best] >= iou_threshold:
                        matched[best] = hit = True
                scores.append(float(conf[i]))
                is_true.append(hit)
        scores_t = torch.tensor(scores)
        true_t = torch.tensor(is_true, dtype=torch.float32)
        kept = scores_t >= score_threshold
        kept_true += int(true_t[kept].sum())
        kept_total += int(kept.sum())
        if num_gt == 0:
            continue
        order = scores_t.argsort(descending=True)
        tp = true_t[order].cumsum(0)
        recall = tp / num_gt
        precision = tp / torch.arange(1, len(tp) + 1)
        ap = average_precision(recall, precision) if len(tp) else 0.0
        result[f'ap_{label}'] = ap
        aps.append(ap)
    result['map'] = sum(aps) / len(aps) if aps else 0.0
    result['recall'] = kept_true / num_gt_total if num_gt_total else 0.0
    result['precision'] = kept_true / kept_total if kept_total else 0.0
    return result


PREDICTION_COLOUR, TRUTH_COLOUR = (255, 0, 0), (0, 255, 0)


def place_labels(boxes: Sequence[Sequence[float]], sizes: Sequence[Sequence[int]],
                 image_size: Sequence[int]) -> List[tuple]:
    """Where to write each box's label: (x0, y0, x1, y1) of a ``sizes[i]`` = (width, height) rectangle just
    above its box, else just below, else inside its top, else the first free row, so that no two labels
    overlap and each stays inside the (height, width) image where it fits."""
    height, width = image_size
    placed: List[tuple] = []

    def free(r):
        return all(r[2] <= p[0] or p[2] <= r[0] or r[3] <= p[1] or p[3] <= r[1] for p in placed)

    for (x0, y0, x1, y1), (w, h) in zip(boxes, sizes):
        left = int(min(max(x0, 0), max(width - w, 0)))
        tops = [y0 - h, y1, y0] + list(range(0, max(height - h, 0) + 1, h or 1))
        candidates = [(left, int(t), left + w, int(t) + h) for t in tops if 0 <= t <= height - h]
        placed.append(next((r for r in candidates if free(r)), candidates[0] if candidates else (left, 0, left + w, h)))
    return placed


def draw_detections(
        image: torch.Tensor,
        prediction: Dict[str, torch.Tensor],
        class_names: Sequence[str],
        target: Optional[Dict[str, torch.Tensor]] = None,
        score_threshold: float = 0.5,
) -> torch.Tensor:
    """``image`` (3, H, W, float in [0, 1]) as uint8 with the predicted boxes scoring at least
    ``score_threshold`` (red, labelled "name score", labels placed so they do not overlap) and, when given,
    the ground-truth boxes (green)."""
    from PIL import Image, ImageDraw, ImageFont

    canvas = (image.detach().cpu().clamp(0, 1) * 255).to(torch.uint8)
    if target is not None and len(target['boxes']):
        canvas = draw_bounding_boxes(canvas, target['boxes'].cpu(), colors=TRUTH_COLOUR, width=1)
    keep = prediction['scores'] >= score_threshold
    boxes = prediction['boxes'][keep].cpu()
    if not len(boxes):
        return canvas
    canvas = draw_bounding_boxes(canvas, boxes, colors=PREDICTION_COLOUR, width=2)
    names = [f"{class_names[int(label)]} {float(score):.2f}"
             for label, score in zip(prediction['labels'][keep], prediction['scores'][keep])]
    picture = Image.fromarray(canvas.permute(1, 2, 0).contiguous().numpy())
    draw, font = ImageDraw.Draw(picture), ImageFont.load_default()
    sizes = [(int(draw.textlength(name, font=font)) + 2, 11) for name in names]
    for name, rect in zip(names, place_labels(boxes.tolist(), sizes, canvas.shape[1:])):
        draw.rectangle(rect, fill=PREDICTION_COLOUR)
        draw.text((rect[0] + 1, rect[1]), name, fill=(255, 255, 255), font=font)
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)


def legend(width: int) -> torch.Tensor:
    """A (3, 14, width) uint8 strip that says which colour is which."""
    from PIL import Image, ImageDraw, ImageFont

    strip = Image.new('RGB', (width, 14), (255, 255, 255))
    draw, font = ImageDraw.Draw(strip), ImageFont.load_default()
    x = 4
    for colour, text in ((PREDICTION_COLOUR, 'prediction (class score)'), (TRUTH_COLOUR, 'ground truth')):
        draw.rectangle((x, 3, x + 8, 11), outline=colour, width=2)
        draw.text((x + 12, 1), text, fill=(0, 0, 0), font=font)
        x += 24 + int(draw.textlength(text, font=font))
    return torch.from_numpy(np.asarray(strip).copy()).permute(2, 0, 1)


def save_png(image: torch.Tensor, path: str) -> None:
    """Write a (3, H, W) uint8 image to ``path``, creating its folder."""
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(path)
