"""On a CUDA GPU (``pytest -m gpu tests/detection``): the detectors train under bf16 autocast through
the Triton kernels and agree with the CPU reference path."""
import pytest
import torch

from vim.detection import ShapesDataset, collate_detection, fasterrcnn_vim, vim_detection_backbone

from detection_cases import TINY_MODEL

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU'),
]


def test_backbone_on_gpu_matches_the_cpu(tiny_backbone_kwargs):
    backbone = vim_detection_backbone(TINY_MODEL, **tiny_backbone_kwargs).eval()
    image = torch.randn(2, 3, 100, 140)
    with torch.no_grad():
        cpu = backbone(image)
        gpu = backbone.cuda()(image.cuda())
    for name in cpu:
        torch.testing.assert_close(gpu[name].cpu(), cpu[name], rtol=1e-3, atol=1e-3)


def test_faster_rcnn_trains_under_bf16_autocast(tiny_backbone_kwargs):
    model = fasterrcnn_vim(3, TINY_MODEL, backbone_kwargs=tiny_backbone_kwargs, min_size=256, max_size=384).cuda()
    data = ShapesDataset(2, (256, 384), object_size=(24, 96), seed=0)
    images, targets = collate_detection([data[i] for i in range(2)])
    images = [im.cuda() for im in images]
    targets = [{k: v.cuda() for k, v in t.items()} for t in targets]
    with torch.autocast('cuda', dtype=torch.bfloat16):
        losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    grad = model.backbone.trunk.layers[0].mixer.in_proj.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    model.eval()
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
        out = model(images)
    assert len(out) == 2 and out[0]['boxes'].shape[1] == 4
