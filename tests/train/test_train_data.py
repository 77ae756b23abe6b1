import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from vim.data import (CorruptImageWarning, DigitsDataset, ImageFolderDataset, SyntheticDataset, build_dataset,
                      build_eval_loader, build_eval_transform, build_train_transform)
from vim.data.loader import SeededSampler, ShardSampler, build_train_loader
from vim.engine.config import load_config

SETTINGS = {'img_size': 16, 'mean': [0.5, 0.5, 0.5], 'std': [0.25, 0.25, 0.25], 'crop_pct': 0.8,
            'interpolation': 'bicubic'}


def test_digits_split_is_fixed_disjoint_and_stratified():
    pytest.importorskip('sklearn')
    train, val = DigitsDataset('train'), DigitsDataset('val')
    assert len(train) + len(val) == 1797
    assert 350 <= len(val) <= 370
    tr = {train.images[i].tobytes() + bytes([train.labels[i]]) for i in range(len(train))}
    va = {val.images[i].tobytes() + bytes([val.labels[i]]) for i in range(len(val))}
    assert not tr & va
    assert np.bincount(val.labels, minlength=10).min() >= 30  # every class in validation
    img, label = train.load(0)
    assert img.shape == (8, 8, 1) and img.dtype == np.uint8 and img.max() > 200
    assert np.array_equal(DigitsDataset('val').labels, val.labels)


def test_synthetic_images_are_a_function_of_the_index():
    a, b = SyntheticDataset(50, img_size=12, seed=1), SyntheticDataset(50, img_size=12, seed=1)
    x, y = a.load(7)
    x2, y2 = b.load(7)
    assert x.shape == (12, 12, 3) and np.array_equal(x, x2) and y == y2
    assert not np.array_equal(a.load(8)[0], x)


def test_cifar10_without_data_or_network_gives_a_clear_error(tmp_path):
    cfg = load_config(overrides=['data.dataset=cifar10', f'data.root={tmp_path}', 'data.download=false'])
    with pytest.raises(FileNotFoundError, match=r'CIFAR-10 is not under .* cifar-10-python.tar.gz'):
        build_dataset(cfg['data'], 'train')


def test_train_transform_is_seeded_per_sample():
    aug = load_config(overrides=['aug.randaugment={num_ops: 2, magnitude: 9}', 'aug.random_erase=0.5'])['aug']
    t = build_train_transform(SETTINGS, aug)
    img = np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    out = t(img, 1234)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert torch.equal(out, t(img, 1234))
    assert not torch.equal(out, t(img, 1235))


def test_eval_transform_resizes_by_crop_pct_then_centre_crops():
    aug = load_config()['aug']
    t = build_eval_transform({**SETTINGS, 'interpolation': 'nearest'}, aug)
    # a 40x20 image: short side -> floor(16 / 0.8) = 20 (unchanged), centre 16x16 crop of the 40x20
    img = np.zeros((40, 20, 3), dtype=np.uint8)
    img[:, 2:18] = 255  # the centre crop sees only this bright band
    out = t(img)
    assert out.shape == (3, 16, 16)
    assert torch.allclose(out, torch.full_like(out, (1.0 - 0.5) / 0.25))
    img2 = np.zeros((64, 64, 3), dtype=np.uint8)
    img2[22:42, 22:42] = 255  # the central 20/64 of the image, after the resize to 20: the 16 px crop is inside
    out2 = build_eval_transform({**SETTINGS, 'interpolation': 'area'}, aug)(img2)
    assert out2.shape == (3, 16, 16)


def test_plain_backend_needs_no_albumentations():
    aug = load_config(overrides=['aug.backend=none'])['aug']
    t = build_train_transform(SETTINGS, aug)
    out = t(np.full((8, 8, 3), 255, dtype=np.uint8), 0)
    assert out.shape == (3, 16, 16)
    assert torch.allclose(out, torch.full_like(out, 2.0))
    assert 'albumentations' not in type(t).__module__


