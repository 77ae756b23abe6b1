"""The Triton ops as registered PyTorch custom ops: torch.library.opcheck of every op, torch.compile with
fullgraph=True (no graph break) and torch.export of a Vim on the Triton path.

Not collected on its own (no ``test_`` prefix): ``test_triton_interpreter.py`` runs it on the CPU under
``TRITON_INTERPRET=1`` (tiny shapes; torch.compile with backend='aot_eager', which still traces the fake
implementations and the autograd formulas), ``test_triton_gpu.py`` on a CUDA GPU, where the cases marked gpu
also compile with inductor and export vim_tiny.
"""
import pytest
import timm
import torch

import vim  # noqa: F401  registers vim_* with timm
from kernel_cases import DEVICE, INTERPRET, MIXER_SHAPE, assert_close, mixer_leaves, scan_leaves, split_scan
from vim.kernels import triton_conv1d, triton_mixer, triton_rmsnorm, triton_scan, use_backend
from vim.vision_mamba import VisionMamba

DTYPES = [torch.float32, torch.bfloat16]
BACKEND = 'aot_eager' if INTERPRET else 'inductor'
gpu = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _one_segment(monkeypatch):
    if INTERPRET:   # the interpreter's stand-in SM count would segment the tiny scans: 4 launches instead of 1
        monkeypatch.setitem(triton_scan.SCAN_CONFIG, 'SEG_MIN_PROGRAMS', 1)


def opcheck(op, args):
    torch.library.opcheck(op, [t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in args])


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('case', ['bidirectional', 'reverse_no_z'])
def test_opcheck_scan(dtype, case):
    """vim::scan with and without the stored checkpoints (save), and vim::scan_backward."""
    batch, L, E, N = 2, 13, 12, 4
    args = list(split_scan(*scan_leaves((2,) if case == 'bidirectional' else (), batch, L, E, N, dtype), E, N, 0))
    flags = (True, False)
    if case == 'reverse_no_z':      # one direction: a leading direction axis of 1
        args, flags = [t.unsqueeze(0) for t in args[:6]] + [None, args[7].unsqueeze(0)], (True, True)
    args = [None if t is None else t.to(DEVICE) for t in args]
    for save in (True, False):
        opcheck(triton_scan.scan_op, [None if t is None else t.requires_grad_(save) for t in args] + [*flags, save])
    args = [None if t is None else t.detach() for t in args]
    out, ckpt, y = triton_scan.scan_op(*args, *flags, True)
    opcheck(triton_scan.scan_backward_op, [torch.randn_like(out), *args, ckpt, y, *flags])


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('bias', [True, False])
def test_opcheck_conv1d(dtype, bias):
    x = torch.randn(2, 19, 12, dtype=dtype)
    w, b = torch.randn(2, 12, 4), (torch.randn(2, 12) if bias else None)
    for grad in (True, False):
        opcheck(triton_conv1d.conv1d_op, [x.requires_grad_(grad), w.requires_grad_(grad), b, bias, not bias])
    opcheck(triton_conv1d.conv1d_backward_op, [torch.randn(2, 2, 19, 12, dtype=dtype), x.detach(), w.detach(), b,
                                               bias, not bias])


def mixer_inputs(dtype, shape=MIXER_SHAPE):
    """The mixer core's tensor inputs as the model passes them: x and z the strided halves of in_proj's output."""
    batch, L, E, N, R = shape
    xz, *weights = (t.to(DEVICE) for t in mixer_leaves(batch, L, E, N, R, dtype))
    return [xz[..., :E], xz[..., E:], *weights]


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('recompute', [False, True])
def test_opcheck_mixer_core(dtype, recompute):
    """vim::mixer_core with and without what the backward reads (save), keeping the conv output and dt or
    recomputing them, and vim::mixer_core_backward on what it kept. At a shape of one channel block and one
    segment: opcheck compares repeated runs exactly, and wider shapes sum the scan's dB, dC and dA in fp32
    atomics, whose order varies."""
    inputs = mixer_inputs(dtype, shape=(2, 13, 12, 4, 3))
    for save in (True, False):
        opcheck(triton_mixer.mixer_core_op, [t.detach().requires_grad_(save) for t in inputs] + [save, recompute])
    inputs = [t.detach() for t in inputs]
    out, *kept = triton_mixer.mixer_core_op(*inputs, True, recompute)
    opcheck(triton_mixer.mixer_core_backward_op, [torch.randn_like(out), *inputs, *kept])


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('recompute', [False, True])
def test_compile_mixer_core_fullgraph_matches_eager(dtype, recompute):
    """The mixer core alone, keeping the conv output and dt or recomputing them, under
    torch.compile(fullgraph=True) against eager: the output with and without autograd, and the gradient of
    every input."""
    def eager(*inputs):
        return triton_mixer.mixer_core(*inputs, recompute=recompute)
    compiled = torch.compile(eager, backend=BACKEND, fullgraph=True)
    inputs = mixer_inputs(dtype)
    with torch.no_grad():
        assert_close(compiled(*inputs).float(), eager(*inputs).double(), 1e-5, 'inference output')
    results = []
    for fn in (compiled, eager):
        leaves = [t.detach().requires_grad_() for t in inputs]
        out = fn(*leaves)
        results.append([out, *torch.autograd.grad(out, leaves, torch.ones_like(out))])
    names = ['output', 'x', 'z', 'conv_weight', 'conv_bias', 'x_proj_weight', 'dt_proj_weight', 'A_log', 'D',
             'dt_bias']
    for ours, ref, name in zip(*results, names):
        assert_close(ours.float(), ref.double(), 1e-5, name)


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('residual', [True, False])
def test_opcheck_add_rms_norm(dtype, residual):
    x, w = torch.randn(3, 5, 24, dtype=dtype), torch.randn(24)
    r = torch.randn(3, 5, 24) if residual else None
    for grad in (True, False):
        opcheck(triton_rmsnorm.add_rms_norm_op, [x.requires_grad_(grad), r, w.requires_grad_(grad), 1e-5, residual])
    g = torch.randn(3, 5, 24, dtype=dtype)
    opcheck(triton_rmsnorm.add_rms_norm_backward_op, [g, torch.randn(3, 5, 24), x.detach(), r, w.detach(), 1e-5])


