import os
import random

import numpy as np
import pytest
import timm
import torch

import vim  # noqa: F401
from vim.engine.config import load_config
from vim.engine.optim import build_optimizer, build_scheduler, param_groups
from vim.engine.state import (CheckpointError, capture_rng, check_compatible, load_checkpoint, load_model_state,
                              restore_rng, save_atomic)


def tiny_vim(**kw):
    args = dict(img_size=8, patch_size=4, stride=4, embed_dim=16, depth=3, num_classes=5)
    args.update(kw)
    return timm.create_model('vim_tiny_patch16_224', **args)


def test_weight_decay_groups_follow_no_weight_decay_and_1d_rule():
    model = tiny_vim()
    groups = param_groups(model, weight_decay=0.05)
    names = {n: g['weight_decay'] for g in groups for n in g['param_names']}
    assert set(names) == {n for n, p in model.named_parameters() if p.requires_grad}
    patterns = model.no_weight_decay()
    import fnmatch
    for name, p in model.named_parameters():
        exempt = p.ndim <= 1 or name.endswith('.bias') or any(fnmatch.fnmatchcase(name, pat) for pat in patterns)
        assert names[name] == (0.0 if exempt else 0.05), name
    assert names['pos_embed'] == 0.0 and names['head.weight'] == 0.05


def test_layer_decay_scales_lr_from_stem_to_head():
    model = tiny_vim()
    groups = param_groups(model, 0.05, layer_decay=0.5)
    scale = {n: g['lr_scale'] for g in groups for n in g['param_names']}
    # group_matcher: stem (patch_embed, pos_embed, cls_token) = layer 0, blocks 1..depth, then final norm/head
    assert scale['head.weight'] == 1.0
    assert scale['patch_embed.proj.weight'] == scale['pos_embed'] == pytest.approx(0.5 ** 4)
    block = [k for k in scale if k.startswith('layers.0.')][0]
    last = [k for k in scale if k.startswith('layers.2.')][0]
    assert scale[block] == pytest.approx(0.5 ** 3) and scale[last] == pytest.approx(0.5)
    opt = build_optimizer(model, load_config(overrides=['optim.layer_decay=0.5'])['optim'], lr=1e-3)
    sched = build_scheduler(opt, {'epochs': 2, 'warmup_epochs': 0, 'warmup_lr': 0.0, 'min_lr': 0.0}, 10)
    sched.step_update(0)
    lrs = {n: g['lr'] for g in opt.param_groups for n in g['param_names']}
    assert lrs['head.weight'] == pytest.approx(1e-3) and lrs['pos_embed'] == pytest.approx(1e-3 * 0.5 ** 4)


def test_cosine_schedule_with_warmup():
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([{'params': [p], 'lr_scale': 1.0}], lr=1.0)
    sched = build_scheduler(opt, {'epochs': 10, 'warmup_epochs': 2, 'warmup_lr': 0.0, 'min_lr': 0.1}, 5)
    lrs = []
    for step in range(50):
        sched.step_update(step)
        lrs.append(opt.param_groups[0]['lr'])
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5)          # linear warmup over 10 steps
    assert lrs[10] == pytest.approx(1.0)                             # peak right after warmup
    assert lrs[30] == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-6)       # half-way through the cosine
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] == pytest.approx(0.1, abs=2e-3)


def test_atomic_save_and_truncated_file(tmp_path):
    path = str(tmp_path / 'ck.pth')
    save_atomic({'model': {'w': torch.ones(1000)}, 'step': 3}, path)
    assert os.listdir(tmp_path) == ['ck.pth']  # no temporary left behind
    assert load_checkpoint(path)['step'] == 3
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=r'ck.pth \(\d+ bytes\): the file is truncated'):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match='missing.pth does not exist'):
        load_checkpoint(str(tmp_path / 'missing.pth'))


def test_wrong_model_checkpoint_is_refused_clearly(tmp_path):
    arch = {'model': 'vim_tiny_patch16_224', 'num_classes': 5, 'kwargs': {'depth': 3}}
    other = {'model': 'vim_small_patch16_224', 'num_classes': 10, 'kwargs': {'depth': 3}}
    with pytest.raises(CheckpointError, match=r"model: checkpoint has 'vim_small_patch16_224', this run builds "
                                              r"'vim_tiny_patch16_224'[\s\S]*num_classes: checkpoint has 10"):
        check_compatible({'arch': other}, arch, 'x.pth')
    small, big = tiny_vim(), tiny_vim(embed_dim=32, depth=2)
    with pytest.raises(CheckpointError, match=r'\d+ missing keys[\s\S]*pos_embed: model expects \(1, 5, 16\), ck has \(1, 5, 32\)'):
        load_model_state(small, big.state_dict(), 'ck')


def test_rng_capture_restore_roundtrip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = capture_rng()
    save_atomic({'model': {}, 'rng': [state]}, str(tmp_path / 'r.pth'))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng(load_checkpoint(str(tmp_path / 'r.pth'))['rng'][0])  # loads with weights_only=True
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