def _write_folder(root, classes=('cat', 'dog'), per_class=3, corrupt=()):
    for c in classes:
        os.makedirs(root / c, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(np.full((10, 12, 3), 40 * i, dtype=np.uint8)).save(root / c / f'{i}.png')
    for rel in corrupt:
        (root / rel).write_bytes(b'\x89PNG\r\n\x1a\n this is not an image')


def test_imagefolder_skips_and_counts_corrupt_images(tmp_path):
    _write_folder(tmp_path / 'train', corrupt=['cat/bad.png', 'dog/broken.jpg'])
    ds = ImageFolderDataset(str(tmp_path / 'train'))
    assert ds.classes == ['cat', 'dog'] and len(ds) == 8
    cfg = load_config(overrides=['data.eval_batch_size=3', 'data.num_workers=0'])
    loader = build_eval_loader(ds, build_eval_transform({**SETTINGS, 'crop_pct': 1.0}, cfg['aug']), cfg['data'], 0, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        batches = list(loader)
    assert sum(b['skipped'] for b in batches) == 2
    assert sum(len(b['targets']) for b in batches if b['images'] is not None) == 6
    bad = [w for w in caught if issubclass(w.category, CorruptImageWarning)]
    assert len(bad) == 2 and 'bad.png' in ' '.join(str(w.message) for w in bad)


def test_imagefolder_val_uses_train_class_indices(tmp_path):
    _write_folder(tmp_path / 'train', classes=('a', 'b', 'c'))
    _write_folder(tmp_path / 'val', classes=('c',))
    cfg = load_config(overrides=['data.dataset=imagefolder', f'data.root={tmp_path}'])
    train = build_dataset(cfg['data'], 'train')
    val = build_dataset(cfg['data'], 'val', class_to_idx=train.class_to_idx)
    assert {label for _, label in val.samples} == {2}
    _write_folder(tmp_path / 'val', classes=('zebra',))
    with pytest.raises(ValueError, match='zebra'):
        build_dataset(cfg['data'], 'val', class_to_idx=train.class_to_idx)


def test_seeded_sampler_resumes_mid_epoch_with_the_same_draws():
    ds = SyntheticDataset(40)
    from torch.utils.data import DistributedSampler
    full = SeededSampler(DistributedSampler(ds, num_replicas=1, rank=0, seed=5), seed=5, rank=0)
    full.set_epoch(2)
    draws = list(full)
    part = SeededSampler(DistributedSampler(ds, num_replicas=1, rank=0, seed=5), seed=5, rank=0)
    part.set_epoch(2, start=16)
    assert list(part) == draws[16:] and len(part) == 24
    full.set_epoch(3)
    assert [i for _, i in full] != [i for _, i in draws]  # a new order each epoch


def test_shard_sampler_covers_each_sample_once():
    shards = [list(ShardSampler(11, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))


def test_train_loader_refuses_a_batch_larger_than_the_data():
    cfg = load_config(overrides=['data.batch_size=64', 'data.num_workers=0', 'aug.backend=none'])
    with pytest.raises(ValueError, match='batch_size=64 is larger than the 20 training samples'):
        build_train_loader(SyntheticDataset(40), build_train_transform(SETTINGS, cfg['aug']), cfg['data'], 0, 0, 2)


def test_repeated_augmentation_repeats_images_with_distinct_augmentations():
    cfg = load_config(overrides=['data.repeated_aug=3', 'data.batch_size=6', 'data.num_workers=0',
                                 'aug.backend=none'])
    loader = build_train_loader(SyntheticDataset(30), build_train_transform(SETTINGS, cfg['aug']), cfg['data'],
                                seed=1, rank=0, world_size=1)
    loader.sampler.set_epoch(0)
    draws = list(loader.sampler)
    indices = [i for _, i in draws]
    assert len(draws) == 30 and len(set(indices)) == 10          # 10 images, each 3 times
    assert all(indices.count(i) == 3 for i in set(indices))
    assert len({s for s, _ in draws}) == 30                        # every draw its own augmentation seed
    loader.sampler.set_epoch(1)
    assert [i for _, i in loader.sampler] != indices
    other = build_train_loader(SyntheticDataset(30), build_train_transform(SETTINGS, cfg['aug']), cfg['data'],
                               seed=2, rank=0, world_size=1)
    other.sampler.set_epoch(0)
    assert [i for _, i in other.sampler] != indices                # the run seed changes the order


def test_the_digits_recipe_states_the_split_it_trains_on():
    import re
    from vim.data.datasets import DigitsDataset
    pytest.importorskip('sklearn')
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    text = open(os.path.join(repo, 'configs', 'quickstart_digits.yaml')).read()
    train_n, val_n = (int(n.replace(',', '')) for n in re.search(r'([\d,]+) training / ([\d,]+) validation', text).groups())
    assert (train_n, val_n) == (len(DigitsDataset('train')), len(DigitsDataset('val')))


def test_imagenet_recipe_pipeline_is_timms_for_a_fixed_seed():
    """The ImageNet recipes train on timm's create_transform itself: same seed, same tensor; and the seeding
    leaves the caller's RNGs as they were."""
    import random

    from timm.data import create_transform
    from vim.data.transforms import resolve_data_settings
    import timm

    cfg = load_config(os.path.join(os.path.dirname(__file__), '..', '..', 'configs', 'imagenet_vim_tiny.yaml'),
                      ['data.img_size=64'])
    model = timm.create_model('vim_tiny_patch16_224', img_size=64, depth=1, embed_dim=16)
    settings = resolve_data_settings(model, cfg['data'], cfg['aug'])
    ours = build_train_transform(settings, cfg['aug'])
    theirs = create_transform(64, is_training=True, scale=(0.08, 1.0), ratio=(0.75, 1.3333333), hflip=0.5,
                              color_jitter=0.3, auto_augment='rand-m9-mstd0.5-inc1', interpolation='bicubic',
                              re_prob=0.25, re_mode='pixel', re_count=1, mean=(0.485, 0.456, 0.406),
                              std=(0.229, 0.224, 0.225), crop_pct=0.875)
    image = np.random.default_rng(0).integers(0, 256, (80, 96, 3), dtype=np.uint8)
    before = random.getstate(), torch.get_rng_state()
    outputs = []
    for seed in (1, 2, 3, 4):
        got = ours(image, seed)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        want = theirs(Image.fromarray(image))
        assert got.shape == (3, 64, 64) and torch.equal(got, want), seed
        outputs.append(got)
        random.setstate(before[0])
        torch.set_rng_state(before[1])
    assert not torch.equal(outputs[0], outputs[1])  # the seed draws the augmentation
    assert torch.equal(ours(image, 3), outputs[2])
    assert random.getstate() == before[0] and torch.equal(torch.get_rng_state(), before[1])
    evaluated = build_eval_transform(settings, cfg['aug'])(image)
    assert torch.equal(evaluated, create_transform(64, crop_pct=0.875, interpolation='bicubic')(Image.fromarray(image)))


def test_timm_and_albumentations_policies_are_not_mixed():
    from vim.engine.config import ConfigError
    with pytest.raises(ConfigError, match='aug.auto_augment .* needs aug.backend=timm'):
        load_config(overrides=['aug.auto_augment=rand-m9-mstd0.5-inc1'])
    with pytest.raises(ConfigError, match='aug.randaugment is the albumentations'):
        load_config(overrides=['aug.backend=timm', 'aug.randaugment={num_ops: 2, magnitude: 9}'])
