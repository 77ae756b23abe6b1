"""Plain-PyTorch reference ops: readable, differentiable, and the ground truth for the Triton kernels.

Layout: activations are (batch, length, channels) with channels contiguous, the way the linear layers
produce them. Bidirectional ops carry a leading direction axis of size 2: index 0 runs forward in time,
index 1 runs backward (reverse=True), each with its own weights.

Every op computes in float32 (float64 stays float64) and returns the input dtype.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

__all__ = ['selective_scan', 'bidirectional_scan', 'causal_conv1d', 'bidirectional_conv1d', 'mixer_core',
           'add_rms_norm']


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def selective_scan(
        x: torch.Tensor,
        dt: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: Optional[torch.Tensor] = None,
        z: Optional[torch.Tensor] = None,
        dt_bias: Optional[torch.Tensor] = None,
        dt_softplus: bool = True,
        reverse: bool = False,
        chunk: int = 64,
) -> torch.Tensor:
    """Mamba's S6 selective scan (ZOH discretisation, diagonal real A).

    Shapes: x, dt, z (batch, L, E); A (E, N); B, C (batch, L, N); D, dt_bias (E,).

        delta_t = softplus(dt_t + dt_bias)
        h_t     = exp(delta_t * A) * h_{t-1} + delta_t * B_t * x_t
        y_t     = <C_t, h_t> + D * x_t,     out_t = y_t * silu(z_t)

    reverse=True runs the recurrence from t = L-1 down to 0 (the backward branch of Vim).

    The recurrence runs over time in chunks of ``chunk`` steps: a chunk's decays and inputs, (chunk,
    batch, E, N), are built at once and stay in cache while a vectorised loop walks its steps, one fused
    multiply-add on the (batch, E, N) state each. On a CPU this beats materialising all L steps (4-8x
    less memory traffic) and the parallel-prefix formulations, which do log(L) times more arithmetic
    (bench/cpu_reference.md has the measurements). Under autograd each chunk is checkpointed: the
    backward keeps one state per chunk and recomputes the chunk, instead of keeping every step's.
    """
    dtype = x.dtype
    cdt = _compute_dtype(dtype)
    x, dt, A, B, C = x.to(cdt), dt.to(cdt), A.to(cdt), B.to(cdt), C.to(cdt)
    if dt_bias is not None:
        dt = dt + dt_bias.to(cdt)
    if dt_softplus:
        dt = F.softplus(dt)  # threshold 20, as the kernels

    # time-major (L, batch, ...), so one step is one contiguous slice
    dt_t, x_t, B_t, C_t = (t.transpose(0, 1).contiguous() for t in (dt, x, B, C))
    length = x.shape[1]
    starts = list(range(0, length, chunk))
    h = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])        # (batch, E, N)
    ys = [x_t] * len(starts)
    checkpointed = torch.is_grad_enabled() and any(t.requires_grad for t in (dt_t, x_t, B_t, C_t, A))
    for c in (reversed(range(len(starts))) if reverse else range(len(starts))):
        span = slice(starts[c], starts[c] + chunk)
        args = (h, dt_t[span], x_t[span], B_t[span], C_t[span], A, reverse)
        if checkpointed:
            ys[c], h = torch.utils.checkpoint.checkpoint(_scan_chunk, *args, use_reentrant=False)
        else:
            ys[c], h = _scan_chunk(*args)
    y = torch.cat(ys, dim=0).transpose(0, 1)                   # (batch, L, E)
    if D is not None:
        y = y + x * D.to(cdt)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y.to(dtype)


def _scan_chunk(h, dt, x, B, C, A, reverse: bool):
    """Steps of one chunk, time-major: dt, x (T, batch, E); B, C (T, batch, N); h (batch, E, N) entering.
    Returns the chunk's <C_t, h_t> (T, batch, E) and the state leaving it."""
    decay = torch.exp(dt.unsqueeze(-1) * A)                    # (T, batch, E, N)
    drive = (dt * x).unsqueeze(-1) * B.unsqueeze(2)            # (T, batch, E, N)
    decay, drive = decay.unbind(0), drive.unbind(0)     # unbind, not indexing: one gradient stack, not T
    states = [h] * len(decay)
    for t in (range(len(decay) - 1, -1, -1) if reverse else range(len(decay))):
        h = torch.addcmul(drive[t], decay[t], h)
        states[t] = h
    return torch.einsum('tben,tbn->tbe', torch.stack(states), C), h


def bidirectional_scan(
        x: torch.Tensor,
        dt: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor,
        z: torch.Tensor,
        dt_bias: torch.Tensor,
) -> torch.Tensor:
    """The scan core of a bimamba-v2 mixer: silu(z) * (y_forward + y_backward) / 2.

    Shapes: x, dt (2, batch, L, E); A (2, E, N); B, C (2, batch, L, N); D, dt_bias (2, E); z (batch, L, E).
    Direction 0 scans forward, direction 1 backward; softplus is applied to dt + dt_bias. Each y includes
    its own D skip; both are gated by the same z at the same positions.
    """
    y_fwd, y_bwd = (
        selective_scan(x[i], dt[i], A[i], B[i], C[i], D[i], dt_bias=dt_bias[i], reverse=bool(i))
        for i in range(2))
    cdt = _compute_dtype(x.dtype)
    out = F.silu(z.to(cdt)) * (y_fwd.to(cdt) + y_bwd.to(cdt)) * 0.5
    return out.to(x.dtype)


