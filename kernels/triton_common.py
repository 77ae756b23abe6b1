"""Shared by the Triton wrappers: input checks (a clear error before a kernel could read out of bounds), launch
sizes, and how a custom op is called eagerly or while traced."""
import functools
from typing import Callable, Optional, Sequence, Tuple

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check(op: str, name: str, tensor: Optional[torch.Tensor], shape: Sequence[int], device: torch.device,
          optional: bool = False) -> None:
    """Raise if ``tensor`` is not a float32/float16/bfloat16 tensor of ``shape`` on ``device``."""
    if tensor is None:
        if optional:
            return
        raise TypeError(f'{op}: {name} is required')
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f'{op}: {name} must be a torch.Tensor, got {type(tensor).__name__}')
    if tensor.device != device:
        raise ValueError(f'{op}: {name} is on {tensor.device} but x is on {device}; put all inputs on one device')
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(f'{op}: {name} has dtype {tensor.dtype}; the Triton kernels take float32, float16 or '
                        f"bfloat16 (use backend='reference' for other dtypes)")
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f'{op}: {name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}')


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    """Multiprocessors of a CUDA device, read once (an H100's 132 for the CPU interpreter)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == 'cuda' else 132


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for launch sizes. Plain Python: triton.cdiv is a constexpr function whose every host-side
    call costs microseconds (bench/host_overhead.py), and the wrappers make several per launch."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def unit_last_stride(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The kernels take any strides but a unit one along the last (channel) axis: copy only if needed."""
    if tensor is None or tensor.stride(-1) == 1 or tensor.shape[-1] == 1:
        return tensor
    return tensor.contiguous()


def needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether autograd will want the backward of an op on these inputs."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def traced(x: torch.Tensor) -> bool:
    """Under torch.compile or torch.export (fake or functional tensors)."""
    return torch.compiler.is_compiling() or type(x) is not torch.Tensor


def grads_like(empty_from: torch.Tensor, *inputs: Optional[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
    """Contiguous uninitialised tensors, each of its input's shape and dtype; an empty one on empty_from's device
    where the input is None (a custom op returns no None). The backward ops allocate and fake their gradients
    through this, so the fake implementations match the real ones."""
    return tuple(empty_from.new_empty(0) if t is None else torch.empty(t.shape, dtype=t.dtype, device=t.device)
                 for t in inputs)


def autograd_op(op, forward: Callable, setup_context: Callable, vjp: Callable) -> Callable:
    """Register ``vjp`` as the custom op's autograd formula and return ``run(grad, *args)``, which calls

    - the custom op while traced (torch.compile, torch.export): one opaque node to the tracer;
    - else, when ``grad`` (autograd will want the backward), ``forward`` (the function the op wraps) inside a
      torch.autograd.Function with the same formula;
    - else ``forward`` itself.

    Eager calls skip the dispatcher, whose Python costs the host tens of microseconds per forward + backward,
    and eager training of small images is bound by the host (bench/host_overhead.py). The Function's forward
    takes ``ctx`` and calls ``setup_context`` itself: a Function that defines setup_context instead binds its
    arguments through inspect.signature on every call, several times the cost of the rest of ``apply``."""
    op.register_autograd(vjp, setup_context=setup_context)

    def forward_saving(ctx, *args):
        output = forward(*args)
        setup_context(ctx, args, output)
        return output
    function = type(f'{forward.__name__}_function', (torch.autograd.Function,),
                    dict(forward=staticmethod(forward_saving), backward=staticmethod(vjp)))

    def run(grad: bool, *args):
        return (op if traced(args[0]) else function.apply if grad else forward)(*args)
    return run


def call(op, launch: Callable, *args):
    """``op(*args)`` while traced, else ``launch(*args)``, the function the op wraps, without the dispatcher."""
    return (op if traced(args[0]) else launch)(*args)
