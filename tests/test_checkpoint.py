"""Released-format checkpoints load through timm and give the released model's outputs.

No network: checkpoints are built in the released envelope from random weights, and the package's
output is checked against an independent float64 implementation of the released forward pass."""
import argparse

import pytest
import timm
import torch

import vim
from vim.detection import vim_detection_backbone
from vim.checkpoint import CheckpointError, convert_checkpoint, main as convert_main, unwrap_state_dict
from released_vim import released_forward, released_layout

SMALL = dict(embed_dim=32, depth=2)


def test_the_filter_lives_in_the_model_file():
    """As in timm: the model file holds its checkpoint filter, so it needs nothing from vim.checkpoint."""
    import ast
    import inspect

    import vim.checkpoint
    import vim.vision_mamba
    assert vim.checkpoint.checkpoint_filter_fn is vim.vision_mamba.checkpoint_filter_fn is vim.checkpoint_filter_fn
    assert vim.checkpoint.unwrap_state_dict is vim.vision_mamba.unwrap_state_dict
    tree = ast.parse(inspect.getsource(vim.vision_mamba))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert 'checkpoint' not in imported and '.checkpoint' not in imported


def random_released_state_dict(model_name='vim_tiny_patch16_224', img_size=64, num_classes=10, seed=0, **kw):
    """A state dict with the released parameter names and random values everywhere (A, D, norms too)."""
    model = timm.create_model(model_name, img_size=img_size, num_classes=num_classes, **SMALL, **kw)
    gen = torch.Generator().manual_seed(seed)
    return released_layout({k: torch.randn(v.shape, generator=gen) * (0.3 if 'A' not in k else 1.0)
                            for k, v in model.state_dict().items()})


def released_envelope(seed=0, **kw):
    """The layout hustvl/Vim's training script saves (DeiT style)."""
    return {
        'model': random_released_state_dict(seed=seed, **kw),
        'model_ema': random_released_state_dict(seed=seed + 1, **kw),
        'optimizer': {'state': {}, 'param_groups': [{'lr': 5e-4, 'params': [0, 1]}]},
        'lr_scheduler': {'last_epoch': 299}, 'epoch': 299, 'scaler': {'scale': 65536.0},
        'args': argparse.Namespace(model='vim_tiny_patch16_224', lr=5e-4, batch_size=128),
    }


@pytest.fixture(scope='module')
def released_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'vim_t_midclstok_test.pth'
    envelope = released_envelope()
    torch.save(envelope, path)
    return str(path), envelope


def load(path, **kw):
    # the test checkpoints have 10 classes: say so, or timm drops the head as it would a 1000-class one
    return timm.create_model('vim_tiny_patch16_224', pretrained=True, **SMALL, **kw,
                             pretrained_cfg_overlay=dict(file=path, num_classes=10)).eval()


def test_file_load_matches_released_forward(released_file):
    path, envelope = released_file
    model = load(path, img_size=64, num_classes=10)
    images = torch.randn(2, 3, 64, 64)
    expected = released_forward(envelope['model_ema'], images)  # timm's file loader prefers the EMA weights
    with torch.no_grad():
        got = model.double()(images.double())
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-7)
    with torch.no_grad():
        got32 = model.float()(images)
    torch.testing.assert_close(got32.double(), expected, rtol=1e-4, atol=1e-4)


def test_hub_envelope_picks_the_same_weights_as_the_file_loader(released_file):
    path, envelope = released_file
    # a hub load hands the filter the whole envelope, as a pretrained 'state_dict' source does
    from_hub = timm.create_model('vim_tiny_patch16_224', pretrained=True, img_size=64, num_classes=10, **SMALL,
                                 pretrained_cfg_overlay=dict(state_dict=envelope, num_classes=10))
    from_file = load(path, img_size=64, num_classes=10)
    for (k, a), b in zip(from_hub.state_dict().items(), from_file.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_middle_class_token_survives_resampling(released_file):
    path, envelope = released_file
    model = load(path, img_size=96, num_classes=10)                 # 4x4 grid -> 6x6 grid
    old = envelope['model_ema']['pos_embed']
    assert model.pos_embed.shape[1] == 37
    torch.testing.assert_close(model.pos_embed[0, 18], old[0, 8])  # class entry: index 8 at 16 patches, 18 at 36
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 96))
    assert out.shape == (1, 10) and torch.isfinite(out).all()
    # resampling to the same grid is the identity, and going back reproduces the released forward
    same = vim.resample_pos_embed(old, (4, 4), (4, 4))
    torch.testing.assert_close(same, old)


def test_other_classes_and_channels(released_file):
    path, envelope = released_file
    model = load(path, img_size=64, num_classes=3, in_chans=1)
    assert model.head.out_features == 3 and model.patch_embed.proj.in_channels == 1
    w = envelope['model_ema']['patch_embed.proj.weight']
    torch.testing.assert_close(model.patch_embed.proj.weight[:, 0], w.sum(1))  # timm's adapt_input_conv
    torch.testing.assert_close(model.layers[1].mixer.A_log[1], envelope['model_ema']['layers.1.mixer.A_b_log'])
    headless = load(path, img_size=64, num_classes=0)
    assert headless(torch.randn(1, 3, 64, 64)).shape == (1, 32)