def causal_conv1d(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        silu: bool = False,
        reverse: bool = False,
) -> torch.Tensor:
    """Depthwise causal conv1d over time: out_t = sum_k weight[:, k] * x_{t - (W-1) + k} (+ bias).

    Shapes: x (batch, L, E); weight (E, W); bias (E,). reverse=True is the same conv on the reversed
    sequence, read back in original order: out_t = sum_k weight[:, k] * x_{t + (W-1) - k}.
    """
    dtype = x.dtype
    cdt = _compute_dtype(dtype)
    width = weight.shape[-1]
    seq = x.to(cdt).transpose(1, 2)                            # (batch, E, L)
    if reverse:
        seq = seq.flip(-1)
    out = F.conv1d(seq, weight.to(cdt).unsqueeze(1), None if bias is None else bias.to(cdt),
                   padding=width - 1, groups=seq.shape[1])[..., :seq.shape[-1]]
    if reverse:
        out = out.flip(-1)
    if silu:
        out = F.silu(out)
    return out.transpose(1, 2).to(dtype)


def bidirectional_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Both convs of a bimamba-v2 mixer, each followed by SiLU.

    Shapes: x (batch, L, E); weight (2, E, W); bias (2, E). Returns (2, batch, L, E): index 0 the causal
    conv, index 1 the anti-causal one (the backward branch in original order).
    """
    return torch.stack([causal_conv1d(x, weight[i], bias[i], silu=True, reverse=bool(i)) for i in range(2)])


def mixer_core(
        x: torch.Tensor,
        z: torch.Tensor,
        conv_weight: torch.Tensor,
        conv_bias: torch.Tensor,
        x_proj_weight: torch.Tensor,
        dt_proj_weight: torch.Tensor,
        A_log: torch.Tensor,
        D: torch.Tensor,
        dt_bias: torch.Tensor,
        recompute: bool = False,
) -> torch.Tensor:
    """The core of a bimamba-v2 mixer, from in_proj's halves to what out_proj takes: both directions' conv + SiLU,
    x_proj (-> dt_low, B, C), dt_proj and scan, gated by silu(z) and averaged.

    Shapes: x, z (batch, L, E); conv_weight (2, E, W); conv_bias (2, E); x_proj_weight (2, E, R + 2N) and
    dt_proj_weight (2, R, E), laid out for bmm; A_log (2, E, N), the scan's A being -exp(A_log) as in Mamba;
    D, dt_bias (2, E). Returns (batch, L, E).
    ``recompute`` trades speed for memory on the Triton path (:mod:`.triton_mixer`); here autograd keeps what it
    keeps either way.
    """
    return composed_mixer_core(bidirectional_conv1d, bidirectional_scan, x, z, conv_weight, conv_bias,
                               x_proj_weight, dt_proj_weight, A_log, D, dt_bias)


def composed_mixer_core(conv1d, scan, x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A_log, D,
                        dt_bias):
    """:func:`mixer_core` from a bidirectional conv1d and scan: this module's, or the Triton kernels' (each op
    its own launch, the projections as bmm between them)."""
    batch, length, E = x.shape
    R, N = dt_proj_weight.shape[1], A_log.shape[-1]
    u = conv1d(x, conv_weight, conv_bias)                                 # (2, batch, L, E)
    x_dbl = torch.bmm(u.reshape(2, batch * length, E), x_proj_weight)
    dt, B, C = x_dbl.split([R, N, N], dim=-1)
    dt = torch.bmm(dt, dt_proj_weight)
    A = -torch.exp(A_log.to(_compute_dtype(A_log.dtype)))          # fp32 at least, as the kernels
    return scan(u, dt.view(2, batch, length, E), A, B.view(2, batch, length, N), C.view(2, batch, length, N), D, z,
                dt_bias)


def add_rms_norm(
        x: torch.Tensor,
        residual: Optional[torch.Tensor],
        weight: torch.Tensor,
        eps: float = 1e-5,
        residual_in_fp32: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """residual' = x + residual (or x when residual is None); out = residual' / rms(residual') * weight.

    Returns (out in x's dtype, residual' in float32 (float64 stays) when residual_in_fp32 else x's dtype).
    """
    dtype = x.dtype
    cdt = _compute_dtype(dtype)
    summed = x.to(cdt) if residual is None else x.to(cdt) + residual.to(cdt)
    out = summed * torch.rsqrt(summed.pow(2).mean(-1, keepdim=True) + eps) * weight.to(cdt)
    new_residual = summed if residual_in_fp32 else summed.to(dtype)
    return out.to(dtype), new_residual
