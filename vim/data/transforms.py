"""Train and eval pipelines: albumentations on uint8 HxWxC arrays, returning normalised CHW tensors.

Every transform is called as ``transform(image, seed)``: the seed fixes the sample's augmentation, so
the same (epoch, position) always gets the same crop, flip and policy, whatever process or worker
draws it. That is what makes a resumed run repeat an uninterrupted one.

Train: random resized crop (or pad-and-crop / resize), optional affine jitter, horizontal flip, colour
jitter or a RandAugment-like policy (``SomeOf(n)`` over albumentations ops at a magnitude 0..10, as in
timm's ``rand-m9``; as in timm, colour jitter is off when the policy is on), normalisation, random
erasing. Eval: resize the short side to ``img_size / crop_pct`` and centre-crop ``img_size``.

``aug.backend: timm`` is timm's own ``create_transform`` (PIL images; the ImageNet recipes use it, so they
are the released DeiT/Vim recipe exactly: ``aug.auto_augment`` such as ``rand-m9-mstd0.5-inc1``, colour jitter,
random erasing, bicubic resizing, crop_pct); each call seeds Python's, NumPy's and torch's RNGs, which timm's
ops draw from, and restores them afterwards.

``aug.backend: none`` skips albumentations (tensor conversion, resize and normalisation only); used
where albumentations is not installed, e.g. the GPU throughput benchmark on generated data.
"""
import math
import random
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ['build_train_transform', 'build_eval_transform', 'resolve_data_settings']


def resolve_data_settings(model: torch.nn.Module, data_cfg: Dict, aug_cfg: Dict) -> Dict[str, Any]:
    """img_size, mean, std, crop_pct and interpolation: the recipe's values, else the model's pretrained_cfg."""
    pcfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    in_chans = data_cfg['in_chans']
    img_size = data_cfg['img_size'] or pcfg.get('input_size', (3, 224, 224))[-1]
    mean = aug_cfg['mean'] or pcfg.get('mean', (0.485, 0.456, 0.406))
    std = aug_cfg['std'] or pcfg.get('std', (0.229, 0.224, 0.225))
    if len(mean) != in_chans:  # e.g. grey digits with an RGB pretrained_cfg: average the channels
        mean = [float(np.mean(mean))] * in_chans
        std = [float(np.mean(std))] * in_chans
    return {
        'img_size': int(img_size),
        'mean': [float(m) for m in mean],
        'std': [float(s) for s in std],
        'crop_pct': float(aug_cfg['crop_pct'] or pcfg.get('crop_pct', 0.875)),
        'interpolation': aug_cfg['interpolation'] or pcfg.get('interpolation', 'bicubic'),
    }


def _albumentations():
    try:
        import albumentations as A
    except ImportError as err:
        raise ImportError("augmentation needs albumentations (pip install albumentations), "
                          "or set aug.backend=none for plain resize + normalisation") from err
    return A


def _cv2_interp(name: str) -> int:
    import cv2
    table = {'nearest': cv2.INTER_NEAREST, 'bilinear': cv2.INTER_LINEAR, 'bicubic': cv2.INTER_CUBIC,
             'area': cv2.INTER_AREA, 'lanczos': cv2.INTER_LANCZOS4, 'random': cv2.INTER_CUBIC}
    if name not in table:
        raise ValueError(f"interpolation must be one of {sorted(table)}, got {name!r}")
    return table[name]


def _to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    if image.ndim == 2:
        image = image[..., None]
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


class AlbumentationsTransform:
    """An ``A.Compose`` seeded per call; returns a float CHW tensor."""

    def __init__(self, compose):
        self.compose = compose

    def __call__(self, image: np.ndarray, seed: Optional[int] = None) -> torch.Tensor:
        if seed is not None:
            self.compose.set_random_seed(seed)
        return _to_chw_tensor(self.compose(image=image)['image'])

    def __repr__(self) -> str:
        return repr(self.compose)


class PlainTransform:
    """No augmentation: resize to ``img_size`` (bilinear) if needed, scale to 0..1 and normalise."""

    def __init__(self, img_size: int, mean: Sequence[float], std: Sequence[float]):
        self.img_size = img_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: np.ndarray, seed: Optional[int] = None) -> torch.Tensor:
        x = _to_chw_tensor(image) / 255.0
        if x.shape[-2:] != (self.img_size, self.img_size):
            x = F.interpolate(x[None], size=(self.img_size, self.img_size), mode='bilinear',
                              align_corners=False, antialias=True)[0]
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return f'PlainTransform(img_size={self.img_size})'


