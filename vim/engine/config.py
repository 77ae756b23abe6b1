"""Training recipes: YAML files merged over defaults, with ``key.sub=value`` overrides.

A recipe is a nested mapping whose keys must all exist in :data:`DEFAULTS` (a typo is an error that
names the closest known key). A recipe may start from another one with ``base: other.yaml`` (resolved
relative to the including file). Overrides from the command line are ``dotted.key=value`` strings whose
values are parsed as YAML (``5``, ``1e-3``, ``true``, ``null``, ``[0.5, 1.0]``).
"""
import copy
import difflib
import os
from typing import Any, Dict, Iterable, Optional

import yaml

__all__ = ['DEFAULTS', 'ConfigError', 'load_config', 'apply_overrides', 'merge', 'dump_config']


class ConfigError(ValueError):
    """A recipe or an override that does not fit the schema."""


DEFAULTS: Dict[str, Any] = {
    'name': 'run',
    'seed': 0,
    'output_dir': 'runs',
    'model': {
        'name': 'vim_tiny_patch16_224',
        'pretrained': False,
        'pretrained_file': None,     # local file for pretrained=True (released checkpoint or a run's .pth)
        'drop_path_rate': 0.0,
        'drop_rate': 0.0,
        'kwargs': {},                # extra timm.create_model kwargs: img_size, patch_size, stride, ...
    },
    'data': {
        'dataset': 'digits',         # digits | cifar10 | imagefolder | synthetic
        'root': 'data',
        'download': True,            # cifar10 only
        'train_split': 'train',      # imagefolder sub-folder names
        'val_split': 'val',
        'img_size': None,            # default: the model's pretrained_cfg input_size
        'in_chans': 3,
        'batch_size': 128,           # per process
        'eval_batch_size': 256,      # per process
        'num_workers': 4,
        'pin_memory': True,
        'repeated_aug': 1,           # >1: timm RepeatAugSampler with this many repeats (DeiT uses 3)
        'synthetic_train_size': 1024,
        'synthetic_val_size': 256,
        'synthetic_num_classes': 10,
        'synthetic_img_size': 32,
    },
    'aug': {
        'backend': 'albumentations',  # albumentations | timm (timm's create_transform) | none (normalise only)
        'pad_crop': None,            # int p: resize, pad by p, random crop (CIFAR style); replaces scale
        'scale': [0.08, 1.0],        # random resized crop scale; null = plain resize
        'ratio': [0.75, 1.3333333],
        'hflip': 0.5,
        'color_jitter': 0.4,         # 0 or null disables
        'randaugment': None,         # {num_ops: 2, magnitude: 9} or null (albumentations backend)
        'auto_augment': None,        # timm backend: timm's policy string, e.g. rand-m9-mstd0.5-inc1
        'affine': None,              # {translate: 0.1, rotate: 10, scale: 0.1} or null (small datasets)
        'random_erase': 0.0,
        'crop_pct': None,            # default: model pretrained_cfg crop_pct
        'interpolation': None,       # default: model pretrained_cfg interpolation
        'mean': None,                # default: model pretrained_cfg mean
        'std': None,
        'mixup': 0.0,
        'cutmix': 0.0,
        'mixup_prob': 1.0,
        'mixup_switch_prob': 0.5,
        'mixup_mode': 'batch',
        'label_smoothing': 0.0,
    },
    'optim': {
        'name': 'adamw',
        'lr': 5e-4,
        'lr_base_batch': None,       # if set, lr is scaled by global_batch / lr_base_batch
        'weight_decay': 0.05,
        'betas': [0.9, 0.999],
        'eps': 1e-8,
        'layer_decay': None,         # e.g. 0.75: lr scale per group_matcher layer; null = no decay
        'clip_grad': None,           # max global grad norm, null = off
    },
    'schedule': {
        'epochs': 100,
        'warmup_epochs': 5,
        'warmup_lr': 1e-6,
        'min_lr': 1e-5,
    },
    'train': {
        'device': 'auto',            # auto | cpu | cuda
        'cpu_threads': None,         # torch intra-op threads per process; null = torch's default
        'amp': 'none',               # none | bf16 | fp16
        'ema': False,
        'ema_decay': 0.99996,
        'ema_warmup': False,
        'nan_policy': 'stop',        # stop | skip
        'best_metric': 'top1',       # top1 | ema_top1
        'eval_every': 1,             # epochs
        'save_every_steps': 0,       # extra mid-epoch checkpoints; 0 = only at epoch end
        'log_every': 50,             # steps between log lines / metric rows
        'progress': 'auto',          # auto (bar on a TTY) | bar | log
        'grad_checkpointing': False,
        'compile': None,             # torch.compile backend: inductor (or true), aot_eager, ...; null = eager
        'compile_mode': None,        # inductor's mode: default | max-autotune-no-cudagraphs | ...; null = default
        'cuda_graph': False,         # replay forward+loss+backward as a CUDA graph (one GPU, fixed batch shape)
        'max_steps_per_epoch': None,  # cap (benchmarks, smoke runs)
        'plots': True,
    },
}

