"""The one dispatch point: argument > set_backend/use_backend > VIM_BACKEND > auto."""
import pytest
import torch

from vim import kernels
from vim.kernels import dispatch


def test_auto_uses_the_reference_on_cpu(monkeypatch):
    monkeypatch.delenv('VIM_BACKEND', raising=False)
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    assert kernels.resolve(torch.zeros(1)) == 'reference'


def test_precedence(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.setenv('VIM_BACKEND', 'triton')
    with pytest.raises(RuntimeError, match='Triton backend requested'):
        kernels.resolve(cpu)
    assert kernels.resolve(cpu, backend='reference') == 'reference'
    with kernels.use_backend('reference'):
        assert kernels.resolve(cpu) == 'reference'
        with pytest.raises(RuntimeError, match='CUDA tensors'):
            kernels.resolve(cpu, backend='triton')
    monkeypatch.setenv('VIM_BACKEND', 'reference')
    assert kernels.resolve(cpu) == 'reference'


def test_set_backend_and_reset(monkeypatch):
    monkeypatch.delenv('VIM_BACKEND', raising=False)
    kernels.set_backend('reference')
    try:
        assert dispatch.requested_backend() == 'reference'
    finally:
        kernels.set_backend(None)
    assert dispatch.requested_backend() == 'auto'


@pytest.mark.parametrize('where', ['env', 'arg', 'set'])
def test_unknown_backend_names_the_choices(monkeypatch, where):
    cpu = torch.zeros(1)
    with pytest.raises(ValueError, match="expected one of"):
        if where == 'env':
            monkeypatch.setenv('VIM_BACKEND', 'cuda')
            kernels.resolve(cpu)
        elif where == 'arg':
            kernels.resolve(cpu, backend='fast')
        else:
            kernels.set_backend('fast')


def test_ops_take_a_backend_argument():
    x = torch.randn(1, 6, 4)
    out = kernels.causal_conv1d(x, torch.randn(4, 4), backend='reference')
    assert out.shape == x.shape


def test_a_triton_too_old_is_named_and_the_fallback_said_once(monkeypatch):
    import sys
    import types
    dispatch._triton_import_error.cache_clear()
    monkeypatch.setitem(sys.modules, 'triton', types.SimpleNamespace(__version__='2.3.1'))
    try:
        reason = dispatch.triton_import_error()
    finally:
        dispatch._triton_import_error.cache_clear()
    assert reason == 'Triton 2.3.1 is older than 3.0, the oldest the kernels run on'
    monkeypatch.setattr(dispatch, '_warned_fallback', False)
    with pytest.warns(RuntimeWarning, match=r'Triton 2\.3\.1 is older .* CUDA tensors take the PyTorch reference'):
        dispatch._warn_reference_on_cuda(reason)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        dispatch._warn_reference_on_cuda(reason)     # once per process: the second call is silent
