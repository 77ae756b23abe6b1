"""vim.kernels: the tensor-level ops of Vision Mamba.

Each op has a plain-PyTorch reference (:mod:`.reference`, the ground truth) and a Triton implementation
(:mod:`.triton_ops`); :mod:`.dispatch` picks one per call. Models import the ops from here, never a kernel.
"""
from .dispatch import BACKENDS, resolve, set_backend, use_backend
from .ops import add_rms_norm, bidirectional_conv1d, bidirectional_scan, causal_conv1d, mixer_core, selective_scan

__all__ = [
    'BACKENDS', 'resolve', 'set_backend', 'use_backend',
    'add_rms_norm', 'bidirectional_conv1d', 'bidirectional_scan', 'causal_conv1d', 'mixer_core', 'selective_scan',
]
