"""The training loop end to end on tiny Vims: run directory, metrics, EMA, best checkpoint, faults."""
import json
import os

import numpy as np
import pytest
import torch
import yaml

from vim.data import SyntheticDataset
from vim.engine import CheckpointError, NonFiniteLossError, load_config, train
from vim.engine.cli import evaluate_main, train_main


def rows(run_dir, kind):
    with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
        return [r for r in map(json.loads, f) if r['type'] == kind]


def test_run_directory_metrics_and_learning(tmp_path, tiny_recipe):
    tiny_recipe['aug'].update(mixup=0.0, cutmix=0.0, random_erase=0.0, scale=None, color_jitter=0.0)
    tiny_recipe['model']['kwargs']['embed_dim'] = 32
    tiny_recipe['optim']['lr'] = 1e-2
    tiny_recipe['schedule'].update(epochs=4, warmup_epochs=0.5)
    cfg = load_config(recipe=tiny_recipe)
    run = str(tmp_path / 'run')
    summary = train(cfg, output=run)

    files = set(os.listdir(run))
    assert {'config.yaml', 'metrics.jsonl', 'last.pth', 'best.pth', 'summary.json', 'train.log'} <= files
    try:
        import matplotlib  # noqa: F401  (the 'plots' extra)
    except ImportError:
        assert not {'loss.png', 'accuracy.png', 'lr.png'} & files  # skipped, with a warning
    else:
        assert {'loss.png', 'accuracy.png', 'lr.png'} <= files
        with open(os.path.join(run, 'loss.png'), 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n'

    saved = yaml.safe_load(open(os.path.join(run, 'config.yaml')))
    assert saved['resolved']['global_batch'] == 16 and saved['resolved']['steps_per_epoch'] == 6
    assert saved['resolved']['img_size'] == 8 and saved['schedule']['epochs'] == 4

    epochs = rows(run, 'epoch')
    assert [r['epoch'] for r in epochs] == [1, 2, 3, 4]
    for r in epochs:
        assert 0 <= r['val_top1'] <= r['val_top5'] <= 100 and 'ema_top1' in r and 'ema_top5' in r
    steps = rows(run, 'step')
    assert [r['step'] for r in steps] == list(range(1, 25))
    peak = max(r['lr'] for r in steps)
    assert steps[0]['lr'] < peak and steps[-1]['lr'] < peak  # warmup, then cosine decay
    # the synthetic classes are learnable: training must beat chance (10 classes) by a wide margin
    assert epochs[-1]['train_loss'] < epochs[0]['train_loss']
    assert summary['best'] == max(r['val_top1'] for r in epochs) and summary['best'] >= 50.0

    best = torch.load(os.path.join(run, 'best.pth'), weights_only=True)
    assert best['epoch'] == summary['best_epoch'] and best['model_ema'] is not None

    # vim-evaluate on best.pth reproduces the validation accuracy recorded for that epoch
    out = str(tmp_path / 'eval.json')
    assert evaluate_main(['--checkpoint', run, '--output', out, 'train.device=cpu']) == 0
    res = json.load(open(out))['results']
    recorded = epochs[summary['best_epoch'] - 1]
    assert res['raw']['top1'] == pytest.approx(recorded['val_top1'])
    assert res['ema']['top1'] == pytest.approx(recorded['ema_top1'])
    assert res['raw']['count'] == 40

    # the same directory is not silently reused; resuming a different model is refused
    with pytest.raises(FileExistsError, match='--resume'):
        train(cfg, output=run)
    other = load_config(recipe=tiny_recipe, overrides=['model.kwargs.embed_dim=24'])
    with pytest.raises(CheckpointError, match=r"kwargs: checkpoint has .*'embed_dim': 32.*this run builds .*'embed_dim': 24"):
        train(other, resume=run)


class NaNDataset(SyntheticDataset):
    def load(self, index):
        image, label = super().load(index)
        return np.full(image.shape, np.nan, dtype=np.float32), label


def test_nan_loss_stops_or_skips(tmp_path, tiny_recipe):
    tiny_recipe['aug']['backend'] = 'none'
    tiny_recipe['schedule']['epochs'] = 1
    data = (NaNDataset(96, img_size=8), SyntheticDataset(40, img_size=8, split='val'))
    cfg = load_config(recipe=tiny_recipe)
    with pytest.raises(NonFiniteLossError, match=r'non-finite loss \(nan\).*epoch 1, step 0.*nan_policy=skip'):
        train(cfg, output=str(tmp_path / 'stop'), datasets=data)

    cfg = load_config(recipe=tiny_recipe, overrides=['train.nan_policy=skip'])
    summary = train(cfg, output=str(tmp_path / 'skip'), datasets=data)
    assert summary['final']['skipped_steps'] == 6
    ckpt = torch.load(str(tmp_path / 'skip' / 'last.pth'), weights_only=True)
    from vim.engine.model import build_model
    torch.manual_seed(cfg['seed'])
    init, _ = build_model(cfg, 10)
    for k, v in init.state_dict().items():  # every step was skipped: the weights never moved
        assert torch.equal(v, ckpt['model'][k]), k


def test_corrupt_training_images_are_counted(tmp_path, tiny_recipe):
    from PIL import Image
    for split in ('train', 'val'):
        for c in ('a', 'b'):
            os.makedirs(tmp_path / 'data' / split / c)
            for i in range(10):
                Image.fromarray(np.full((8, 8, 3), 10 * i + (100 if c == 'b' else 0), np.uint8)).save(
                    tmp_path / 'data' / split / c / f'{i}.png')
    (tmp_path / 'data' / 'train' / 'a' / 'x.jpg').write_bytes(b'not a jpeg')
    (tmp_path / 'data' / 'train' / 'b' / 'y.png').write_bytes(b'\x89PNG\r\n\x1a\ntruncated')
    tiny_recipe['data'].update(dataset='imagefolder', root=str(tmp_path / 'data'), batch_size=11)
    tiny_recipe['schedule']['epochs'] = 1
    with pytest.warns(UserWarning, match='skipping unreadable image'):
        summary = train(load_config(recipe=tiny_recipe), output=str(tmp_path / 'run'))
    assert summary['final']['skipped_images'] == 2  # 22 files, 2 batches of 11: both bad ones drawn once
    assert summary['final']['val_skipped_images'] == 0


def test_cli_reports_config_errors(capsys, write_recipe, tiny_recipe):
    path = write_recipe(tiny_recipe)
    assert train_main(['--config', path, 'optim.lrr=1']) == 1
    assert "unknown config key 'optim.lrr'; did you mean 'optim.lr'?" in capsys.readouterr().err
    assert train_main(['--config', path, '--print-config', 'schedule.epochs=9']) == 0
    assert yaml.safe_load(capsys.readouterr().out)['schedule']['epochs'] == 9


def test_progress_plain_lines_and_tty_bar(vim_log, capsys):
    from vim.engine.metrics import Progress
    p = Progress(total=4, epoch=0, epochs=2, mode='log', every=2)
    for step in range(1, 5):
        p.update(step, 32, 1.5, 1e-3)
    p.close()
    lines = vim_log.messages()
    assert len(lines) == 2 and lines[-1].startswith('epoch 1/2 step 4/4 loss 1.5000 lr 1.000e-03')
    assert 'img/s eta 0:00:00' in lines[-1]
    bar = Progress(total=3, epoch=1, epochs=2, mode='bar')
    bar.update(1, 32, 0.5, 1e-3)
    bar.close()
    err = capsys.readouterr().err
    assert 'epoch 2/2' in err and 'img_s=' in err and '1/3' in err


def test_evaluate_a_released_style_checkpoint(tmp_path, tiny_cfg, write_recipe, tiny_recipe):
    """A checkpoint from elsewhere ({'model', 'model_ema', 'args'}, no recipe inside) evaluates with --config."""
    import argparse
    from vim.engine.model import build_model
    model, _ = build_model(tiny_cfg, 10)
    path = str(tmp_path / 'released.pth')
    torch.save({'model': model.state_dict(), 'model_ema': model.state_dict(), 'args': argparse.Namespace(lr=1)}, path)
    out = str(tmp_path / 'r.json')
    assert evaluate_main(['--checkpoint', path]) == 1  # no recipe inside: must say so
    assert evaluate_main(['--checkpoint', path, '--config', write_recipe(tiny_recipe), '--output', out]) == 0
    res = json.load(open(out))['results']
    assert res['raw'] == res['ema'] and res['raw']['count'] == 40


@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
def test_autocast_modes_train_and_checkpoint_the_scaler(tmp_path, tiny_recipe, amp):
    tiny_recipe['train']['amp'] = amp
    tiny_recipe['schedule']['epochs'] = 1
    summary = train(load_config(recipe=tiny_recipe), output=str(tmp_path / amp))
    assert np.isfinite(summary['final']['train_loss']) and summary['final']['skipped_steps'] == 0
    scaler = torch.load(str(tmp_path / amp / 'last.pth'), weights_only=True)['scaler']
    assert (scaler.get('scale', 0) > 0) == (amp == 'fp16')  # fp16 trains through a GradScaler, bf16 needs none


def test_plots_are_skipped_with_a_warning_without_matplotlib(tmp_path, monkeypatch, vim_log):
    import logging
    import sys
    from vim.engine import plots
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib -> ImportError
    monkeypatch.setattr(plots, '_warned', False)
    assert plots.write_plots([{'type': 'step', 'step': 1, 'loss': 1.0, 'lr': 0.1}], str(tmp_path)) == []
    assert any('matplotlib is not installed: skipping plots' in m for m in vim_log.messages(logging.WARNING))
    assert os.listdir(tmp_path) == []


def test_finetune_from_a_run_checkpoint_at_a_new_size_and_class_count(tmp_path, tiny_recipe):
    """model.pretrained_file takes a vim-train checkpoint: new head, position embedding resampled 2x2 -> 4x4."""
    tiny_recipe['schedule']['epochs'] = 1
    train(load_config(recipe=tiny_recipe), output=str(tmp_path / 'pre'))
    pre = torch.load(str(tmp_path / 'pre' / 'best.pth'), weights_only=True)
    cfg = load_config(recipe=tiny_recipe, overrides=[
        'model.pretrained=true', f"model.pretrained_file={tmp_path / 'pre' / 'best.pth'}",
        'model.kwargs.img_size=16', 'data.img_size=16', 'data.synthetic_img_size=16',
        'data.synthetic_num_classes=4', 'schedule.epochs=1'])
    from vim.engine.model import build_model
    model, arch = build_model(cfg, 4)
    assert arch['kwargs']['img_size'] == 16 and model.get_classifier().out_features == 4
    src = pre['model_ema']  # timm's file loader prefers the EMA weights, as for released checkpoints
    assert torch.equal(model.state_dict()['layers.1.mixer.in_proj.weight'], src['layers.1.mixer.in_proj.weight'])
    assert model.pos_embed.shape[1] == 17 and src['pos_embed'].shape[1] == 5
    summary = train(cfg, output=str(tmp_path / 'ft'))
    assert summary['final']['val_top1'] is not None
    with pytest.raises(CheckpointError, match='checkpoint /nonexistent.pth does not exist'):
        build_model(load_config(recipe=tiny_recipe, overrides=['model.pretrained=true',
                                                                'model.pretrained_file=/nonexistent.pth']), 4)
