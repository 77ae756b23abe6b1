"""The Triton backend: the ops of :mod:`.reference`, same names and positional signatures, as Triton kernels.
:mod:`.dispatch` imports this module on the 'triton' backend; importing it registers the kernels with PyTorch as
custom ops (``torch.ops.vim.scan``, ``conv1d``, ``mixer_core``, ``add_rms_norm`` and a ``*_backward`` op each,
whose autograd formula the forward op carries), which torch.compile and torch.export keep as opaque nodes. Load a
program exported on this backend after ``import vim.kernels.triton_ops``.

Kernel families: :mod:`.triton_scan` (selective and bidirectional scan), :mod:`.triton_conv1d` (depthwise
causal conv1d + SiLU), :mod:`.triton_mixer` (the mixer core: conv, projections and scan, the conv output and dt
recomputed in the scan), :mod:`.triton_weight_grad` (its weight gradients), :mod:`.triton_rmsnorm` (residual add +
RMSNorm). Inputs: CUDA tensors (or CPU tensors
under ``TRITON_INTERPRET=1``) of float32, float16 or bfloat16; state and sums in float32.
"""
from .triton_conv1d import bidirectional_conv1d, causal_conv1d
from .triton_mixer import mixer_core
from .triton_rmsnorm import add_rms_norm
from .triton_scan import bidirectional_scan, selective_scan

__all__ = ['selective_scan', 'bidirectional_scan', 'causal_conv1d', 'bidirectional_conv1d', 'mixer_core',
           'add_rms_norm']
