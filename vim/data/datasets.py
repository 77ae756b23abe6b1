"""Image classification datasets as (uint8 HxWxC array, int label) pairs.

Every dataset here returns raw pixels; augmentation is applied by :mod:`vim.data.loader`. An image
that cannot be read returns ``None`` (with a warning), and the loader drops and counts it.

- ``digits``: scikit-learn's 1,797 handwritten 8x8 digits (ships with scikit-learn; no download),
  split 80/20 per class with a fixed seed.
- ``cifar10``: torchvision's CIFAR-10, a local copy under ``root`` or a download.
- ``imagefolder``: ``root/<split>/<class>/<image>`` (ImageNet's layout); the validation split uses
  the training split's class indices.
- ``synthetic``: generated class-dependent images, for machines with no data (benchmarks, tests).
"""
import os
import warnings
from typing import Dict, List, Optional, Tuple

import numpy as np
from torch.utils.data import Dataset

__all__ = ['ImageDataset', 'DigitsDataset', 'Cifar10Dataset', 'ImageFolderDataset', 'SyntheticDataset',
           'CorruptImageWarning', 'build_dataset']


class CorruptImageWarning(UserWarning):
    """An image file could not be decoded; it is skipped."""


class ImageDataset(Dataset):
    """Base: ``load(index) -> (HxWxC uint8 array or None, label)``, ``classes``, ``__len__``."""

    classes: List[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load(self, index: int) -> Tuple[Optional[np.ndarray], int]:
        raise NotImplementedError

    def __getitem__(self, index: int):
        return self.load(index)


class ArrayDataset(ImageDataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: List[str]):
        if images.ndim == 3:
            images = images[..., None]
        self.images, self.labels, self.classes = images, np.asarray(labels, dtype=np.int64), classes

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int):
        return self.images[index], int(self.labels[index])


class DigitsDataset(ArrayDataset):
    """scikit-learn's handwritten digits: 8x8 grey images with values 0..16, scaled to 0..255."""

    def __init__(self, split: str, seed: int = 0, val_fraction: float = 0.2):
        try:
            from sklearn.datasets import load_digits
        except ImportError as err:
            raise ImportError("the digits dataset needs scikit-learn: pip install 'vim[digits]' "
                              "(or pip install scikit-learn)") from err
        bunch = load_digits()
        images = np.round(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        labels = bunch.target.astype(np.int64)
        rng = np.random.default_rng(seed)
        val_idx = []
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            rng.shuffle(idx)
            val_idx.extend(idx[:int(round(len(idx) * val_fraction))])
        is_val = np.zeros(len(labels), dtype=bool)
        is_val[val_idx] = True
        keep = is_val if split == 'val' else ~is_val
        super().__init__(images[keep], labels[keep], [str(d) for d in range(10)])


class Cifar10Dataset(ArrayDataset):
    """CIFAR-10 from torchvision: ``root/cifar-10-batches-py``, downloaded if missing and allowed."""

    def __init__(self, root: str, split: str, download: bool = True):
        from torchvision.datasets import CIFAR10
        train = split == 'train'
        try:
            ds = CIFAR10(root, train=train, download=False)
        except RuntimeError:
            if not download:
                raise FileNotFoundError(_cifar_missing(root, 'data.download is false')) from None
            try:
                ds = CIFAR10(root, train=train, download=True)
            except Exception as err:  # no network, proxy, disk full: all mean "get it by hand"
                raise FileNotFoundError(_cifar_missing(root, f'download failed: {type(err).__name__}: {err}')) from err
        super().__init__(np.asarray(ds.data), np.asarray(ds.targets), list(ds.classes))


def _cifar_missing(root: str, why: str) -> str:
    return (f"CIFAR-10 is not under {os.path.abspath(root)} and {why}. Get cifar-10-python.tar.gz from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html, extract it so that "
            f"{os.path.join(os.path.abspath(root), 'cifar-10-batches-py')} exists, or set data.root=<folder>.")


IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')


class ImageFolderDataset(ImageDataset):
    """``root/<class>/<file>``; unreadable files are warned about and returned as None."""

    def __init__(self, root: str, class_to_idx: Optional[Dict[str, int]] = None, in_chans: int = 3):
        from torchvision.datasets.folder import find_classes, make_dataset
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder not found: {root} (expected {root}/<class>/<image files>)")
        found, found_map = find_classes(root)
        if class_to_idx is None:
            class_to_idx = found_map
        else:
            unknown = sorted(set(found) - set(class_to_idx))
            if unknown:
                raise ValueError(f"{root} has classes the training split lacks: {unknown[:10]}")
        self.class_to_idx = class_to_idx
        self.classes = sorted(class_to_idx, key=class_to_idx.get)
        try:  # torchvision refuses a class folder without images, naming the class but not the folder
            self.samples = make_dataset(root, {c: class_to_idx[c] for c in found}, extensions=IMG_EXTENSIONS)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{root}: {err}") from None
        if not self.samples:
            raise FileNotFoundError(f"no images with extensions {IMG_EXTENSIONS} under {root}")
        self.mode = 'L' if in_chans == 1 else 'RGB'

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int):
        from PIL import Image
        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                array = np.asarray(img.convert(self.mode))
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
            warnings.warn(f"skipping unreadable image {path}: {type(err).__name__}: {err}", CorruptImageWarning)
            return None, label
        if array.ndim == 2:
            array = array[..., None]
        return array, label


