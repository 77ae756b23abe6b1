"""The one place that picks the backend of every op.

Order of precedence: the ``backend=`` argument of an op, then :func:`use_backend` / :func:`set_backend`,
then the ``VIM_BACKEND`` environment variable, then ``auto``.

- ``reference``: the plain-PyTorch ops in :mod:`vim.kernels.reference` (any device, any dtype).
- ``triton``: the Triton kernels; an error if Triton cannot run on the given tensors.
- ``auto``: Triton on CUDA tensors when Triton works, the reference otherwise.

Under ``TRITON_INTERPRET=1`` Triton also runs on CPU tensors, but only when asked for explicitly:
``auto`` keeps the CPU on the reference path, since the interpreter is for testing, not speed.
"""
import contextlib
import functools
import os
from typing import Iterator, Optional

import torch

BACKENDS = ('auto', 'triton', 'reference')
ENV_VAR = 'VIM_BACKEND'
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_override: Optional[str] = None


def _check(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"Unknown kernel backend {name!r} from {source}; expected one of {BACKENDS}.")
    return name


def set_backend(name: Optional[str]) -> None:
    """Force a backend for every op in this process (None returns to the environment / auto)."""
    global _override
    _override = None if name is None else _check(name, 'set_backend()')


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager form of :func:`set_backend`."""
    global _override
    previous, _override = _override, _check(name, 'use_backend()')
    try:
        yield
    finally:
        _override = previous


def triton_interpreting() -> bool:
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> Optional[str]:
    try:
        from . import triton_ops  # noqa: F401
    except Exception as e:  # no triton, or a triton too old for the kernels
        return f'{type(e).__name__}: {e}'
    return None


@torch.compiler.assume_constant_result    # torch.compile calls it while tracing instead of tracing the import
def triton_import_error() -> Optional[str]:
    """None when the Triton kernels import; otherwise why not."""
    return _triton_import_error()


def _triton_runs_on(tensor: torch.Tensor) -> bool:
    return tensor.is_cuda or (tensor.device.type == 'cpu' and triton_interpreting())


def requested_backend(backend: Optional[str] = None) -> str:
    if backend is not None:
        return _check(backend, 'the backend argument')
    if _override is not None:
        return _override
    return _check(os.environ.get(ENV_VAR, 'auto').strip().lower() or 'auto', f'${ENV_VAR}')


def resolve(tensor: torch.Tensor, backend: Optional[str] = None) -> str:
    """Return 'triton' or 'reference' for an op whose main input is ``tensor``."""
    choice = requested_backend(backend)
    if choice == 'reference':
        return 'reference'
    if choice == 'auto':  # the kernels take fp32 / fp16 / bf16; float64 stays on the reference
        usable = (tensor.is_cuda and tensor.dtype in KERNEL_DTYPES and not triton_interpreting()
                  and triton_import_error() is None)
        return 'triton' if usable else 'reference'
    if not _triton_runs_on(tensor):
        raise RuntimeError(
            f"Triton backend requested but the input is on {tensor.device}: Triton kernels need CUDA tensors "
            f"(or TRITON_INTERPRET=1 for CPU tensors). Use backend='reference' or {ENV_VAR}=reference.")
    error = triton_import_error()
    if error is not None:
        raise RuntimeError(f"Triton backend requested but the Triton kernels cannot be loaded ({error}).")
    return 'triton'


def implementation(tensor: torch.Tensor, backend: Optional[str] = None):
    """The module holding the chosen backend's ops (same names and signatures in each)."""
    if resolve(tensor, backend) == 'triton':
        from . import triton_ops
        return triton_ops
    from . import reference
    return reference
