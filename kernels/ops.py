"""Public ops. Each picks its backend through :mod:`.dispatch` and has the signature of its reference in
:mod:`.reference`, plus ``backend=None`` to override the choice for one call."""
from typing import Optional, Tuple

import torch

from . import reference
from .dispatch import implementation

__all__ = ['selective_scan', 'bidirectional_scan', 'causal_conv1d', 'bidirectional_conv1d', 'mixer_core',
           'add_rms_norm']


def selective_scan(
        x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
        D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None, dt_bias: Optional[torch.Tensor] = None,
        dt_softplus: bool = True, reverse: bool = False, backend: Optional[str] = None,
) -> torch.Tensor:
    return implementation(x, backend).selective_scan(x, dt, A, B, C, D, z, dt_bias, dt_softplus, reverse)


def bidirectional_scan(
        x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
        D: torch.Tensor, z: torch.Tensor, dt_bias: torch.Tensor, backend: Optional[str] = None,
) -> torch.Tensor:
    return implementation(x, backend).bidirectional_scan(x, dt, A, B, C, D, z, dt_bias)


def causal_conv1d(
        x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, silu: bool = False,
        reverse: bool = False, backend: Optional[str] = None,
) -> torch.Tensor:
    return implementation(x, backend).causal_conv1d(x, weight, bias, silu, reverse)


def bidirectional_conv1d(
        x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, backend: Optional[str] = None,
) -> torch.Tensor:
    return implementation(x, backend).bidirectional_conv1d(x, weight, bias)


def mixer_core(
        x: torch.Tensor, z: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor,
        x_proj_weight: torch.Tensor, dt_proj_weight: torch.Tensor, A_log: torch.Tensor, D: torch.Tensor,
        dt_bias: torch.Tensor, recompute: bool = False, backend: Optional[str] = None,
) -> torch.Tensor:
    return implementation(x, backend).mixer_core(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A_log,
                                                 D, dt_bias, recompute)


def add_rms_norm(
        x: torch.Tensor, residual: Optional[torch.Tensor], weight: torch.Tensor, eps: float = 1e-5,
        residual_in_fp32: bool = True, backend: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    return implementation(x, backend).add_rms_norm(x, residual, weight, eps, residual_in_fp32)


for _op in __all__:  # keep the docs in one place: the reference
    globals()[_op].__doc__ = getattr(reference, _op).__doc__
