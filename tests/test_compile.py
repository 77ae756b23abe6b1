"""torch.compile and torch.export of a Vim on the reference path (CPU), and the eager cache of the mixers'
stacked parameters (BiMambaMixer.direction_params) under compile and after the weights change. The Triton path's
compile and export cases: tests/kernels/compile_cases.py."""
import io

import torch

from vim.kernels import use_backend
from vim.layers import BiMambaMixer
from vim.vision_mamba import VisionMamba


def tiny_vim():
    return VisionMamba(img_size=32, patch_size=8, embed_dim=32, depth=2, num_classes=5)


def test_compile_fullgraph_reference_path():
    model = tiny_vim()
    image, grad_out = torch.randn(2, 3, 32, 32), torch.randn(2, 5)
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    with use_backend('reference'):
        out, ref = compiled(image), model(image)
        torch.testing.assert_close(out, ref)
        grads = torch.autograd.grad(out, list(model.parameters()), grad_out)
        ref_grads = torch.autograd.grad(ref, list(model.parameters()), grad_out)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_export_round_trip_reference_path():
    model = tiny_vim().eval()
    image = torch.randn(2, 3, 32, 32)
    with use_backend('reference'), torch.no_grad():
        program = torch.export.export(model, (image,))
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        buffer.seek(0)
        loaded = torch.export.load(buffer).module()
        torch.testing.assert_close(loaded(image), model(image))
        other = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(loaded(other), model(other))


def test_direction_params_cache_follows_weights_eager_and_compiled():
    """The stacks kept between eager no-grad calls are rebuilt after an in-place update of a weight; a compiled
    model reads the weights it is given every call; both agree with a fresh model."""
    model = tiny_vim().eval()
    image = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    mixer = model.layers[0].mixer
    assert isinstance(mixer, BiMambaMixer)
    with use_backend('reference'), torch.no_grad():
        before = model(image)
        first = mixer.direction_params()
        assert all(a is b for a, b in zip(first, mixer.direction_params()))     # kept while nothing changes
        torch.testing.assert_close(compiled(image), before)
        for block in model.layers:                          # in place: same storage, new version
            block.mixer.A_b_log.mul_(0.5)
            block.mixer.conv1d.weight.add_(0.1 * torch.randn_like(block.mixer.conv1d.weight))
        rebuilt = mixer.direction_params()
        assert rebuilt[4] is not first[4] and torch.equal(rebuilt[4][1], -torch.exp(mixer.A_b_log.float()))
        after = model(image)
        fresh = tiny_vim().eval()
        fresh.load_state_dict(model.state_dict())
        expected = fresh(image)
        assert not torch.allclose(after, before)
        torch.testing.assert_close(after, expected)
        torch.testing.assert_close(compiled(image), expected)
        model.layers[1].mixer.D.copy_(torch.randn_like(model.layers[1].mixer.D))   # after the compile, too
        fresh.load_state_dict(model.state_dict())
        torch.testing.assert_close(compiled(image), fresh(image))
        torch.testing.assert_close(model(image), fresh(image))
