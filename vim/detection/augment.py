"""Box-aware augmentation for detection fine-tuning: albumentations moves the boxes and masks with the image.

A dataset in torchvision's detection convention (an image (3, H, W) float in [0, 1]; a target with ``boxes``
(N, 4) xyxy in pixels, ``labels`` (N,) and optionally ``masks`` (N, H, W)) wrapped in
:class:`AugmentedDetectionDataset` yields the same convention after a horizontal flip, a scale/translate jitter
and colour jitter. A box pushed mostly out of the image is dropped with its label and mask.
"""
from typing import Dict, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ['AugmentedDetectionDataset', 'detection_augmentation']


def detection_augmentation(hflip: float = 0.5, scale: float = 0.2, translate: float = 0.1,
                           color_jitter: float = 0.2, min_visibility: float = 0.3):
    """An ``A.Compose`` that keeps ``boxes`` (pascal_voc: xyxy pixels) and ``masks`` aligned with the image."""
    try:
        import albumentations as A
    except ImportError as err:
        raise ImportError("detection augmentation needs albumentations (pip install albumentations)") from err
    ops = [A.HorizontalFlip(p=hflip)]
    if scale or translate:
        ops.append(A.Affine(scale=(1 - scale, 1 + scale), translate_percent=(-translate, translate), p=1.0))
    if color_jitter:
        ops.append(A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter, hue=0,
                                 p=1.0))
    return A.Compose(ops, bbox_params=A.BboxParams(format='pascal_voc', label_fields=['labels'],
                                                   min_visibility=min_visibility))


class AugmentedDetectionDataset(Dataset):
    """``dataset`` with ``augment`` (default :func:`detection_augmentation`) applied to every sample.

    ``seed`` fixes the whole sequence of draws: sample ``i`` at its ``k``-th read gets the same augmentation on
    every run (the read count is per worker process, so fix ``num_workers`` to repeat a run exactly).
    """

    def __init__(self, dataset: Dataset, augment=None, seed: int = 0):
        self.dataset, self.seed = dataset, seed
        self.augment = augment if augment is not None else detection_augmentation()
        self.reads: Dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        image, target = self.dataset[index]
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image of shape (3, H, W), got {tuple(image.shape)} (sample {index})")
        read = self.reads.get(index, 0)
        self.reads[index] = read + 1
        self.augment.set_random_seed(int(np.random.SeedSequence([self.seed, index, read]).generate_state(1)[0]))
        array = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        boxes = target['boxes'].tolist()
        extra = {}
        if 'masks' in target:
            extra['masks'] = list(target['masks'].numpy())
        # the labels ride along as box indices, so the masks of dropped boxes can be dropped too
        out = self.augment(image=array, bboxes=boxes, labels=list(range(len(boxes))), **extra)
        kept = [int(i) for i in out['labels']]
        result = dict(target)
        result['boxes'] = torch.tensor(out['bboxes'], dtype=torch.float32).reshape(-1, 4)
        result['labels'] = target['labels'][kept]
        if 'masks' in target:  # every mask is transformed; those of dropped boxes go
            masks = [out['masks'][i] for i in kept]
            shape = out['image'].shape[:2]
            result['masks'] = torch.from_numpy(np.stack(masks) if masks else np.zeros((0, *shape), np.uint8)).to(
                target['masks'].dtype)
        image = torch.from_numpy(out['image']).permute(2, 0, 1).float() / 255.0
        return image, result
