import math

import pytest
import timm
import torch

import vim  # noqa: F401  (registers the Vim models)
from vim.checkpoint import CheckpointError
from vim.detection import VimDetectionBackbone, vim_detection_backbone

from detection_cases import TINY_MODEL, TINY_VIM


def _expected_grid(size, stride, divisor=32):
    return math.ceil(size / divisor) * divisor // stride


@pytest.mark.parametrize('model_name, patch_stride', [
    (TINY_MODEL, 16),
    ('vim_tiny_patch16_stride8_224', 8),
])
def test_feature_shapes_and_strides_for_many_sizes(model_name, patch_stride, tiny_backbone_kwargs):
    backbone = vim_detection_backbone(model_name, **tiny_backbone_kwargs)
    assert backbone.patch_stride == patch_stride
    assert backbone.out_channels == 32 and backbone.out_strides == [4, 8, 16, 32, 64]
    # square, non-square, not multiples of the patch size, smaller than one patch on a side
    for h, w in [(64, 64), (100, 140), (130, 97), (33, 47), (12, 80)]:
        out = backbone(torch.randn(2, 3, h, w))
        assert list(out) == ['0', '1', '2', '3', 'pool']
        for name, stride in zip(out, backbone.out_strides):
            # every level is the padded size (a multiple of 32) over its stride; 'pool' halves level '3'
            if name == 'pool':
                expected = tuple(-(-_expected_grid(s, 32) // 2) for s in (h, w))
            else:
                expected = (_expected_grid(h, stride), _expected_grid(w, stride))
            got = tuple(out[name].shape)
            assert got == (2, 32) + expected, f"{model_name} {h}x{w} level {name}: expected {expected}, got {got}"


def test_padding_matches_a_pre_padded_image(tiny_backbone_kwargs):
    """The backbone pads bottom/right with zeros, as torchvision's transform does: the maps of an image
    equal those of the same image already zero-padded to a multiple of 32."""
    backbone = vim_detection_backbone(TINY_MODEL, **tiny_backbone_kwargs).eval()
    image = torch.randn(1, 3, 70, 90)
    padded = torch.nn.functional.pad(image, (0, 96 - 90, 0, 96 - 70))
    with torch.no_grad():
        a, b = backbone(image), backbone(padded)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-4)


def test_tapping_several_blocks_prunes_the_rest(tiny_backbone_kwargs):
    kwargs = dict(tiny_backbone_kwargs, depth=6)
    backbone = vim_detection_backbone(TINY_MODEL, tap_indices=(0, 1, 2, 3), **kwargs)
    assert len(backbone.trunk.layers) == 4, "blocks after the last tap must be pruned"
    assert backbone.pyramid.num_inputs == 4
    out = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    # the last-block default keeps every block and drops the classifier head
    default = vim_detection_backbone(TINY_MODEL, **kwargs)
    assert len(default.trunk.layers) == 6
    assert not any(name.startswith('head.') for name, _ in default.trunk.named_parameters())


def test_tap_taken_from_the_named_block(tiny_backbone_kwargs):
    """The pyramid gets the trunk's own block output: compare with forward_intermediates directly."""
    backbone = vim_detection_backbone(TINY_MODEL, tap_indices=(0,), norm_taps=False,
                                      **tiny_backbone_kwargs).eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        taps = backbone.trunk_features(image)
        direct = backbone.trunk.forward_intermediates(image, indices=[0], intermediates_only=True)
    torch.testing.assert_close(taps[0], direct[0])


def test_invalid_inputs_raise_clear_errors(tiny_backbone_kwargs):
    backbone = vim_detection_backbone(TINY_MODEL, **tiny_backbone_kwargs)
    with pytest.raises(ValueError, match=r'Expected images of shape \(B, 3, H, W\), got \(2, 1, 64, 64\)'):
        backbone(torch.randn(2, 1, 64, 64))
    with pytest.raises(ValueError, match='out of range for a backbone of depth 2'):
        vim_detection_backbone(TINY_MODEL, tap_indices=(5,), **tiny_backbone_kwargs)
    with pytest.raises(ValueError, match='distinct and increasing'):
        vim_detection_backbone(TINY_MODEL, tap_indices=(1, 0), **tiny_backbone_kwargs)
    fixed = timm.create_model(TINY_MODEL, **TINY_VIM)  # dynamic_img_size=False
    with pytest.raises(ValueError, match='dynamic_img_size=True'):
        VimDetectionBackbone(fixed)


def test_pretrained_weights_load_from_a_file(tmp_path, tiny_backbone_kwargs):
    source = timm.create_model(TINY_MODEL, **TINY_VIM)
    path = tmp_path / 'vim_tiny_small.pth'
    torch.save({'model': source.state_dict()}, path)  # the released checkpoints' envelope
    backbone = vim_detection_backbone(TINY_MODEL, pretrained=str(path), **tiny_backbone_kwargs)
    loaded = backbone.trunk.state_dict()
    for name, value in source.state_dict().items():
        if name in loaded:
            torch.testing.assert_close(loaded[name], value, msg=f"parameter {name} was not loaded")
    assert 'layers.1.mixer.in_proj.weight' in loaded
    with pytest.raises(CheckpointError, match='does_not_exist.pth does not exist'):
        vim_detection_backbone(TINY_MODEL, pretrained=str(tmp_path / 'does_not_exist.pth'), **tiny_backbone_kwargs)
