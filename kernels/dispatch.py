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
import re
import warnings
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


# The kernels use tl.range's software pipelining, tl.join / tl.split and the launch's maxnreg.
MIN_TRITON = (3, 0)
_warned_fallback = False


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> Optional[str]:
    try:
        import triton
    except Exception as e:
        return f'Triton is not installed ({type(e).__name__}: {e})'
    version = tuple(int(part) for part in re.findall(r'\d+', triton.__version__)[:2])
    if version < MIN_TRITON:
        return f'Triton {triton.__version__} is older than {".".join(map(str, MIN_TRITON))}, the oldest the kernels run on'
    try:
        from . import triton_ops  # noqa: F401
    except Exception as e:
        return f'{type(e).__name__}: {e}'
    return None


@torch.compiler.assume_constant_result    # torch.compile calls it while tracing instead of tracing the import
def triton_import_error() -> Optional[str]:
    """None when the Triton kernels import; otherwise why not."""
    return _triton_import_error()


def _warn_reference_on_cuda(reason: str) -> None:
    """Say once per process that CUDA tensors run on the reference path, and why, instead of falling back silently."""
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            f"vim.kernels: the Triton kernels cannot run ({reason}), so CUDA tensors take the PyTorch reference "
            f"path, several times slower. Install the Triton your torch was built with (torch's CUDA wheels pin it), "
            f"or set {ENV_VAR}=reference to choose the reference path knowingly.", RuntimeWarning, stacklevel=4)


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
        if not (tensor.is_cuda and tensor.dtype in KERNEL_DTYPES and not triton_interpreting()):
            return 'reference'
        error = triton_import_error()
        if error is not None:
            _warn_reference_on_cuda(error)
            return 'reference'
        return 'triton'
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