_ROOT_ONLY = {'base'}
_FREE_FORM = {('model', 'kwargs'), ('aug', 'randaugment'), ('aug', 'affine')}


def merge(base: Dict[str, Any], update: Dict[str, Any], path: tuple = ()) -> Dict[str, Any]:
    """Return ``base`` updated by ``update``, refusing keys unknown to ``base`` (except free-form maps)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        where = path + (key,)
        if key not in out:
            close = difflib.get_close_matches(str(key), [str(k) for k in out], n=1)
            hint = f"; did you mean '{'.'.join(path + (close[0],))}'?" if close else ''
            raise ConfigError(f"unknown config key '{'.'.join(map(str, where))}'{hint}")
        if where in _FREE_FORM:  # free-form maps: merged key by key, any key allowed
            if isinstance(out[key], dict) and isinstance(value, dict):
                out[key] = _deep_update(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        elif isinstance(out[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{'.'.join(where)}' expects a mapping, got {value!r}")
            out[key] = merge(out[key], value, where)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: str, seen: Iterable[str] = ()) -> Dict[str, Any]:
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"recipe {path} includes itself through 'base'")
    if not os.path.isfile(path):
        raise ConfigError(f"recipe file not found: {path}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping at the top level, got {type(data).__name__}")
    base = data.pop('base', None)
    if base is None:
        return data
    parent = _read_yaml(os.path.join(os.path.dirname(path), base), tuple(seen) + (path,))
    return _deep_update(parent, data)


def _deep_update(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> Dict[str, Any]:
    """``'optim.lr=1e-3'`` -> ``{'optim': {'lr': 0.001}}`` (the value is parsed as YAML)."""
    if '=' not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split('=', 1)
    keys = [k for k in key.strip().split('.') if k]
    if not keys:
        raise ConfigError(f"override '{text}' has an empty key")
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, str) and _looks_numeric(value):
        value = float(value)
    for k in reversed(keys):
        value = {k: value}
    return value


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def apply_overrides(cfg: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    for text in overrides:
        cfg = merge(cfg, parse_override(text))
    return cfg


def load_config(path: Optional[str] = None, overrides: Iterable[str] = (),
                recipe: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Defaults, then the recipe (the file at ``path`` with its ``base`` chain, or the mapping
    ``recipe``), then the overrides; validated."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        recipe = _read_yaml(path)
    if recipe is not None:
        recipe = {k: v for k, v in recipe.items() if k != 'resolved'}  # a run's config.yaml
        cfg = merge(cfg, _normalise_numbers(recipe))
    cfg = apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def _normalise_numbers(value: Any) -> Any:
    """YAML 1.1 reads ``5e-4`` as a string; turn such strings into floats."""
    if isinstance(value, dict):
        return {k: _normalise_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise_numbers(v) for v in value]
    if isinstance(value, str) and _looks_numeric(value) and value.strip().lower() not in ('nan', 'inf', '-inf'):
        return float(value)
    return value


_CHOICES = {
    ('data', 'dataset'): ('digits', 'cifar10', 'imagefolder', 'synthetic'),
    ('aug', 'backend'): ('albumentations', 'timm', 'none'),
    ('aug', 'mixup_mode'): ('batch', 'pair', 'elem'),
    ('optim', 'name'): ('adamw',),
    ('train', 'device'): ('auto', 'cpu', 'cuda'),
    ('train', 'amp'): ('none', 'bf16', 'fp16'),
    ('train', 'nan_policy'): ('stop', 'skip'),
    ('train', 'best_metric'): ('top1', 'ema_top1'),
    ('train', 'progress'): ('auto', 'bar', 'log'),
}


def validate(cfg: Dict[str, Any]) -> None:
    for (section, key), choices in _CHOICES.items():
        value = cfg[section][key]
        if value not in choices:
            raise ConfigError(f"{section}.{key} must be one of {', '.join(choices)}; got {value!r}")
    positive = [('data', 'batch_size'), ('data', 'eval_batch_size'), ('schedule', 'epochs'),
                ('optim', 'lr'), ('data', 'repeated_aug'), ('train', 'log_every'), ('train', 'eval_every')]
    for section, key in positive:
        value = cfg[section][key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{section}.{key} must be a positive number; got {value!r}")
    if cfg['schedule']['warmup_epochs'] < 0:
        raise ConfigError(f"schedule.warmup_epochs must be >= 0; got {cfg['schedule']['warmup_epochs']!r}")
    if cfg['train']['best_metric'] == 'ema_top1' and not cfg['train']['ema']:
        raise ConfigError("train.best_metric=ema_top1 needs train.ema=true")
    aug = cfg['aug']
    if aug['auto_augment'] and aug['backend'] != 'timm':
        raise ConfigError(f"aug.auto_augment is timm's policy string and needs aug.backend=timm; got backend "
                          f"{aug['backend']!r} (the albumentations backend's policy is aug.randaugment)")
    if aug['randaugment'] and aug['backend'] == 'timm':
        raise ConfigError("aug.randaugment is the albumentations backend's policy; with aug.backend=timm set "
                          "aug.auto_augment, e.g. rand-m9-mstd0.5-inc1")
    _validate_compile(cfg['train'])
    if cfg['model']['pretrained_file'] and not cfg['model']['pretrained']:
        raise ConfigError("model.pretrained_file is set but model.pretrained is false; set model.pretrained=true")


def _validate_compile(tcfg: Dict[str, Any]) -> None:
    backend = tcfg['compile']
    if not (backend is None or isinstance(backend, (bool, str))):
        raise ConfigError(f"train.compile must be a torch.compile backend name, true (inductor) or null; "
                          f"got {backend!r}")
    if tcfg['compile_mode'] is not None and backend in (None, False):
        raise ConfigError("train.compile_mode is set but train.compile is off; set train.compile=inductor")
    if not tcfg['cuda_graph']:
        return
    if tcfg['amp'] == 'fp16':
        raise ConfigError("train.cuda_graph needs train.amp none or bf16, got fp16 (its loss scale changes between "
                          "steps, which a recorded graph cannot follow)")
    if tcfg['grad_checkpointing']:
        raise ConfigError("train.cuda_graph cannot record a step with train.grad_checkpointing=true; turn one off")
    if tcfg['compile_mode'] in ('reduce-overhead', 'max-autotune'):
        raise ConfigError(f"train.compile_mode={tcfg['compile_mode']} records CUDA graphs itself; with "
                          f"train.cuda_graph=true use the default mode or max-autotune-no-cudagraphs")


def dump_config(cfg: Dict[str, Any], path: str) -> None:
    with open(path, 'w') as f:
        yaml.safe_dump(cfg, f, sort_keys=False, default_flow_style=None)
