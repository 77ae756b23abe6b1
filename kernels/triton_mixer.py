"""Triton mixer core of a bimamba-v2 block: conv1d + SiLU -> x_proj -> dt_proj -> bidirectional scan -> gate.

The same computation as :func:`.reference.mixer_core`, as one PyTorch custom op (``vim::mixer_core``, with
``vim::mixer_core_backward``, opaque to torch.compile and torch.export like the scan's) whose backward is written
out rather than left to autograd over the pieces: the gradient that reaches the conv output from x_proj is added
onto the scan's in place (baddbmm), and one autograd node replaces a dozen, which matters where the host sets
the pace (small images, eager training).

The forward runs the conv, x_proj as one bmm over both directions, and the scan. Two ways, chosen by
``recompute`` (:func:`mixer_core`):

- ``recompute=False`` (the default, the faster): dt_proj as a bmm, the scan on the conv output u and the
  full-width dt, both kept for the backward. The backward runs the scan's backward on them.
- ``recompute=True`` (less training memory): the scan takes its fused inputs (:mod:`.triton_scan`, FUSED_CONV
  and FUSED_DT) and recomputes conv + SiLU from the raw x and dt = dt_low @ dt_proj^T in its tiles, so neither
  u nor dt, (2, batch, L, E) each, is kept; the backward recomputes them the same way, and u once more for
  x_proj's weight gradient.

Either backward then takes the projections' gradients (the activations' as bmms, the weights' as split-row
sums, :mod:`.triton_weight_grad`) and ends with the conv's backward.
"""
from typing import Tuple

import torch
from torch import Tensor

from .triton_common import autograd_op, call, check, grads_like, needs_grad, unit_last_stride
from .triton_conv1d import _check_x, _conv_backward, _conv_forward
from .triton_scan import _launch_scan, _launch_scan_backward, _scan_outputs
from .triton_weight_grad import weight_grad


def _x_dbl(x, x_proj_weight):
    """x_proj's output for both directions, (2, batch, L, R + 2N) in x's dtype: dt_low, B and C side by side."""
    return torch.empty((2, *x.shape[:2], x_proj_weight.shape[-1]), dtype=x.dtype, device=x.device)


def _kept(x, keep):
    """Tensors of the shapes of the conv output u and the full-width dt as the forward returns them: (2, batch,
    L, E) each when it keeps them for the backward, else empty."""
    if not keep:
        return x.new_empty(0), x.new_empty(0)
    return tuple(torch.empty((2, *x.shape), dtype=x.dtype, device=x.device) for _ in range(2))


def _split(x_dbl, R, N):
    """dt_low, B and C: views of x_proj's output, channels contiguous as the scan takes them."""
    return x_dbl[..., :R], x_dbl[..., R:R + N], x_dbl[..., R + N:]


def _fused(conv_weight, conv_bias, dt_proj_weight):
    """The weights the scan kernels recompute the conv output and dt with (triton_scan._fused_args)."""
    return conv_weight.contiguous(), conv_bias.contiguous(), dt_proj_weight.contiguous()


