"""torch.compile and torch.export of a Vim on the reference path (CPU), and a compiled model after its weights
change. The Triton path's compile and export cases: tests/kernels/compile_cases.py."""
import io

import torch

from vim.kernels import use_backend
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


def test_compiled_model_follows_weight_updates():
    """A compiled model reads the weights it holds on every call: after in-place updates (as an optimizer step
    makes) it agrees with a fresh model given the new weights."""
    model = tiny_vim().eval()
    image = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    with use_backend('reference'), torch.no_grad():
        before = compiled(image)
        torch.testing.assert_close(before, model(image))
        for block in model.layers:                          # in place: same storage, new version
            block.mixer.A_log[1].mul_(0.5)
            block.mixer.conv_weight.add_(0.1 * torch.randn_like(block.mixer.conv_weight))
        fresh = tiny_vim().eval()
        fresh.load_state_dict(model.state_dict())
        after = compiled(image)
        assert not torch.allclose(after, before)
        torch.testing.assert_close(after, fresh(image))
        torch.testing.assert_close(model(image), fresh(image))
