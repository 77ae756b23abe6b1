import glob
import os

import pytest
import yaml

from vim.engine.config import DEFAULTS, ConfigError, apply_overrides, load_config, parse_override

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_override_values_are_typed():
    assert parse_override('optim.lr=1e-3') == {'optim': {'lr': 0.001}}
    assert parse_override('train.ema=true') == {'train': {'ema': True}}
    assert parse_override('aug.scale=[0.5, 1.0]') == {'aug': {'scale': [0.5, 1.0]}}
    assert parse_override('model.pretrained_file=null') == {'model': {'pretrained_file': None}}
    cfg = apply_overrides(DEFAULTS, ['schedule.epochs=7', 'model.kwargs.depth=2', 'model.kwargs.embed_dim=32'])
    assert cfg['schedule']['epochs'] == 7
    assert cfg['model']['kwargs'] == {'depth': 2, 'embed_dim': 32}


def test_unknown_key_is_an_error_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.weight_decy'.*optim.weight_decay"):
        load_config(overrides=['optim.weight_decy=0.1'])
    with pytest.raises(ConfigError, match='must look like key.sub=value'):
        load_config(overrides=['epochs'])


def test_invalid_choice_names_the_choices():
    with pytest.raises(ConfigError, match=r"train.amp must be one of none, bf16, fp16; got 'fp8'"):
        load_config(overrides=['train.amp=fp8'])
    with pytest.raises(ConfigError, match='positive'):
        load_config(overrides=['data.batch_size=0'])


def test_base_recipe_chain(write_recipe):
    base = write_recipe({'name': 'parent', 'optim': {'lr': 0.1, 'weight_decay': 0.2},
                         'model': {'kwargs': {'depth': 4, 'embed_dim': 64}}}, 'parent.yaml')
    child = write_recipe({'base': os.path.basename(base), 'name': 'child', 'optim': {'lr': 5e-4},
                          'model': {'kwargs': {'depth': 2}}}, 'child.yaml')
    cfg = load_config(child, ['optim.weight_decay=0.3'])
    assert cfg['name'] == 'child'
    assert cfg['optim']['lr'] == 5e-4  # YAML 1.1 reads 5e-4 as a string; it must come back a float
    assert cfg['optim']['weight_decay'] == 0.3
    assert cfg['model']['kwargs'] == {'depth': 2, 'embed_dim': 64}


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(REPO, 'configs', '*.yaml'))),
                         ids=os.path.basename)
def test_shipped_recipes_load_and_build_their_model(path):
    """Every recipe in configs/ validates and names a model timm can build with its kwargs (on meta)."""
    import timm
    import torch
    import vim  # noqa: F401
    cfg = load_config(path)
    kwargs = dict(cfg['model']['kwargs'])
    kwargs.setdefault('in_chans', cfg['data']['in_chans'])
    if cfg['data']['img_size'] and 'img_size' not in kwargs:
        kwargs['img_size'] = cfg['data']['img_size']
    with torch.device('meta'):
        model = timm.create_model(cfg['model']['name'], num_classes=10, drop_path_rate=cfg['model']['drop_path_rate'],
                                  **kwargs)
    assert model.num_classes == 10
    assert isinstance(yaml.safe_dump(cfg), str)
