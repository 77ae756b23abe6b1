"""What a user sees when a run cannot start or stops: one line naming the input, nothing left behind, the
error in train.log once the run exists, and logging that no number of runs in one process duplicates."""
import logging
import os

import numpy as np
import pytest
import torch

from vim.data import SyntheticDataset
from vim.engine import NonFiniteLossError, load_config, train
from vim.engine.cli import evaluate_main, train_main
from vim.engine.metrics import close_logging, setup_logging


def one_error_line(capsys, prog):
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f'{prog}: error: '), captured.err
    assert 'Traceback' not in captured.err + captured.out and 'weights_only' not in captured.err
    return lines[0]


def test_setup_logging_is_idempotent_and_leaves_other_handlers(tmp_path, vim_log):
    logger = logging.getLogger('vim.train')
    for _ in range(3):
        setup_logging(str(tmp_path), True)
    own = [h for h in logger.handlers if h is not vim_log]
    assert len(own) == 2 and vim_log in logger.handlers    # stdout and train.log, once each; the test's kept
    logger.info('one record')
    assert open(tmp_path / 'train.log').read().count('one record') == 1
    close_logging()
    assert logger.handlers == [vim_log] and logger.propagate


@pytest.mark.parametrize('case', ['empty image folder', 'corrupt pretrained file', 'missing CIFAR-10'])
def test_a_run_that_cannot_start_says_why_in_one_line_and_leaves_no_directory(tmp_path, capsys, write_recipe,
                                                                           tiny_recipe, case):
    bad = tmp_path / 'input'
    if case == 'empty image folder':
        (bad / 'train' / 'cat').mkdir(parents=True)
        overrides = ['data.dataset=imagefolder', f'data.root={bad}']
        expected = f"{bad / 'train'}: Found no valid file for the classes cat"
    elif case == 'corrupt pretrained file':
        bad.write_bytes(b'\x80\x02not a checkpoint at all')
        overrides, expected = ['model.pretrained=true', f'model.pretrained_file={bad}'], f'cannot read checkpoint {bad}'
    else:
        bad.mkdir()
        overrides, expected = ['data.dataset=cifar10', f'data.root={bad}', 'data.download=false'], 'CIFAR-10 is not under'
    out = tmp_path / 'runs' / 'never-started'
    assert train_main(['--config', write_recipe(tiny_recipe), '--output', str(out), *overrides]) == 1
    assert expected in one_error_line(capsys, 'vim-train')
    assert not out.exists()


def test_resume_from_a_corrupt_checkpoint_names_the_file(tmp_path, capsys):
    corrupt = tmp_path / 'run' / 'last.pth'
    corrupt.parent.mkdir()
    corrupt.write_bytes(os.urandom(512))
    assert train_main(['--resume', str(corrupt)]) == 1
    assert f'cannot read checkpoint {corrupt} (512 bytes)' in one_error_line(capsys, 'vim-train')
    assert train_main(['--resume', str(tmp_path / 'nowhere')]) == 1
    assert 'nowhere' in one_error_line(capsys, 'vim-train')
    assert evaluate_main(['--checkpoint', str(corrupt)]) == 1
    assert f'cannot read checkpoint {corrupt}' in one_error_line(capsys, 'vim-evaluate')


class NaNAfterOneEpoch(SyntheticDataset):
    """Finite images for the first epoch's batches, NaN after: the run fails once its directory exists."""
    calls = 0

    def load(self, index):
        image, label = super().load(index)
        NaNAfterOneEpoch.calls += 1
        if NaNAfterOneEpoch.calls > len(self):
            image = np.full(image.shape, np.nan, dtype=np.float32)
        return image, label


def test_a_run_that_fails_after_it_started_logs_the_error_in_train_log(tmp_path, tiny_recipe):
    tiny_recipe['aug'].update(mixup=0.0, cutmix=0.0)
    tiny_recipe['schedule']['epochs'] = 2
    cfg = load_config(recipe=tiny_recipe)
    datasets = (NaNAfterOneEpoch(96, 10, 8, seed=1, split='train'), SyntheticDataset(40, 10, 8, seed=1, split='val'))
    run = tmp_path / 'run'
    with pytest.raises(NonFiniteLossError):
        train(cfg, output=str(run), datasets=datasets)
    log = open(run / 'train.log').read()
    assert 'run failed: NonFiniteLossError: non-finite loss' in log and 'Traceback' in log
    assert (run / 'last.pth').exists()                    # the first epoch's checkpoint: resumable
    logger = logging.getLogger('vim.train')
    assert not [h for h in logger.handlers if getattr(h, '_vim_run_handler', False)]   # closed after the run


def test_two_runs_in_one_process_log_each_line_once(tmp_path, tiny_recipe, vim_log):
    tiny_recipe['schedule']['epochs'] = 1
    for name in ('a', 'b'):
        train(load_config(recipe=tiny_recipe), output=str(tmp_path / name))
    done = [m for m in vim_log.messages() if m.startswith('done: ')]
    assert len(done) == 2
    for name in ('a', 'b'):
        assert open(tmp_path / name / 'train.log').read().count('done: ') == 1
    assert torch.load(tmp_path / 'b' / 'last.pth', weights_only=True)['epoch'] == 1