class TimmTransform:
    """A timm (torchvision-style) transform on a PIL image made from the uint8 array, seeded per call."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image: np.ndarray, seed: Optional[int] = None) -> torch.Tensor:
        from PIL import Image
        pil = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
        if seed is None:
            return self.transform(pil)
        state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                random.seed(seed)
                np.random.seed(seed % 2 ** 32)
                torch.manual_seed(seed)
                return self.transform(pil)
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])

    def __repr__(self) -> str:
        return repr(self.transform)


def _timm_transform(settings: Dict[str, Any], aug_cfg: Dict, is_training: bool) -> TimmTransform:
    from timm.data import create_transform
    common = dict(input_size=settings['img_size'], interpolation=settings['interpolation'],
                  mean=tuple(settings['mean']), std=tuple(settings['std']), crop_pct=settings['crop_pct'])
    if not is_training:
        return TimmTransform(create_transform(is_training=False, **common))
    return TimmTransform(create_transform(
        is_training=True, scale=tuple(aug_cfg['scale'] or (1.0, 1.0)), ratio=tuple(aug_cfg['ratio']),
        hflip=float(aug_cfg['hflip']), color_jitter=float(aug_cfg['color_jitter'] or 0.0),
        auto_augment=aug_cfg['auto_augment'], re_prob=float(aug_cfg['random_erase']), re_mode='pixel', re_count=1,
        **common))


def _without_albumentations(settings: Dict[str, Any], aug_cfg: Dict, is_training: bool):
    """The pipeline of ``aug.backend`` timm or none."""
    if aug_cfg['backend'] == 'timm':
        return _timm_transform(settings, aug_cfg, is_training)
    return PlainTransform(settings['img_size'], settings['mean'], settings['std'])


def _randaugment_ops(A, magnitude: float):
    """RandAugment-like op list; ``magnitude`` on timm's 0..10 scale."""
    m = max(0.0, min(float(magnitude), 10.0)) / 10.0
    return [
        A.Affine(rotate=(-30 * m, 30 * m), p=1.0),
        A.Affine(shear={'x': (-17 * m, 17 * m), 'y': (0, 0)}, p=1.0),
        A.Affine(shear={'x': (0, 0), 'y': (-17 * m, 17 * m)}, p=1.0),
        A.Affine(translate_percent={'x': (-0.45 * m, 0.45 * m), 'y': (0, 0)}, p=1.0),
        A.Affine(translate_percent={'x': (0, 0), 'y': (-0.45 * m, 0.45 * m)}, p=1.0),
        A.Posterize(num_bits=(max(1, 8 - int(round(4 * m))), 8), p=1.0),
        A.Solarize(threshold_range=(max(0.0, 1.0 - m), 1.0), p=1.0),
        A.Equalize(p=1.0),
        A.AutoContrast(p=1.0),
        A.Sharpen(alpha=(0.0, min(1.0, 0.9 * m + 0.05)), p=1.0),
        A.RandomBrightnessContrast(brightness_limit=0.9 * m, contrast_limit=0.9 * m, p=1.0),
        A.ColorJitter(brightness=0, contrast=0, saturation=0.9 * m, hue=0, p=1.0),
    ]


def build_train_transform(settings: Dict[str, Any], aug_cfg: Dict, in_chans: int = 3):
    """The training pipeline for ``settings`` (from :func:`resolve_data_settings`) and ``aug_cfg``."""
    size = settings['img_size']
    if aug_cfg['backend'] != 'albumentations':
        return _without_albumentations(settings, aug_cfg, is_training=True)
    A = _albumentations()
    interp = _cv2_interp(settings['interpolation'])
    ops = []
    if aug_cfg.get('pad_crop'):
        pad = int(aug_cfg['pad_crop'])
        ops += [A.Resize(size, size, interpolation=interp),
                A.PadIfNeeded(size + 2 * pad, size + 2 * pad, border_mode=0, fill=0),
                A.RandomCrop(size, size)]
    elif aug_cfg['scale']:
        ops.append(A.RandomResizedCrop(size=(size, size), scale=tuple(aug_cfg['scale']),
                                       ratio=tuple(aug_cfg['ratio']), interpolation=interp))
    else:
        ops.append(A.Resize(size, size, interpolation=interp))
    affine = aug_cfg.get('affine')
    if affine:
        ops.append(A.Affine(translate_percent=(-affine.get('translate', 0.0), affine.get('translate', 0.0)),
                            rotate=(-affine.get('rotate', 0.0), affine.get('rotate', 0.0)),
                            scale=(1 - affine.get('scale', 0.0), 1 + affine.get('scale', 0.0)),
                            interpolation=interp, p=1.0))
    if aug_cfg['hflip']:
        ops.append(A.HorizontalFlip(p=aug_cfg['hflip']))
    ra = aug_cfg.get('randaugment')
    if ra:
        ops.append(A.SomeOf(_randaugment_ops(A, ra.get('magnitude', 9)), n=int(ra.get('num_ops', 2)),
                            replace=False, p=1.0))
    elif aug_cfg['color_jitter']:
        cj = float(aug_cfg['color_jitter'])
        ops.append(A.ColorJitter(brightness=cj, contrast=cj, saturation=cj if in_chans == 3 else 0,
                                 hue=0, p=1.0))
    ops.append(A.Normalize(mean=settings['mean'], std=settings['std'], max_pixel_value=255.0))
    if aug_cfg['random_erase']:
        ops.append(A.Erasing(p=float(aug_cfg['random_erase']), fill=0))
    return AlbumentationsTransform(A.Compose(ops))


def build_eval_transform(settings: Dict[str, Any], aug_cfg: Dict):
    """Resize the short side to ``floor(img_size / crop_pct)``, centre-crop ``img_size``, normalise."""
    size = settings['img_size']
    if aug_cfg['backend'] != 'albumentations':
        return _without_albumentations(settings, aug_cfg, is_training=False)
    A = _albumentations()
    interp = _cv2_interp(settings['interpolation'])
    scale_size = int(math.floor(size / settings['crop_pct']))
    return AlbumentationsTransform(A.Compose([
        A.SmallestMaxSize(max_size=scale_size, interpolation=interp),
        A.CenterCrop(size, size),
        A.Normalize(mean=settings['mean'], std=settings['std'], max_pixel_value=255.0),
    ]))
