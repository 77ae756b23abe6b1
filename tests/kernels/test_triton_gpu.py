"""The kernel and compile cases on a CUDA GPU, larger shapes, plus a 65,536-step sequence:
``python -m pytest -m gpu tests/kernels``."""
import pytest
import torch

from compile_cases import *  # noqa: F401,F403  (the cases, collected here with the gpu mark)
from kernel_cases import *  # noqa: F401,F403
from kernel_cases import assert_close, compare, scan_leaves, split_scan
from vim.kernels import reference, triton_ops

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')]


def test_bidirectional_scan_long_sequence():
    """L = 65,536 (many tiles and checkpoint chunks): values and gradients against a float64 reference."""
    batch, L, E, N = 1, 65536, 32, 16
    leaves = [t.cuda().requires_grad_() for t in scan_leaves((2,), batch, L, E, N, torch.float32)]
    ref_leaves = [t.detach().cpu().double().requires_grad_() for t in leaves]   # float64 on the CPU
    out = triton_ops.bidirectional_scan(*split_scan(*leaves, E, N, 0))
    ref = reference.bidirectional_scan(*split_scan(*ref_leaves, E, N, 0))
    assert_close(out.cpu(), ref, 1e-5, 'output')
    g = torch.randn_like(out)
    for name, a, b in zip('x dt A BC D z dt_bias'.split(), torch.autograd.grad(out, leaves, g),
                          torch.autograd.grad(ref, ref_leaves, g.cpu().double())):
        assert_close(a.cpu(), b, 1e-4, f'grad of {name}')


@pytest.mark.parametrize('shape', [(2, 333, 100, 16), (4, 197, 384, 16)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_bidirectional_scan_unsegmented(monkeypatch, shape, dtype):
    """The plain (one-segment) launch at the shape-picked channel blocks: the GPU cases above are small enough
    to be segmented, so this forces the path that large batches take."""
    from vim.kernels import triton_scan
    monkeypatch.setitem(triton_scan.SCAN_CONFIG, 'SEG_MIN_PROGRAMS', 1)
    batch, L, E, N = shape
    assert triton_scan.launch_config(batch, L, E, torch.device('cuda'))[1][1] == 1
    leaves = scan_leaves((2,), batch, L, E, N, dtype)
    run = (lambda module: lambda *t: module.bidirectional_scan(*split_scan(*t, E, N, 0)))
    compare(run(triton_ops), run(reference), leaves, dtype, ['x', 'dt', 'A', 'B/C', 'D', 'z', 'dt_bias'])
