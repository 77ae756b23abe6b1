"""Fault tolerance and scale: SIGKILL + --resume equals an uninterrupted run; DDP over gloo with torchrun."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from vim.engine import load_config, train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(REPO, 'tools', 'train.py')


def read_rows(run_dir):
    path = os.path.join(run_dir, 'metrics.jsonl')
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out


def assert_same_run(a_dir, b_dir):
    a = torch.load(os.path.join(a_dir, 'last.pth'), weights_only=True)
    b = torch.load(os.path.join(b_dir, 'last.pth'), weights_only=True)
    assert (a['epoch'], a['step']) == (b['epoch'], b['step'])
    for part in ('model', 'model_ema'):
        for k, v in a[part].items():
            torch.testing.assert_close(b[part][k], v, rtol=1e-5, atol=1e-6, msg=f'{part}.{k} differs')
    ra, rb = read_rows(a_dir), read_rows(b_dir)
    assert [(r['type'], r['step']) for r in ra] == [(r['type'], r['step']) for r in rb]
    for x, y in zip(ra, rb):
        for k in ('loss', 'lr', 'train_loss', 'val_top1', 'val_top5', 'val_loss', 'ema_top1', 'ema_loss'):
            if k in x:
                assert y[k] == pytest.approx(x[k], rel=1e-5, abs=1e-6), (x['type'], x['step'], k)


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, tiny_recipe, write_recipe, run_env):
    tiny_recipe['train'].update(save_every_steps=2)   # mid-epoch checkpoints: the kill lands inside an epoch
    recipe = write_recipe(tiny_recipe)

    reference = str(tmp_path / 'reference')
    train(load_config(recipe), output=reference)

    run = str(tmp_path / 'killed')
    proc = subprocess.Popen([sys.executable, TRAIN, '--config', recipe, '--output', run], env=run_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    # kill once step 9 is logged: the last checkpoint is then the mid-epoch one of step 8 (epoch 2, batch 2),
    # and the rows of step 9 (and maybe more) must be dropped and redone by the resumed run
    while not any(r['type'] == 'step' and r['step'] >= 9 for r in read_rows(run)):
        assert proc.poll() is None, f'training exited early: {proc.stderr.read().decode()[-2000:]}'
        assert time.time() < deadline, 'training made no progress'
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(run, 'summary.json')), 'the run finished before it could be killed'
    killed_at = torch.load(os.path.join(run, 'last.pth'), weights_only=True)
    assert 0 < killed_at['step'] < 18 and killed_at['batch_in_epoch'] > 0

    res = subprocess.run([sys.executable, TRAIN, '--resume', run], env=run_env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (f"resumed at epoch {killed_at['epoch'] + 1}, batch {killed_at['batch_in_epoch']}, "
            f"step {killed_at['step']}") in res.stdout
    assert_same_run(reference, run)


def test_truncated_last_checkpoint_gives_clear_error(tmp_path, tiny_recipe, capsys):
    from vim.engine.cli import train_main
    tiny_recipe['schedule']['epochs'] = 1
    run = str(tmp_path / 'run')
    train(load_config(recipe=tiny_recipe), output=run)
    path = os.path.join(run, 'last.pth')
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[: len(data) // 3])
    assert train_main(['--resume', run]) == 1
    err = capsys.readouterr().err
    assert 'vim-train: error: cannot read checkpoint' in err and 'last.pth' in err and 'truncated' in err


def descendants(root):
    parent = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    parent[int(entry)] = int(f.read().rsplit(')', 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [root]
    while frontier:
        kids = [pid for pid, ppid in parent.items() if ppid in frontier]
        found += kids
        frontier = kids
    return found


def kill_when_step_logged(proc, run, step, deadline_s=240):
    deadline = time.time() + deadline_s
    while not any(r['type'] == 'step' and r['step'] >= step for r in read_rows(run)):
        assert proc.poll() is None, f'training exited early: {proc.stderr.read().decode()[-3000:]}'
        assert time.time() < deadline, 'training made no progress'
        time.sleep(0.01)
    # torchrun starts its workers in sessions of their own: kill the launcher and every descendant at once,
    # as a batch scheduler ending the job would
    for pid in [proc.pid] + descendants(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    assert not os.path.exists(os.path.join(run, 'summary.json')), 'the run finished before it could be killed'


def test_torchrun_two_processes_gloo(tmp_path, tiny_recipe, write_recipe, run_env):
    tiny_recipe['data']['batch_size'] = 8          # per process: the global batch stays 16
    tiny_recipe['schedule']['epochs'] = 2
    tiny_recipe['train']['save_every_steps'] = 2
    recipe = write_recipe(tiny_recipe)
    run = str(tmp_path / 'ddp')
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', TRAIN]
    res = subprocess.run(torchrun + ['--config', recipe, '--output', run], env=run_env, capture_output=True,
                         text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]

    # the same run killed (SIGKILL, launcher and workers) after step 9 and resumed on two processes
    killed = str(tmp_path / 'ddp_killed')
    proc = subprocess.Popen(torchrun + ['--config', recipe, '--output', killed], env=run_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_when_step_logged(proc, killed, 9)
    at = torch.load(os.path.join(killed, 'last.pth'), weights_only=True)
    assert 8 <= at['step'] < 12 and len(at['rng']) == 2   # killed inside the second (last) epoch
    resumed = subprocess.run(torchrun + ['--resume', killed], env=run_env, capture_output=True, text=True,
                             timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert f"resumed at epoch {at['epoch'] + 1}, batch {at['batch_in_epoch']}, step {at['step']}" in resumed.stdout, \
        resumed.stdout[-3000:]
    assert_same_run(run, killed)

    rows = read_rows(run)
    epochs = [r for r in rows if r['type'] == 'epoch']
    assert [r['epoch'] for r in epochs] == [1, 2]          # rank 0 alone writes: no duplicated rows
    assert [r['step'] for r in rows if r['type'] == 'step'] == list(range(1, 13))
    assert res.stdout.count('epoch 2/2 |') == 1             # rank 0 alone logs
    cfg = json.loads(json.dumps(__import__('yaml').safe_load(open(os.path.join(run, 'config.yaml')))))
    assert cfg['resolved']['world_size'] == 2 and cfg['resolved']['global_batch'] == 16
    assert cfg['resolved']['steps_per_epoch'] == 6

    ckpt = torch.load(os.path.join(run, 'last.pth'), weights_only=True)
    assert len(ckpt['rng']) == 2                            # each rank's RNG state, for an exact resume

    # synchronised evaluation covered the 40 validation images once: one process agrees exactly
    from vim.engine.cli import evaluate_main
    out = str(tmp_path / 'eval.json')
    assert evaluate_main(['--checkpoint', os.path.join(run, 'last.pth'), '--output', out]) == 0
    res1 = json.load(open(out))['results']
    assert res1['raw']['count'] == 40
    assert res1['raw']['top1'] == pytest.approx(epochs[-1]['val_top1'])
    assert res1['raw']['loss'] == pytest.approx(epochs[-1]['val_loss'], rel=1e-5)
    assert res1['ema']['top1'] == pytest.approx(epochs[-1]['ema_top1'])
