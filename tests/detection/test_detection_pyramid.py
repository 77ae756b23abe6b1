import pytest
import torch

from vim.detection import SimpleFeaturePyramid


@pytest.mark.parametrize('in_stride', [16, 8])
def test_levels_have_the_requested_strides(in_stride):
    pyramid = SimpleFeaturePyramid(in_channels=24, in_stride=in_stride, out_channels=16)
    h, w = 7 * 32 // in_stride, 5 * 32 // in_stride  # a 224 x 160 image
    out = pyramid([torch.randn(2, 24, h, w)])
    assert list(out) == ['0', '1', '2', '3', 'pool']
    assert pyramid.out_strides == [4, 8, 16, 32, 64]
    for name, stride in zip(out, pyramid.out_strides):
        expected = (2, 16, -(-224 // stride), -(-160 // stride))
        assert tuple(out[name].shape) == expected, f"level {name}: expected {expected}, got {tuple(out[name].shape)}"


def test_each_level_uses_its_own_input_when_given_one_per_level():
    pyramid = SimpleFeaturePyramid(in_channels=8, in_stride=16, out_channels=8, num_inputs=4, extra_pool=False)
    maps = [torch.randn(1, 8, 4, 4) for _ in range(4)]
    out = pyramid(maps)
    changed = [m.clone() for m in maps]
    changed[2] += 1.0  # only level '2' (stride 16) reads input 2
    out2 = pyramid(changed)
    assert list(out) == ['0', '1', '2', '3']
    for name in ['0', '1', '3']:
        torch.testing.assert_close(out[name], out2[name])
    assert not torch.allclose(out['2'], out2['2'])


def test_custom_strides_and_no_pool():
    pyramid = SimpleFeaturePyramid(in_channels=16, in_stride=16, out_channels=8, strides=(8, 16, 32, 64),
                                   extra_pool=False)
    out = pyramid([torch.randn(1, 16, 8, 8)])
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(16, 16), (8, 8), (4, 4), (2, 2)]


@pytest.mark.parametrize('kwargs, message', [
    (dict(strides=(4, 12)), 'power-of-two'),
    (dict(strides=(8, 4)), 'increasing'),
    (dict(num_inputs=3), 'num_inputs'),
])
def test_invalid_configurations_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SimpleFeaturePyramid(in_channels=16, in_stride=16, **kwargs)


def test_wrong_inputs_raise_with_expected_and_got():
    pyramid = SimpleFeaturePyramid(in_channels=16, in_stride=16)
    with pytest.raises(ValueError, match=r'\(B, 16, h, w\), got \(1, 8, 4, 4\)'):
        pyramid([torch.randn(1, 8, 4, 4)])
    with pytest.raises(ValueError, match='expects 1 input map'):
        pyramid([torch.randn(1, 16, 4, 4)] * 2)
