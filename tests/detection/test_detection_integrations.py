"""mmdetection / detectron2 registration, through stand-ins for their registries (neither is installed)."""
import collections
import sys
import types

import torch
from torch import nn

from vim.detection import integrations
from vim.detection.integrations import (
    MMDetVimBackbone, add_vim_config, register_available, register_detectron2, register_mmdet,
)

from detection_cases import TINY_MODEL, TINY_VIM


class FakeMMRegistry:
    """The part of mmengine's ``Registry`` that registration and building use."""

    def __init__(self):
        self.modules = {}

    def __contains__(self, name):
        return name in self.modules

    def register_module(self, name=None, module=None, force=False):
        if name in self.modules and not force:
            raise KeyError(f'{name} is already registered')
        self.modules[name] = module

    def build(self, cfg):
        cfg = dict(cfg)
        return self.modules[cfg.pop('type')](**cfg)


class FakeD2Registry:
    """The part of detectron2's ``Registry`` used: ``register(fn)`` under ``fn.__name__``, ``get``."""

    def __init__(self):
        self.obj = {}

    def __contains__(self, name):
        return name in self.obj

    def register(self, fn):
        assert fn.__name__ not in self.obj, f'{fn.__name__} registered twice'
        self.obj[fn.__name__] = fn
        return fn

    def get(self, name):
        return self.obj[name]


class FakeD2Backbone(nn.Module):
    """detectron2's ``Backbone`` base class: an nn.Module whose subclasses define ``output_shape``."""


ShapeSpec = collections.namedtuple('ShapeSpec', ['channels', 'height', 'width', 'stride'], defaults=[None] * 4)


class FakeCfgNode(types.SimpleNamespace):
    pass


def test_mmdet_registration_builds_a_backbone_from_a_config():
    registry = FakeMMRegistry()
    assert register_mmdet(registry) == 'VimSimpleFeaturePyramid'
    assert register_mmdet(registry) == 'VimSimpleFeaturePyramid'  # idempotent
    backbone = registry.build(dict(type='VimSimpleFeaturePyramid', model_name=TINY_MODEL, out_channels=16,
                                   **TINY_VIM))
    assert isinstance(backbone, MMDetVimBackbone)
    outs = backbone(torch.randn(1, 3, 64, 96))
    assert isinstance(outs, tuple) and len(outs) == 5
    assert [tuple(o.shape) for o in outs] == [(1, 16, 64 // s, 96 // s) for s in (4, 8, 16, 32)] + [(1, 16, 1, 2)]
    assert backbone.out_strides == [4, 8, 16, 32, 64]


def test_detectron2_registration_builds_a_backbone_from_a_config():
    registry = FakeD2Registry()
    name = register_detectron2(registry, backbone_base=FakeD2Backbone, shape_spec=ShapeSpec)
    assert name == 'build_vim_backbone' and name in registry
    assert register_detectron2(registry, backbone_base=FakeD2Backbone, shape_spec=ShapeSpec) == name

    cfg = FakeCfgNode(MODEL=FakeCfgNode())
    add_vim_config(cfg)
    assert cfg.MODEL.VIM.MODEL_NAME == 'vim_small_patch16_224' and cfg.MODEL.VIM.OUT_CHANNELS == 256
    cfg.MODEL.VIM.MODEL_NAME, cfg.MODEL.VIM.OUT_CHANNELS, cfg.MODEL.VIM.DROP_PATH_RATE = TINY_MODEL, 16, 0.0
    built = registry.get(name)(cfg, None)  # what detectron2's build_backbone calls
    assert isinstance(built, FakeD2Backbone) and built.net.out_channels == 16
    assert len(built.net.trunk.layers) == 24  # vim_tiny's own depth: the config names the model
    # a narrow trunk (width and depth are not config keys) through the backbone class directly
    backbone_class = integrations.detectron2_backbone_class(FakeD2Backbone, ShapeSpec)
    backbone = backbone_class(model_name=TINY_MODEL, out_channels=16, **TINY_VIM)
    assert isinstance(backbone, FakeD2Backbone)
    shapes = backbone.output_shape()
    assert list(shapes) == ['p2', 'p3', 'p4', 'p5', 'p6']
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32, 64] and {s.channels for s in shapes.values()} == {16}
    assert backbone.size_divisibility == 32
    outs = backbone(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape[-2:]) for k, v in outs.items()} == {
        'p2': (16, 16), 'p3': (8, 8), 'p4': (4, 4), 'p5': (2, 2), 'p6': (1, 1)}
    # the registered builder reads MODEL.VIM
    assert integrations._detectron2_kwargs(cfg) == dict(
        model_name=TINY_MODEL, pretrained=False, out_channels=16, tap_indices=(-1,), drop_path_rate=0.0,
        grad_checkpointing=False)
    cfg.MODEL.VIM.PRETRAINED = 'default'
    assert integrations._detectron2_kwargs(cfg)['pretrained'] is True


def test_register_available_uses_only_frameworks_already_imported(monkeypatch):
    for name in ['mmdet.registry', 'detectron2.modeling']:
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert register_available() == []

    mm = FakeMMRegistry()
    monkeypatch.setitem(sys.modules, 'mmdet', types.ModuleType('mmdet'))
    monkeypatch.setitem(sys.modules, 'mmdet.registry', types.SimpleNamespace(MODELS=mm))
    d2 = FakeD2Registry()
    monkeypatch.setitem(sys.modules, 'detectron2', types.ModuleType('detectron2'))
    monkeypatch.setitem(sys.modules, 'detectron2.modeling', types.SimpleNamespace(
        BACKBONE_REGISTRY=d2, Backbone=FakeD2Backbone, ShapeSpec=ShapeSpec))
    assert register_available() == ['mmdet', 'detectron2']
    assert 'VimSimpleFeaturePyramid' in mm and 'build_vim_backbone' in d2
