"""train.compile and train.cuda_graph: the same training as eager, and clear errors for settings they cannot take."""
import copy

import pytest
import torch

from vim.engine import load_config, train
from vim.engine.config import ConfigError


def final_weights(tmp_path, recipe, name):
    summary = train(load_config(recipe=recipe), output=str(tmp_path / name))
    assert summary['steps'] == 3 and summary['final']['skipped_steps'] == 0
    return torch.load(tmp_path / name / 'last.pth', weights_only=True)['model']


def two_steps(recipe, device='cpu'):
    recipe['schedule'].update(epochs=1, warmup_epochs=0)
    recipe['train'].update(device=device, max_steps_per_epoch=3, ema=False, plots=False)
    return recipe


def assert_same_training(a, b, rtol, atol):
    assert a.keys() == b.keys()  # compiled in place: no '_orig_mod.' prefix in checkpoints
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=rtol, atol=atol, msg=key)


def test_compiled_training_matches_eager(tmp_path, tiny_recipe):
    recipe = two_steps(tiny_recipe)
    recipe['model']['drop_path_rate'] = 0.0  # the compiled graph draws its random numbers in its own order
    eager = final_weights(tmp_path, recipe, 'eager')
    recipe['train']['compile'] = 'aot_eager'  # the compile pipeline without a C++ compiler (CI has 2 cores)
    compiled = final_weights(tmp_path, recipe, 'compiled')
    assert_same_training(eager, compiled, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('override, message', [
    ({'cuda_graph': True, 'amp': 'fp16'}, 'amp none or bf16'),
    ({'cuda_graph': True, 'grad_checkpointing': True}, 'grad_checkpointing'),
    ({'cuda_graph': True, 'compile': 'inductor', 'compile_mode': 'reduce-overhead'}, 'records CUDA graphs itself'),
    ({'compile_mode': 'max-autotune'}, 'train.compile is off'),
    ({'compile': 3}, 'backend name'),
])
def test_compile_and_graph_settings_are_checked(tiny_recipe, override, message):
    tiny_recipe['train'].update(override)
    with pytest.raises(ConfigError, match=message):
        load_config(recipe=tiny_recipe)


def test_cuda_graph_needs_a_cuda_device(tmp_path, tiny_recipe):
    tiny_recipe['train']['cuda_graph'] = True
    with pytest.raises(ConfigError, match='one CUDA process; this run has 1 process\\(es\\) on cpu'):
        train(load_config(recipe=tiny_recipe), output=str(tmp_path / 'run'))
    assert not (tmp_path / 'run').exists()


@pytest.mark.gpu
@pytest.mark.parametrize('amp', ['none', 'bf16'])
def test_cuda_graph_training_matches_eager(tmp_path, tiny_recipe, amp):
    recipe = two_steps(tiny_recipe, device='cuda')
    recipe['model']['drop_path_rate'] = 0.0  # the warm-up steps before the recording draw random numbers
    recipe['train']['amp'] = amp
    recipe['aug']['backend'] = 'none'   # the step is compared, not the data: no albumentations needed on the GPU host
    eager = final_weights(tmp_path, recipe, 'eager')
    recipe['train']['cuda_graph'] = True
    graphed = final_weights(tmp_path, recipe, 'graphed')
    tol = dict(rtol=1e-4, atol=1e-5) if amp == 'none' else dict(rtol=2e-2, atol=2e-3)
    assert_same_training(eager, graphed, **tol)


@pytest.mark.gpu
def test_graphed_step_replays_and_falls_back_for_another_batch_shape():
    import timm

    import vim  # noqa: F401
    from vim.engine.step import ForwardBackward

    torch.manual_seed(0)
    model = timm.create_model('vim_tiny_patch16_224', img_size=32, patch_size=4, stride=4, depth=2,
                              num_classes=10).cuda()
    twin = copy.deepcopy(model)
    criterion = torch.nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler('cuda', enabled=False)
    graphed = ForwardBackward(model, criterion, torch.device('cuda'), 'none', scaler, cuda_graph=True)
    eager = ForwardBackward(twin, criterion, torch.device('cuda'), 'none', scaler)
    for batch in (8, 8, 7, 8):  # record, replay, another shape (eager into the graph's gradients), replay
        images, targets = torch.randn(batch, 3, 32, 32, device='cuda'), torch.randint(0, 10, (batch,), device='cuda')
        torch.testing.assert_close(graphed(images, targets), eager(images, targets), rtol=1e-5, atol=1e-6)
        for got, want in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-6)