class SyntheticDataset(ImageDataset):
    """Generated images: each class is a fixed random low-resolution pattern, upsampled, plus noise.

    Learnable (so accuracy rises) and cheap; each image is a pure function of (seed, split, index).
    """

    def __init__(self, size: int, num_classes: int = 10, img_size: int = 32, in_chans: int = 3,
                 seed: int = 0, split: str = 'train'):
        self.size, self.img_size, self.in_chans = size, img_size, in_chans
        self.classes = [f'class_{i}' for i in range(num_classes)]
        rng = np.random.default_rng(seed)
        low = rng.uniform(0, 255, size=(num_classes, 4, 4, in_chans))
        reps = -(-img_size // 4)
        self.prototypes = np.repeat(np.repeat(low, reps, axis=1), reps, axis=2)[:, :img_size, :img_size]
        self.seed = seed + (0 if split == 'train' else 1_000_003)

    def __len__(self) -> int:
        return self.size

    def load(self, index: int):
        rng = np.random.default_rng([self.seed, index])
        label = int(rng.integers(len(self.classes)))
        noise = rng.normal(0, 40, size=self.prototypes.shape[1:])
        return np.clip(self.prototypes[label] + noise, 0, 255).astype(np.uint8), label


def build_dataset(data_cfg: Dict, split: str, seed: int = 0,
                  class_to_idx: Optional[Dict[str, int]] = None) -> ImageDataset:
    """The dataset named by ``data_cfg['dataset']`` for ``split`` ('train' or 'val')."""
    name = data_cfg['dataset']
    if split not in ('train', 'val'):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if name == 'digits':
        return DigitsDataset(split, seed=0)  # fixed split: comparable across runs and seeds
    if name == 'cifar10':
        return Cifar10Dataset(data_cfg['root'], split, download=data_cfg['download'])
    if name == 'imagefolder':
        folder = data_cfg['train_split'] if split == 'train' else data_cfg['val_split']
        return ImageFolderDataset(os.path.join(data_cfg['root'], folder), class_to_idx=class_to_idx,
                                  in_chans=data_cfg['in_chans'])
    if name == 'synthetic':
        size = data_cfg['synthetic_train_size'] if split == 'train' else data_cfg['synthetic_val_size']
        return SyntheticDataset(size, data_cfg['synthetic_num_classes'], data_cfg['synthetic_img_size'],
                                data_cfg['in_chans'], seed=seed, split=split)
    raise ValueError(f"unknown dataset {name!r}: expected digits, cifar10, imagefolder or synthetic")
