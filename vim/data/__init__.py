"""Datasets, augmentation pipelines and deterministic loaders for training Vim classifiers."""
from .datasets import (CorruptImageWarning, Cifar10Dataset, DigitsDataset, ImageFolderDataset, SyntheticDataset,
                       build_dataset)
from .loader import AugmentedDataset, SeededSampler, ShardSampler, build_eval_loader, build_train_loader
from .transforms import build_eval_transform, build_train_transform, resolve_data_settings

__all__ = [
    'CorruptImageWarning', 'Cifar10Dataset', 'DigitsDataset', 'ImageFolderDataset', 'SyntheticDataset', 'build_dataset',
    'AugmentedDataset', 'SeededSampler', 'ShardSampler', 'build_eval_loader', 'build_train_loader',
    'build_eval_transform', 'build_train_transform', 'resolve_data_settings',
]
