import pytest
import torch

from vim.detection import ShapesDataset, collate_detection, fasterrcnn_vim, maskrcnn_vim, retinanet_vim

from detection_cases import TINY_MODEL

# torchvision's transform resizes so the short side is min_size: 100 and 120 px, not multiples of 16;
# fewer proposals and RoI samples than the defaults (made for 800 px images) keep the CPU steps short
DETECTOR_KWARGS = dict(min_size=100, max_size=160, rpn_post_nms_top_n_train=200, rpn_post_nms_top_n_test=100,
                       box_batch_size_per_image=64, box_detections_per_img=10)


def _batch(masks=False):
    """Two images of different, non-square sizes."""
    a = ShapesDataset(1, (90, 120), object_size=(16, 40), seed=3, masks=masks)[0]
    b = ShapesDataset(1, (110, 77), object_size=(16, 40), seed=4, masks=masks)[0]
    return collate_detection([a, b])


def _check_training_step(model, loss_names):
    images, targets = _batch(masks='loss_mask' in loss_names)
    model.train()
    losses = model(images, targets)
    assert set(losses) == set(loss_names)
    for name, value in losses.items():
        assert torch.isfinite(value), f"{name} is {value}"
    sum(losses.values()).backward()
    trunk = model.backbone.trunk
    for name in ['patch_embed.proj.weight', 'layers.0.mixer.in_proj.weight', 'layers.1.mixer.out_proj.weight']:
        grad = trunk.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, \
            f"no gradient reached the backbone's {name}"


def test_faster_rcnn_training_step(tiny_backbone_kwargs):
    model = fasterrcnn_vim(3, TINY_MODEL, backbone_kwargs=tiny_backbone_kwargs, **DETECTOR_KWARGS)
    _check_training_step(model, ['loss_classifier', 'loss_box_reg', 'loss_objectness', 'loss_rpn_box_reg'])


def test_mask_rcnn_training_step(tiny_backbone_kwargs):
    model = maskrcnn_vim(3, TINY_MODEL, backbone_kwargs=tiny_backbone_kwargs, **DETECTOR_KWARGS)
    _check_training_step(model, ['loss_classifier', 'loss_box_reg', 'loss_mask', 'loss_objectness',
                                 'loss_rpn_box_reg'])


def test_retinanet_training_step(tiny_backbone_kwargs):
    model = retinanet_vim(3, TINY_MODEL, backbone_kwargs=tiny_backbone_kwargs, **DETECTOR_KWARGS)
    assert model.backbone.out_strides == [8, 16, 32, 64, 128]
    _check_training_step(model, ['classification', 'bbox_regression'])


@pytest.mark.parametrize('builder', [fasterrcnn_vim, maskrcnn_vim])
def test_eval_returns_detections_in_image_coordinates(builder, tiny_backbone_kwargs):
    # a low score threshold, so an untrained detector returns boxes to check
    model = builder(3, TINY_MODEL, backbone_kwargs=tiny_backbone_kwargs, box_score_thresh=0.0, **DETECTOR_KWARGS)
    images, _ = _batch()
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2
    for image, out in zip(images, outputs):
        n = len(out['boxes'])
        assert n > 0, "expected detections at score threshold 0"
        assert out['boxes'].shape == (n, 4) and out['scores'].shape == (n,) and out['labels'].shape == (n,)
        h, w = image.shape[-2:]
        # boxes come back in the input image's own coordinates, not the resized ones
        assert out['boxes'][:, [0, 2]].max() <= w + 1e-3 and out['boxes'][:, [1, 3]].max() <= h + 1e-3
        assert set(out['labels'].tolist()) <= {1, 2}
        if builder is maskrcnn_vim:
            assert out['masks'].shape == (n, 1, h, w)
