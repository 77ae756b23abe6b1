"""The VisionMamba model through timm: API contract, resolutions, features, bad inputs."""
import pytest
import timm
import torch

import vim

SMALL = dict(embed_dim=32, depth=3)


def small(name='vim_tiny_patch16_224', **kw):
    return timm.create_model(name, **{**SMALL, **kw})


def test_every_released_model_is_registered_with_its_weights():
    names = timm.list_models('vim_*')
    assert names == sorted(['vim_tiny_patch16_224', 'vim_tiny_patch16_stride8_224', 'vim_small_patch16_224',
                            'vim_small_patch16_stride8_224', 'vim_base_patch16_224'])
    files = {timm.models.get_pretrained_cfg(n).hf_hub_filename for n in names}
    assert files == {'vim_t_midclstok_76p1acc.pth', 'vim_t_midclstok_ft_78p3acc.pth', 'vim_s_midclstok_80p5acc.pth',
                     'vim_s_midclstok_ft_81p6acc.pth', 'vim_b_midclstok_81p9acc.pth'}


@pytest.mark.parametrize('name,width,params,tokens', [
    ('vim_tiny_patch16_224', 192, 7.15e6, 197), ('vim_tiny_patch16_stride8_224', 192, 7.25e6, 730),
    ('vim_small_patch16_224', 384, 25.8e6, 197), ('vim_base_patch16_224', 768, 97.5e6, 197)])