def test_dynamic_size_model_loads_released_weights(released_file):
    path, envelope = released_file
    model = load(path, img_size=64, num_classes=10, dynamic_img_size=True)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.double()(images.double()), released_forward(envelope['model_ema'], images),
                                   rtol=1e-7, atol=1e-7)
        assert model(torch.randn(1, 3, 80, 48).double()).shape == (1, 10)


def test_foreign_and_corrupt_checkpoints_get_clear_errors(tmp_path, released_file):
    foreign = tmp_path / 'resnet.pth'
    torch.save({'model': timm.create_model('resnet18', num_classes=2).state_dict()}, foreign)
    with pytest.raises(KeyError, match='Not a Vision Mamba'):
        load(str(foreign), img_size=64, num_classes=10)
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(open(released_file[0], 'rb').read()[:1000])
    with pytest.raises(CheckpointError, match=r'cannot read checkpoint .*truncated.pth \(1000 bytes\): the file is truncated'):
        load(str(truncated), img_size=64, num_classes=10)
    with pytest.raises(CheckpointError, match=r'\(1000 bytes\): the file is truncated'):
        convert_checkpoint(str(truncated), str(tmp_path / 'out.safetensors'))


def test_convert_tool_writes_loadable_safetensors(tmp_path, released_file, capsys):
    path, envelope = released_file
    dst = tmp_path / 'out' / 'vim_tiny.safetensors'
    convert_main([path, str(dst)])
    assert dst.exists() and '"tensors"' in capsys.readouterr().out
    model = load(str(dst), img_size=64, num_classes=10)
    torch.testing.assert_close(model.norm_f.weight, envelope['model_ema']['norm_f.weight'])
    with pytest.raises(CheckpointError, match='missing.pth does not exist'):
        convert_checkpoint(str(tmp_path / 'missing.pth'), str(dst))


def test_unwrap_prefers_ema_and_strips_ddp_prefix():
    sd = {'module.pos_embed': torch.zeros(1)}
    assert list(unwrap_state_dict({'model': sd})) == ['pos_embed']
    assert unwrap_state_dict({'model': {'a': 1}, 'model_ema': {'b': 2}}) == {'b': 2}
    assert unwrap_state_dict({'model': {'a': 1}, 'model_ema': {'b': 2}}, use_ema=False) == {'a': 1}
    assert unwrap_state_dict({'model': {'a': 1}, 'model_ema': None}) == {'a': 1}


class Opaque:
    """A class a weights-only load refuses to unpickle."""


@pytest.mark.parametrize('content, reason', [
    (None, r'does not exist'),
    (b'PK\x03\x04 half a zip', r'\(\d+ bytes\): the file is truncated or not a PyTorch checkpoint'),
    ('object', r'pickles a Python object \(.*Opaque\) that a safe, weights-only load refuses'),
])
def test_every_pretrained_file_error_is_one_line_without_unsafe_advice(tmp_path, content, reason):
    path = tmp_path / 'weights.pth'
    if content == 'object':
        torch.save({'model': {'w': torch.ones(2)}, 'extra': Opaque()}, path)
    elif content is not None:
        path.write_bytes(content)
    for create in (lambda: load(str(path), img_size=64, num_classes=10),
                   lambda: vim_detection_backbone('vim_tiny_patch16_224', pretrained=str(path),
                                                 model_kwargs=SMALL)):
        with pytest.raises(CheckpointError, match=str(path) + '.*' + reason) as err:
            create()
        message = str(err.value)
        assert '\n' not in message and 'weights_only=False' not in message and err.value.__cause__ is None


def test_the_hub_without_a_network_fails_at_once_and_says_how_to_pass_a_file(monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'ENDPOINT', 'https://hub.invalid')     # .invalid never resolves
    monkeypatch.setattr('huggingface_hub.try_to_load_from_cache', lambda *a, **k: None)
    for offline in (False, True):
        monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', offline)
        with pytest.raises(CheckpointError) as err:
            timm.create_model('vim_tiny_patch16_224', pretrained=True)
        message = str(err.value)
        assert 'hustvl/Vim-tiny-midclstok' in message and 'vim_t_midclstok_76p1acc.pth' in message
        assert "pretrained_cfg_overlay=dict(file='vim_t_midclstok_76p1acc.pth')" in message and '\n' not in message
        assert ('HF_HUB_OFFLINE is set' if offline else 'no network: cannot resolve hub.invalid') in message


def test_convert_tool_errors_are_one_line(tmp_path, capsys):
    assert convert_main([str(tmp_path / 'missing.pth'), str(tmp_path / 'out.safetensors')]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f'vim-convert: error: checkpoint {tmp_path / "missing.pth"} does not exist'
    foreign = tmp_path / 'resnet.pth'
    torch.save({'model': {'fc.weight': torch.ones(2, 2)}}, foreign)
    assert convert_main([str(foreign), str(tmp_path / 'out.safetensors'), '--model', 'vim_tiny_patch16_224']) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'Not a Vision Mamba' in err[0] and not (tmp_path / 'out.safetensors').exists()
