import pytest
import torch

from vim.detection import fasterrcnn_vim, freeze_backbone, param_groups_layer_decay

from detection_cases import TINY_MODEL


@pytest.fixture
def detector(tiny_backbone_kwargs):
    kwargs = dict(tiny_backbone_kwargs, depth=4)
    return fasterrcnn_vim(3, TINY_MODEL, backbone_kwargs=kwargs, min_size=64, max_size=64)


def test_freeze_patch_embed_and_first_blocks(detector):
    trunk = detector.backbone.trunk
    frozen = freeze_backbone(detector, patch_embed=True, num_blocks=2)
    expect_frozen = [n for n, _ in trunk.named_parameters()
                     if n.split('.')[0] in ('patch_embed', 'pos_embed', 'cls_token')
                     or n.startswith(('layers.0.', 'layers.1.'))]
    got_frozen = [n for n, p in trunk.named_parameters() if not p.requires_grad]
    assert got_frozen == expect_frozen
    assert frozen == sum(trunk.get_parameter(n).numel() for n in expect_frozen)
    assert trunk.layers[2].mixer.in_proj.weight.requires_grad
    assert all(p.requires_grad for p in detector.backbone.pyramid.parameters())
    assert all(p.requires_grad for p in detector.roi_heads.parameters())


def test_frozen_blocks_get_no_gradient(detector):
    freeze_backbone(detector, patch_embed=True, num_blocks=1)
    images = [torch.rand(3, 64, 64)]
    targets = [{'boxes': torch.tensor([[10.0, 12.0, 40.0, 50.0]]), 'labels': torch.tensor([1])}]
    sum(detector(images, targets).values()).backward()
    trunk = detector.backbone.trunk
    assert trunk.patch_embed.proj.weight.grad is None and trunk.layers[0].mixer.in_proj.weight.grad is None
    assert trunk.layers[1].mixer.in_proj.weight.grad.abs().sum() > 0


def test_freeze_rejects_more_blocks_than_the_trunk_has(detector):
    with pytest.raises(ValueError, match=r'num_blocks must be in \[0, 4\].*got 5'):
        freeze_backbone(detector, num_blocks=5)
    with pytest.raises(ValueError, match='Expected exactly one VimDetectionBackbone'):
        freeze_backbone(torch.nn.Linear(2, 2))


def test_layer_decay_groups(detector):
    depth, decay, lr = 4, 0.5, 1e-3
    groups = param_groups_layer_decay(detector, lr=lr, weight_decay=0.1, layer_decay=decay)
    by_name = {name: g for g in groups for name in g['param_names']}
    assert len(by_name) == sum(1 for _ in detector.parameters()), "every parameter in exactly one group"
    for g in groups:
        assert g['lr'] == pytest.approx(lr * g['lr_scale'])

    def scale(name):
        return by_name[name]['lr_scale']
    # stem: decay ** (depth + 1); block i: decay ** (depth - i); the final norm as the last block; the rest: 1
    assert scale('backbone.trunk.patch_embed.proj.weight') == pytest.approx(decay ** (depth + 1))
    assert scale('backbone.trunk.pos_embed') == pytest.approx(decay ** (depth + 1))
    for i in range(depth):
        assert scale(f'backbone.trunk.layers.{i}.mixer.in_proj.weight') == pytest.approx(decay ** (depth - i))
    assert scale('backbone.trunk.norm_f.weight') == pytest.approx(decay)
    assert scale('backbone.pyramid.project.0.0.weight') == 1.0
    assert scale('roi_heads.box_predictor.cls_score.weight') == 1.0
    # no weight decay on biases, norms, position embedding, cls token and the SSM log-rates
    for name in ['backbone.trunk.pos_embed', 'backbone.trunk.cls_token', 'backbone.trunk.norm_f.weight',
                 'backbone.trunk.layers.0.mixer.A_log', 'roi_heads.box_predictor.cls_score.bias']:
        assert by_name[name]['weight_decay'] == 0.0, name
    for name in ['backbone.trunk.layers.0.mixer.in_proj.weight', 'roi_heads.box_head.fc6.weight']:
        assert by_name[name]['weight_decay'] == 0.1, name
    torch.optim.AdamW(groups)  # the groups are valid optimizer input


def test_layer_decay_leaves_out_frozen_parameters(detector):
    freeze_backbone(detector, patch_embed=True, num_blocks=2)
    groups = param_groups_layer_decay(detector, layer_decay=0.7)
    names = {name for g in groups for name in g['param_names']}
    assert not any(n.startswith(('backbone.trunk.patch_embed', 'backbone.trunk.layers.0.')) for n in names)
    assert 'backbone.trunk.layers.2.mixer.in_proj.weight' in names
    assert all('lr' not in g for g in groups), "no lr key unless a base lr is given"