def tiny_vim(mixer_recompute=False):
    return VisionMamba(img_size=32, patch_size=8, embed_dim=32, depth=2, num_classes=5,
                       mixer_recompute=mixer_recompute).to(DEVICE)


def params_and_grads(model, out, grad_out):
    model.zero_grad()
    out.backward(grad_out)
    return [(name, p.grad.clone()) for name, p in model.named_parameters() if p.grad is not None]


def compare_compiled(model, images, backend=BACKEND, tol=1e-5 if INTERPRET else 1e-4, dtype=None):
    """Eager against torch.compile(fullgraph=True) on the Triton path: inference output, training output and
    the gradient of every parameter, at every batch of ``images``."""
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    autocast = torch.autocast(DEVICE, dtype=dtype, enabled=dtype is not None)
    with use_backend('triton'), autocast:
        for image in images:
            with torch.no_grad():
                assert_close(compiled(image).float(), model(image).double(), tol, 'inference output')
            grad_out = torch.randn(image.shape[0], 5, device=DEVICE)
            ours, ref = compiled(image), model(image)
            assert_close(ours.float(), ref.double(), tol, 'training output')
            grads = params_and_grads(model, ours, grad_out)
            ref_grads = params_and_grads(model, ref, grad_out)
            assert len(grads) == len(ref_grads) > 20
            for (name, g), (_, r) in zip(grads, ref_grads):
                assert_close(g.float(), r.double(), tol, f'grad of {name}')


@pytest.mark.parametrize('mixer_recompute', [False, True])
def test_compile_fullgraph_matches_eager(mixer_recompute):
    model = tiny_vim(mixer_recompute)
    compare_compiled(model, [torch.randn(2, 3, 32, 32, device=DEVICE)])


def exported_graph_ops(program):
    return {str(node.target) for node in program.graph.nodes if node.op == 'call_function'}


def check_export(model, image, tol=1e-5):
    """torch.export on the Triton path: a graph of vim:: ops that runs to eager's result, also after a save and
    load."""
    import io
    with use_backend('triton'), torch.no_grad():
        program = torch.export.export(model, (image,))
        targets = exported_graph_ops(program)
        assert {'vim.mixer_core.default', 'vim.add_rms_norm.default'} <= targets, targets
        ref = model(image)
        assert_close(program.module()(image).float(), ref.double(), tol, 'exported output')
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        buffer.seek(0)
        assert_close(torch.export.load(buffer).module()(image).float(), ref.double(), tol, 'reloaded output')


@pytest.mark.parametrize('mixer_recompute', [False, True])
def test_export_runs_the_triton_ops(mixer_recompute):
    check_export(tiny_vim(mixer_recompute).eval(), torch.randn(2, 3, 32, 32, device=DEVICE))


@gpu
def test_compile_vim_tiny_cuda():
    """vim_tiny at 224 px under inductor, bf16 autocast, against eager (inference and training)."""
    model = timm.create_model('vim_tiny_patch16_224', num_classes=5).to(DEVICE)
    compare_compiled(model, [torch.randn(4, 3, 224, 224, device=DEVICE)], tol=3e-2, dtype=torch.bfloat16)


@gpu
def test_compile_reduce_overhead_vim_tiny_cuda():
    """The README's fixed-shape recipe: CUDA graphs of the compiled forward, replayed."""
    model = timm.create_model('vim_tiny_patch16_224').to(DEVICE).eval()
    image = torch.randn(2, 3, 224, 224, device=DEVICE)
    compiled = torch.compile(model, mode='reduce-overhead', fullgraph=True)
    with torch.inference_mode():
        ref = model(image)
        for _ in range(3):   # reduce-overhead records a CUDA graph on a later call
            out = compiled(image)
    assert_close(out, ref.double(), 1e-3, 'output')


@gpu
def test_export_vim_tiny_cuda():
    check_export(timm.create_model('vim_tiny_patch16_224').to(DEVICE).eval(),
                 torch.randn(2, 3, 224, 224, device=DEVICE), tol=1e-4)
