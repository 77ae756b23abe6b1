"""Triton weight gradient of a per-direction linear layer: dW[d] = a[d]^T b[d], summed over every row.

The mixer's projections map E channels to a few dozen (x_proj: E -> R + 2N) or a few to E (dt_proj: R -> E),
so their weight gradients are small (K1 x K2) outputs of a contraction over batch x L rows, tens of thousands
of them. A GEMM library tiles such a product by its output: a handful of tiles, each walking all the rows
alone, and most of the GPU idles (cuBLAS ran both at about 6% of copy bandwidth on an H100,
docs/performance.md). Here the rows are cut into splits as well, so that every multiprocessor gets programs;
each program writes its fp32 partial product, and one sum over the splits finishes the gradient.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_common import cdiv, next_power_of_2, sm_count, unit_last_stride


@triton.jit
def _weight_grad_kernel(a_ptr, b_ptr, part_ptr, M, K1, K2, rows_per_split, sa_d, sa_m, sb_d, sb_m,
                        IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K1: tl.constexpr, BLOCK_K2: tl.constexpr):
    # Grid: (cdiv(K1, BLOCK_K1), cdiv(K2, BLOCK_K2), 2 * splits): one output tile of one direction, summed over
    # one split's rows [split * rows_per_split, +rows_per_split), into partial (splits, 2, K1, K2).
    d, split = tl.program_id(2) % 2, tl.program_id(2) // 2
    offs_k1 = tl.program_id(0) * BLOCK_K1 + tl.arange(0, BLOCK_K1)
    offs_k2 = tl.program_id(1) * BLOCK_K2 + tl.arange(0, BLOCK_K2)
    first = split * rows_per_split
    a_rows = a_ptr + d * sa_d + offs_k1[:, None]              # a^T tile: channels down, rows across
    b_rows = b_ptr + d * sb_d + offs_k2[None, :]
    acc = tl.zeros((BLOCK_K1, BLOCK_K2), tl.float32)
    for start in range(first, first + rows_per_split, BLOCK_M):
        m = start + tl.arange(0, BLOCK_M)
        in_rows = (m < M) & (m < first + rows_per_split)
        at = tl.load(a_rows + m[None, :].to(tl.int64) * sa_m, mask=(offs_k1 < K1)[:, None] & in_rows[None, :],
                     other=0.)
        b = tl.load(b_rows + m[:, None].to(tl.int64) * sb_m, mask=in_rows[:, None] & (offs_k2 < K2)[None, :],
                    other=0.)
        acc += tl.dot(at, b, input_precision='ieee' if IEEE else 'tf32')
    part = part_ptr + ((split * 2 + d) * K1 + offs_k1[:, None]) * K2 + offs_k2[None, :]
    tl.store(part, acc, mask=(offs_k1 < K1)[:, None] & (offs_k2 < K2)[None, :])


# Rows per step of a program and programs per multiprocessor (two keep each busy while the other waits on
# memory): the best over the mixer's shapes in bench/weight_grad_sweep.py (H100, bf16), 7-13x cuBLAS's bmm at
# Vim-Tiny width, 0.96-1.18x at Vim-Small's, at 61-90% of the byte floor.
WEIGHT_GRAD_CONFIG = dict(BLOCK_M=64, PROGRAMS_PER_SM=2, MAX_BLOCK_K=128, num_warps=8)


def weight_grad(a: Tensor, b: Tensor) -> Tensor:
    """a (2, M, K1), b (2, M, K2), any row strides, unit stride along the last axis -> a[d]^T b[d] (2, K1, K2)
    in fp32: the gradient of the weight (K1, K2) of y = a @ W from the gradient b of y, per direction. fp32
    inputs are multiplied in full fp32 (no TF32), fp16/bf16 ones on the tensor cores; sums are fp32."""
    a, b = unit_last_stride(a), unit_last_stride(b)
    _, M, K1 = a.shape
    K2 = b.shape[-1]
    cfg = WEIGHT_GRAD_CONFIG
    block_k1, block_k2 = (min(max(next_power_of_2(k), 16), cfg['MAX_BLOCK_K']) for k in (K1, K2))
    tiles = cdiv(K1, block_k1) * cdiv(K2, block_k2) * 2
    splits = max(1, min(cdiv(cfg['PROGRAMS_PER_SM'] * sm_count(a.device), tiles), cdiv(M, cfg['BLOCK_M'])))
    rows_per_split = cdiv(cdiv(M, splits), cfg['BLOCK_M']) * cfg['BLOCK_M']
    splits = cdiv(M, rows_per_split)
    partial = torch.empty((splits, 2, K1, K2), dtype=torch.float32, device=a.device)
    _weight_grad_kernel[(cdiv(K1, block_k1), cdiv(K2, block_k2), 2 * splits)](
        a, b, partial, M, K1, K2, rows_per_split, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        IEEE=a.dtype == torch.float32, BLOCK_M=cfg['BLOCK_M'], BLOCK_K1=block_k1, BLOCK_K2=block_k2,
        num_warps=cfg['num_warps'])
    return partial[0] if splits == 1 else partial.sum(0)
