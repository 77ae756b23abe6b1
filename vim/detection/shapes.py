"""A generated detection dataset: coloured rectangles and ellipses on a noisy background.

Every image is drawn from its own seed (``seed``, ``index``), so a dataset needs no files and no
network, is the same on every machine, and a held-out split is just another ``seed``. Objects never
overlap, so every box and mask is fully visible. Targets follow torchvision's detection convention:
``boxes`` (N, 4) float xyxy in pixels, ``labels`` (N,) int64 with 0 reserved for background, and
optionally ``masks`` (N, H, W) uint8.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset

__all__ = ['SHAPE_CLASSES', 'ShapesDataset', 'collate_detection']

SHAPE_CLASSES = ('background', 'rectangle', 'ellipse')

Size = Union[int, Tuple[int, int]]


def _pair(size: Size) -> Tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class ShapesDataset(Dataset):
    """``num_images`` generated images, each (3, H, W) float in [0, 1], with detection targets.

    Args:
        num_images: length of the dataset.
        image_size: (H, W) or one int for square images.
        objects: (fewest, most) objects per image.
        object_size: (smallest, largest) side of an object's box in pixels.
        seed: seed of the whole dataset; image ``i`` depends only on (``seed``, ``i``).
        masks: also return instance masks (for Mask R-CNN).
        noise: standard deviation of the per-pixel background noise.
        background: one RGB colour (in [0, 1]) for every image; None draws a random one per image
            (harder: the detector must learn what "background" is from context).
    """

    classes = SHAPE_CLASSES

    def __init__(
            self,
            num_images: int,
            image_size: Size = (160, 192),
            objects: Tuple[int, int] = (1, 4),
            object_size: Tuple[int, int] = (20, 64),
            seed: int = 0,
            masks: bool = False,
            noise: float = 0.04,
            background: Optional[Sequence[float]] = None,
    ):
        self.num_images = num_images
        self.image_size = _pair(image_size)
        self.objects = objects
        self.object_size = object_size
        self.seed = seed
        self.masks = masks
        self.noise = noise
        self.background = None if background is None else torch.tensor(background, dtype=torch.float32)
        if self.background is not None and self.background.shape != (3,):
            raise ValueError(f"background must be one RGB colour, got {background}.")
        h, w = self.image_size
        if object_size[1] >= min(h, w):
            raise ValueError(f"object_size {object_size} must stay below the image size {self.image_size}.")
        if not 1 <= objects[0] <= objects[1]:
            raise ValueError(f"objects must be (fewest, most) with 1 <= fewest <= most, got {objects}.")

    @property
    def num_classes(self) -> int:
        """Number of classes including background (what torchvision's detectors take)."""
        return len(self.classes)

    def __len__(self) -> int:
        return self.num_images

    def _randint(self, g: torch.Generator, low: int, high: int) -> int:
        """An int in [low, high]."""
        return int(torch.randint(low, high + 1, (), generator=g))

    def _place(self, g: torch.Generator, boxes: List[Tuple[int, int, int, int]]) -> Tuple[int, int, int, int]:
        """A box (x0, y0, x1, y1) of random size that keeps a 2-pixel gap to ``boxes``; None if none fits."""
        h, w = self.image_size
        for _ in range(50):
            bw, bh = self._randint(g, *self.object_size), self._randint(g, *self.object_size)
            x0, y0 = self._randint(g, 0, w - bw), self._randint(g, 0, h - bh)
            box = (x0, y0, x0 + bw, y0 + bh)
            if all(box[0] >= b[2] + 2 or b[0] >= box[2] + 2 or box[1] >= b[3] + 2 or b[1] >= box[3] + 2
                   for b in boxes):
                return box
        return None

    def _colour(self, g: torch.Generator, avoid: torch.Tensor) -> torch.Tensor:
        """A random RGB colour at least 0.35 (L2) away from ``avoid``."""
        while True:
            colour = torch.rand(3, generator=g)
            if (colour - avoid).norm() > 0.35:
                return colour

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        h, w = self.image_size
        background = torch.rand(3, generator=g) if self.background is None else self.background
        image = background.view(3, 1, 1).expand(3, h, w).clone()
        image += self.noise * torch.randn((3, h, w), generator=g)
        ys = torch.arange(h, dtype=torch.float32).view(h, 1) + 0.5
        xs = torch.arange(w, dtype=torch.float32).view(1, w) + 0.5

        boxes, labels, masks = [], [], []
        for _ in range(self._randint(g, *self.objects)):
            box = self._place(g, boxes)
            if box is None:
                break
            label = self._randint(g, 1, len(self.classes) - 1)
            x0, y0, x1, y1 = box
            if self.classes[label] == 'rectangle':
                mask = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
            else:  # ellipse inscribed in the box
                cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
                mask = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
            image[:, mask] = self._colour(g, background).view(3, 1)
            # the tight box of the drawn pixels
            rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
            boxes.append((int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1))
            labels.append(label)
            masks.append(mask)

        target = {
            'boxes': torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
            'labels': torch.tensor(labels, dtype=torch.int64),
        }
        if self.masks:
            target['masks'] = torch.stack(masks).to(torch.uint8) if masks else torch.zeros((0, h, w), dtype=torch.uint8)
        return image.clamp_(0, 1), target


def collate_detection(batch: Sequence[Tuple[torch.Tensor, Dict]]) -> Tuple[List[torch.Tensor], List[Dict]]:
    """Collate into (list of images, list of targets), the input torchvision's detectors take."""
    images, targets = zip(*batch)
    return list(images), list(targets)
