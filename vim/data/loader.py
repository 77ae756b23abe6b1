"""DataLoaders whose sample order and augmentation are pure functions of (seed, epoch, position).

- :class:`SeededSampler` wraps an index sampler (DistributedSampler or timm's RepeatAugSampler, both
  seeded by ``seed + epoch``) and yields ``(sample_seed, index)`` pairs; it can start mid-epoch.
- :class:`AugmentedDataset` applies the transform with that sample seed.
- :func:`collate_skipping` drops unreadable images (``None``) from a batch and counts them.
- Evaluation shards the set without padding (``rank::world_size``) so the synchronised sums count
  every image exactly once.
"""
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torch.utils.data._utils.collate import default_collate

__all__ = ['SeededSampler', 'ShardSampler', 'AugmentedDataset', 'collate_skipping', 'build_train_loader',
           'build_eval_loader', 'Batch']


def sample_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank, position]).generate_state(1)[0])


class SeededSampler(Sampler):
    """Yields ``(sample_seed, index)`` from ``inner``; ``set_epoch(epoch, start)`` skips ``start`` draws."""

    def __init__(self, inner: Sampler, seed: int, rank: int):
        self.inner, self.seed, self.rank = inner, seed, rank
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        for position, index in enumerate(self.inner):
            if position >= self.start:
                yield sample_seed(self.seed, self.epoch, self.rank, position), int(index)

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.start)


class ShardSampler(Sampler):
    """Indices ``rank, rank + world, ...``: each sample on exactly one process, no padding."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, size, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class AugmentedDataset(Dataset):
    """``dataset.load(index)`` then ``transform(image, seed)``; an unreadable image yields None."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        seed, index = item if isinstance(item, tuple) else (None, item)
        image, label = self.dataset.load(index)
        if image is None:
            return None
        return self.transform(image, seed), label


class Batch(dict):
    """``images`` (B, C, H, W) or None when every image was unreadable, ``targets`` (B,), ``skipped``."""


def collate_skipping(samples: List[Optional[Tuple[torch.Tensor, int]]]) -> Batch:
    good = [s for s in samples if s is not None]
    skipped = len(samples) - len(good)
    if not good:
        return Batch(images=None, targets=None, skipped=skipped)
    images, targets = default_collate(good)
    return Batch(images=images, targets=targets, skipped=skipped)


def _private_generator(seed: int) -> torch.Generator:
    # DataLoader draws each iterator's worker base seed from this, not from the global RNG, so that
    # starting an epoch (or a resume mid-epoch) leaves the global torch RNG untouched.
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def build_train_loader(dataset, transform, data_cfg: Dict, seed: int, rank: int, world_size: int) -> DataLoader:
    repeats = int(data_cfg['repeated_aug'])
    if repeats > 1:
        from timm.data.distributed_sampler import RepeatAugSampler
        selected_round = 256 if len(dataset) >= 256 * world_size else 0
        inner = RepeatAugSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                 num_repeats=repeats, selected_round=selected_round)
        if seed:
            inner = _SeedOffsetSampler(inner, seed)
    else:
        inner = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                   drop_last=False)
    batch_size = int(data_cfg['batch_size'])
    if len(inner) < batch_size:
        raise ValueError(f"data.batch_size={batch_size} is larger than the {len(inner)} training samples "
                         f"each of the {world_size} process(es) gets; lower data.batch_size")
    sampler = SeededSampler(inner, seed, rank)
    return DataLoader(AugmentedDataset(dataset, transform), batch_size=batch_size, sampler=sampler,
                      num_workers=int(data_cfg['num_workers']), pin_memory=bool(data_cfg['pin_memory']),
                      drop_last=True, collate_fn=collate_skipping, generator=_private_generator(seed),
                      persistent_workers=False)


class _SeedOffsetSampler(Sampler):
    """timm's RepeatAugSampler seeds with the epoch alone; shift the epoch so the run seed counts too."""

    def __init__(self, inner, seed: int):
        self.inner, self.offset = inner, int(seed) * 100_003

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch + self.offset)

    def __iter__(self):
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)


def build_eval_loader(dataset, transform, data_cfg: Dict, rank: int, world_size: int) -> DataLoader:
    return DataLoader(AugmentedDataset(dataset, transform), batch_size=int(data_cfg['eval_batch_size']),
                      sampler=ShardSampler(len(dataset), rank, world_size),
                      num_workers=int(data_cfg['num_workers']), pin_memory=bool(data_cfg['pin_memory']),
                      drop_last=False, collate_fn=collate_skipping, generator=_private_generator(0))


def steps_per_epoch(loader: DataLoader, cap: Optional[int] = None) -> int:
    steps = len(loader.sampler.inner) // loader.batch_size
    return min(steps, int(cap)) if cap else steps

