"""Shared fixtures for the training-engine tests: tiny recipes that train in seconds on a CPU."""
import copy
import os
import sys

import pytest
import torch
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A Vim small enough for a CPU test: 8x8 inputs, 4x4 patches -> 4 tokens + cls, width 16, depth 2.
TINY_RECIPE = {
    'name': 'tiny',
    'seed': 3,
    'model': {'name': 'vim_tiny_patch16_224', 'drop_path_rate': 0.1,
              'kwargs': {'img_size': 8, 'patch_size': 4, 'stride': 4, 'embed_dim': 16, 'depth': 2}},
    'data': {'dataset': 'synthetic', 'img_size': 8, 'synthetic_img_size': 8, 'synthetic_train_size': 96,
             'synthetic_val_size': 40, 'batch_size': 16, 'eval_batch_size': 16, 'num_workers': 0,
             'pin_memory': False},
    'aug': {'scale': [0.5, 1.0], 'color_jitter': 0.2, 'mixup': 0.5, 'cutmix': 0.5, 'label_smoothing': 0.1,
            'random_erase': 0.25, 'crop_pct': 1.0},
    'optim': {'lr': 2e-3, 'clip_grad': 1.0},
    'schedule': {'epochs': 3, 'warmup_epochs': 1},
    'train': {'device': 'cpu', 'ema': True, 'ema_decay': 0.9, 'log_every': 1, 'progress': 'log'},
}


@pytest.fixture
def tiny_recipe():
    return copy.deepcopy(TINY_RECIPE)


@pytest.fixture
def tiny_cfg(tiny_recipe):
    from vim.engine.config import load_config
    return load_config(recipe=tiny_recipe)


@pytest.fixture
def write_recipe(tmp_path):
    def write(recipe, name='recipe.yaml'):
        path = tmp_path / name
        path.write_text(yaml.safe_dump(recipe))
        return str(path)
    return write


@pytest.fixture
def vim_log():
    """The records of the 'vim.train' logger during a test, from a handler on that logger itself: independent of
    propagation, of the order tests run in and of pytest's caplog internals."""
    import logging

    class Records(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.records = []

        def emit(self, record):
            self.records.append(record)

        def messages(self, level=logging.DEBUG):
            return [r.getMessage() for r in self.records if r.levelno >= level]

    logger = logging.getLogger('vim.train')
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core CI machine, OpenMP spinning makes 2 threads far slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def subprocess_env():
    env = dict(os.environ)
    env['OMP_NUM_THREADS'] = '1'
    env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
    env.pop('WORLD_SIZE', None)
    env.pop('RANK', None)
    return env


@pytest.fixture
def run_env():
    return subprocess_env()


@pytest.fixture
def python():
    return sys.executable