def test_released_sizes(name, width, params, tokens):
    with torch.device('meta'):
        model = timm.create_model(name)
    assert model.embed_dim == width and len(model.layers) == 24
    assert model.layers[0].mixer.dt_rank == -(-width // 16) and model.layers[0].mixer.d_inner == 2 * width
    assert abs(sum(p.numel() for p in model.parameters()) / params - 1) < 0.02
    assert model.pos_embed.shape[1] == tokens


def test_unknown_argument_raises_type_error():
    with pytest.raises(TypeError):
        timm.create_model('vim_tiny_patch16_224', not_an_argument=1)
    with pytest.raises(TypeError, match='mixer_args'):
        timm.create_model('vim_tiny_patch16_224', mixer_args={'d_state': 8})


def test_mixer_hyperparameters_reach_every_block():
    model = small(d_state=8, d_conv=3, expand=1, dt_rank=5)
    for block in model.layers:
        mixer = block.mixer
        assert mixer.A_log.shape == (2, 32, 8) and mixer.d_inner == 32          # both directions in each
        assert mixer.conv_weight.shape == (2, 32, 3) and mixer.conv_bias.shape == mixer.D.shape == (2, 32)
        assert mixer.x_proj_weight.shape == (2, 32, 5 + 2 * 8) and mixer.dt_proj_weight.shape == (2, 5, 32)
    x = torch.randn(2, 3, 224, 224)
    assert model(x).shape == (2, 1000)
    block = vim.layers.Block(16, d_state=4, expand=3)
    assert block.mixer.A_log.shape == (2, 48, 4) and block.mixer.dt_rank == 1
    with pytest.raises(TypeError):
        vim.layers.Block(16, mixer_args={'d_state': 4})


def test_mixer_recompute_reaches_every_block_and_keeps_the_result():
    """mixer_recompute only changes what the Triton path keeps for the backward: the reference path (here) gives
    the same logits either way, and the setting reaches every mixer, also through timm.create_model."""
    torch.manual_seed(0)
    plain = small()
    recompute = small(mixer_recompute=True)
    assert not any(b.mixer.recompute for b in plain.layers) and all(b.mixer.recompute for b in recompute.layers)
    recompute.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(recompute(x), plain(x))


def test_forward_features_head_and_pooling():
    model = small(num_classes=7).eval()
    x = torch.randn(2, 3, 224, 224)
    feats = model.forward_features(x)
    assert feats.shape == (2, 197, 32)
    torch.testing.assert_close(model.forward_head(feats, pre_logits=True), feats[:, 98])   # middle class token
    torch.testing.assert_close(model(x), model.head(feats[:, 98]))
    model.reset_classifier(0, 'avg')
    pooled = model(x)
    torch.testing.assert_close(pooled, torch.cat([feats[:, :98], feats[:, 99:]], 1).mean(1))
    model.reset_classifier(3)
    assert model.global_pool == 'avg' and model(x).shape == (2, 3)
    with pytest.raises(ValueError, match='global_pool'):
        model.reset_classifier(3, 'max')


def test_no_class_token_variant():
    model = small(class_token=False, global_pool='avg', num_classes=4).eval()
    assert model.num_prefix_tokens == 0 and model.forward_features(torch.randn(1, 3, 224, 224)).shape == (1, 196, 32)
    with pytest.raises(ValueError, match='class_token'):
        small(class_token=False)


def test_gradients_reach_every_parameter():
    model = small(num_classes=5, drop_path_rate=0.1).train()
    model(torch.randn(2, 3, 224, 224)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f'no gradient for {missing}'


def test_released_layout_loads_into_the_stacked_parameters():
    """load_state_dict takes the released names (one tensor per direction) as well as ours, and gives the same
    parameters and outputs; a state dict that mixes the two layouts is refused."""
    from released_vim import released_layout
    source, model = small().eval(), small().eval()
    released = released_layout(source.state_dict())
    assert 'layers.0.mixer.conv1d_b.weight' in released and 'layers.0.mixer.conv_weight' not in released
    model.load_state_dict(released)
    for (name, a), b in zip(model.state_dict().items(), source.state_dict().values()):
        assert torch.equal(a, b), name
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)
    mixed = dict(released)
    mixed['layers.1.mixer.conv_weight'] = mixed.pop('layers.1.mixer.conv1d.weight')
    with pytest.raises(RuntimeError, match='conv1d'):
        small().load_state_dict(mixed)


def test_drop_path_schedule_follows_released_vim():
    model = small(drop_path_rate=0.2, depth=5)
    rates = [getattr(layer.drop_path, 'drop_prob', 0.0) for layer in model.layers]
    assert rates == pytest.approx([0.0, 0.0, 0.05, 0.1, 0.15])
    assert model.drop_path.drop_prob == pytest.approx(0.2)


def test_grad_checkpointing_gives_the_same_result():
    model = small().eval()
    x = torch.randn(1, 3, 224, 224, requires_grad=True)
    ref = model(x)
    model.set_grad_checkpointing()
    torch.testing.assert_close(model(x), ref)


def test_optimizer_groups():
    model = small()
    names = {n for n, _ in model.named_parameters()}
    import fnmatch
    no_wd = [n for n in names if any(fnmatch.fnmatch(n, p) for p in model.no_weight_decay())]
    # the released model decays neither A nor D nor the biases; ours hold both directions, so they are 2-D
    exempt = {'pos_embed', 'cls_token'} | {f'layers.{i}.mixer.{p}' for i in range(3)
                                           for p in ('A_log', 'D', 'conv_bias', 'dt_bias')}
    assert exempt <= set(no_wd)
    assert not [n for n in no_wd if n.endswith(('conv_weight', 'x_proj_weight', 'dt_proj_weight'))]
    groups = timm.models.group_parameters(model, model.group_matcher())
    assert len(groups) == 3 + 2   # stem, 3 blocks, final norm + head
    from timm.optim import create_optimizer_v2
    opt = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    assert len(opt.param_groups) > 2


@pytest.mark.parametrize('size', [(64, 64), (48, 160), (17, 33), (16, 16)])
def test_dynamic_img_size_accepts_any_size_at_least_one_patch(size):
    model = small(dynamic_img_size=True, num_classes=3).eval()
    x = torch.randn(2, 3, *size)
    out, inter = model.forward_intermediates(x, indices=2)
    grid = ((size[0] - 16) // 16 + 1, (size[1] - 16) // 16 + 1)
    assert [i.shape for i in inter] == [(2, 32, *grid)] * 2
    assert out.shape == (2, grid[0] * grid[1] + 1, 32)
    assert model(x).shape == (2, 3)


def test_dynamic_size_at_the_native_size_matches_the_fixed_model():
    fixed = small().eval()
    dynamic = small(dynamic_img_size=True).eval()
    dynamic.load_state_dict(fixed.state_dict())
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(dynamic(x), fixed(x))


def test_dynamic_img_pad_pads_to_the_stride_grid():
    model = small('vim_tiny_patch16_stride8_224', dynamic_img_size=True, dynamic_img_pad=True).eval()
    feats = model.forward_intermediates(torch.randn(1, 3, 37, 50), indices=1, intermediates_only=True)
    assert feats[0].shape == (1, 32, 4, 6)   # padded to 40 x 56: (40-16)/8+1, (56-16)/8+1


def test_set_input_size_resamples_and_keeps_class_token_in_the_middle():
    model = small().eval()
    cls_entry = model.pos_embed[0, 98].clone()
    model.set_input_size((256, 256))
    assert model.pos_embed.shape[1] == 257 and model.patch_embed.grid_size == (16, 16)
    torch.testing.assert_close(model.pos_embed[0, 128], cls_entry)
    assert model(torch.randn(1, 3, 256, 256)).shape == (1, 1000)
    with pytest.raises(ValueError, match='Expected images of 256x256'):
        model(torch.randn(1, 3, 224, 224))
    with pytest.raises(ValueError, match='patch size'):
        model.set_input_size(patch_size=8)


def test_features_only_and_intermediates():
    fmodel = small('vim_small_patch16_stride8_224', features_only=True, out_indices=(0, 2)).eval()
    assert fmodel.feature_info.reduction() == [8, 8] and fmodel.feature_info.channels() == [32, 32]
    maps = fmodel(torch.randn(1, 3, 224, 224))
    assert [m.shape for m in maps] == [(1, 32, 27, 27)] * 2
    model = small().eval()
    x = torch.randn(1, 3, 224, 224)
    final, inter = model.forward_intermediates(x, indices=[0, 2], return_prefix_tokens=True, norm=True)
    torch.testing.assert_close(final, model.forward_features(x))
    (last_map, last_cls) = inter[-1]
    # the last block's normed stream is forward_features: same class token, same patches
    torch.testing.assert_close(last_cls[:, 0], final[:, 98])
    torch.testing.assert_close(last_map.flatten(2).transpose(1, 2), vim.remove_middle_token(final)[0])
    nlc = model.forward_intermediates(x, indices=1, output_fmt='NLC', intermediates_only=True, stop_early=True)
    assert nlc[0].shape == (1, 196, 32)
    kept = model.prune_intermediate_layers([1], prune_norm=True)
    assert kept == [1] and len(model.layers) == 2 and model.num_classes == 0


def test_meta_device_and_dtype_conversion():
    with torch.device('meta'):
        model = timm.create_model('vim_base_patch16_224')
    assert model(torch.randn(1, 3, 224, 224, device='meta')).shape == (1, 1000)
    bf16 = small().to(torch.bfloat16).eval()
    assert bf16(torch.randn(1, 3, 224, 224, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_fx_trace_keeps_kernels_as_leaves():
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
    from timm.models import get_notrace_functions, get_notrace_modules
    model = small().eval()
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)[1]
    assert any('mixer_core' in n for n in nodes)
    extractor = create_feature_extractor(model, return_nodes={nodes[-1]: 'out'}, tracer_kwargs=tracer_kwargs)
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(extractor(x)['out'], model(x))


@pytest.mark.parametrize('bad,error,match', [
    (torch.randn(3, 224, 224), ValueError, '4-D image batch'),
    (torch.randn(1, 1, 224, 224), ValueError, 'Expected 3 input channels, got 1'),
    (torch.zeros(1, 3, 224, 224, dtype=torch.uint8), TypeError, 'floating-point'),
    (torch.randn(1, 3, 200, 224), ValueError, 'Expected images of 224x224, got 200x224'),
    ([[0.0]], TypeError, 'torch.Tensor'),
])
def test_bad_inputs_get_clear_errors(bad, error, match):
    with pytest.raises(error, match=match):
        small()(bad)


def test_too_small_for_one_patch():
    with pytest.raises(ValueError, match='smaller than one 16x16 patch'):
        small(dynamic_img_size=True)(torch.randn(1, 3, 8, 64))
    with pytest.raises(ValueError, match='smaller than the patch size'):
        small(img_size=8)