def _mixer_core_forward(x: Tensor, z: Tensor, conv_weight: Tensor, conv_bias: Tensor, x_proj_weight: Tensor,
                        dt_proj_weight: Tensor, A_log: Tensor, D: Tensor, dt_bias: Tensor, save: bool,
                        recompute: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (the gated, averaged output (batch, L, E), the scan's checkpoints, its y before the gate, x_proj's
    output x_dbl, the conv output u, the full-width dt); with ``save`` (autograd will call the backward) the
    scan also stores what its backward reads, and u and dt are kept unless ``recompute`` (else they are empty).
    :func:`_mixer_core_backward` takes all of them with the inputs."""
    x = unit_last_stride(x)
    batch, L, E = x.shape
    R, N = dt_proj_weight.shape[1], A_log.shape[-1]
    rows = 2, batch * L
    x_dbl = _x_dbl(x, x_proj_weight)
    u = _conv_forward(x, conv_weight, conv_bias, True, False)              # (2, batch, L, E)
    torch.bmm(u.view(*rows, E), x_proj_weight.to(u.dtype), out=x_dbl.view(*rows, R + 2 * N))
    dt_low, B, C = _split(x_dbl, R, N)
    if recompute:
        del u                                                              # transient: the scan recomputes it
        out, ckpt, y = _launch_scan(x, dt_low, A_log, B, C, D, z, dt_bias, True, False, save,
                                    _fused(conv_weight, conv_bias, dt_proj_weight), a_log=True)
        return (out, ckpt, y, x_dbl, *_kept(x, False))
    dt = torch.bmm(dt_low.reshape(*rows, R), dt_proj_weight.to(x_dbl.dtype)).view(2, batch, L, E)
    out, ckpt, y = _launch_scan(u, dt, A_log, B, C, D, z, dt_bias, True, False, save, a_log=True)
    return (out, ckpt, y, x_dbl, *((u, dt) if save else _kept(x, False)))


def _mixer_core_backward(dout: Tensor, x: Tensor, z: Tensor, conv_weight: Tensor, conv_bias: Tensor,
                         x_proj_weight: Tensor, dt_proj_weight: Tensor, A_log: Tensor, D: Tensor, dt_bias: Tensor,
                         ckpt: Tensor, y: Tensor, x_dbl: Tensor, u: Tensor, dt: Tensor
                         ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of every tensor input of :func:`_mixer_core_forward`, in its order (x, z, conv weight and bias,
    x_proj and dt_proj weights, A_log, D, dt_bias), each in its input's dtype, from the gradient of the output and
    what the forward returned besides it (u and dt empty: the forward ran with ``recompute``)."""
    x = unit_last_stride(x)
    batch, L, E = x.shape
    R, N = dt_proj_weight.shape[1], A_log.shape[-1]
    rows = 2, batch * L
    dt_low, B, C = _split(x_dbl, R, N)
    kept = u.numel() > 0
    fused = None if kept else _fused(conv_weight, conv_bias, dt_proj_weight)
    du, ddt, dA_log, dB, dC, dD, dz, ddt_bias = _launch_scan_backward(
        dout, u if kept else x, dt if kept else dt_low, A_log, B, C, D, z, dt_bias, ckpt, y, True, False, fused,
        a_log=True)
    if not kept:
        u = _conv_forward(x, conv_weight, conv_bias, True, False)           # recomputed for x_proj's weight grad
    ddt = ddt.view(*rows, E)
    w_dt = dt_proj_weight.to(ddt.dtype)
    dx_dbl = torch.cat([torch.bmm(ddt, w_dt.transpose(1, 2)), dB.view(*rows, -1), dC.view(*rows, -1)], -1)
    dw_dt = weight_grad(dt_low.reshape(*rows, R), ddt)
    dw_x = weight_grad(u.view(*rows, E), dx_dbl)
    # Freed before the conv's backward allocates: the kept u and dt stay alive until this function returns.
    del u, ddt
    du = du.view(*rows, E).baddbmm_(dx_dbl, x_proj_weight.to(dx_dbl.dtype).transpose(1, 2)).view(2, batch, L, E)
    dx, dconv_w, dconv_b = _conv_backward(du, x, conv_weight, conv_bias, True, False)
    return (dx, dz, dconv_w, dconv_b, dw_x.to(x_proj_weight.dtype), dw_dt.to(dt_proj_weight.dtype), dA_log, dD,
            ddt_bias)


mixer_core_op = torch.library.custom_op('vim::mixer_core', _mixer_core_forward, mutates_args=())


# The fake implementations allocate through the same helpers as the real ones (_x_dbl, _kept, _scan_outputs,
# grads_like), so shapes, dtypes and strides agree.
@mixer_core_op.register_fake
def _mixer_core_fake(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A_log, D, dt_bias, save,
                     recompute):
    x_dbl = _x_dbl(x, x_proj_weight)
    return (*_scan_outputs(x, x_dbl, A_log, z, save), x_dbl, *_kept(x, save and not recompute))


mixer_core_backward_op = torch.library.custom_op('vim::mixer_core_backward', _mixer_core_backward, mutates_args=())
mixer_core_backward_op.register_fake(
    lambda dout, x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A_log, D, dt_bias, ckpt, y, x_dbl, u,
    dt: grads_like(x, x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A_log, D, dt_bias))


def _setup_mixer_core(ctx, inputs, output):
    *tensors, save, _recompute = inputs
    if not save:
        raise RuntimeError('vim::mixer_core: called with save=False on inputs that need gradients; the backward '
                           'needs the checkpoints that save=True stores')
    _, *kept = output
    ctx.mark_non_differentiable(*kept)
    ctx.set_materialize_grads(False)                         # no zero-filled gradients of what was kept
    # Through save_for_backward, not ctx attributes: non-reentrant activation checkpointing hooks in there.
    ctx.save_for_backward(*tensors, *kept)


def _mixer_core_vjp(ctx, dout, *_kept_grads):
    if dout is None:
        return (None,) * 11
    return (*call(mixer_core_backward_op, _mixer_core_backward, dout, *ctx.saved_tensors), None, None)


run_mixer_core = autograd_op(mixer_core_op, _mixer_core_forward, _setup_mixer_core, _mixer_core_vjp)


def mixer_core(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A_log, D, dt_bias, recompute=False):
    """``recompute=False``: the conv output and dt kept for the backward (the faster mixer). ``recompute=True``:
    neither kept (about a third of the memory kept for the backward) at a 1.3x slower mixer, since the conv and
    the dt projection move into a scan limited by its arithmetic rather than its memory traffic
    (bench/bench_mixer.py)."""
    op = 'mixer_core'
    _check_x(op, x)
    batch, L, E = x.shape
    W = conv_weight.shape[-1] if isinstance(conv_weight, torch.Tensor) and conv_weight.dim() == 3 else 4
    N = A_log.shape[-1] if isinstance(A_log, torch.Tensor) and A_log.dim() == 3 else 1
    R = dt_proj_weight.shape[1] if isinstance(dt_proj_weight, torch.Tensor) and dt_proj_weight.dim() == 3 else 1
    for name, t, shape in (('z', z, (batch, L, E)), ('conv_weight', conv_weight, (2, E, W)),
                           ('conv_bias', conv_bias, (2, E)), ('x_proj_weight', x_proj_weight, (2, E, R + 2 * N)),
                           ('dt_proj_weight', dt_proj_weight, (2, R, E)), ('A_log', A_log, (2, E, N)), ('D', D, (2, E)),
                           ('dt_bias', dt_bias, (2, E))):
        check(op, name, t, shape, x.device)
    inputs = x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A_log, D, dt_bias
    save = needs_grad(*inputs)
    return run_mixer_core(save, *inputs, save, bool(recompute))[0]
