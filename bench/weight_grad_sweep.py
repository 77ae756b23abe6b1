"""Launch configurations of the split-row weight-gradient kernel (kernels/triton_weight_grad.py's
WEIGHT_GRAD_CONFIG picks one) against cuBLAS's batched GEMM, at the mixer's two weight gradients: x_proj's
(u^T dx_dbl, E x (R + 2N)) and dt_proj's (dt_low^T ddt, R x E, dt_low a strided view of x_proj's output), bf16,
CUDA-graph timing. Floor: both operands read once and the fp32 result written, over the copy bandwidth of the
same run. Results: docs/performance.md.

    python bench/weight_grad_sweep.py
"""
import itertools

import torch

import bench_kernels
from bench_kernels import copy_bandwidth, nbytes, timed
from vim.kernels import triton_weight_grad

# (name, rows = batch x L, E, R, N)
SHAPES = [('Vim-Tiny b128 L197', 128 * 197, 384, 12, 16), ('Vim-Tiny b8 L6085', 8 * 6085, 384, 12, 16),
          ('Vim-Small b128 L197', 128 * 197, 768, 24, 16)]
CONFIGS = [dict(BLOCK_M=m, PROGRAMS_PER_SM=p, MAX_BLOCK_K=128, num_warps=w)
           for m, p, w in itertools.product((32, 64, 128), (1, 2, 4), (4, 8))]


def operands(M, E, R, N):
    """{gradient: (a, b)}: the two weight gradients' operands as the mixer's backward passes them."""
    bf = dict(device='cuda', dtype=torch.bfloat16)
    x_dbl = torch.randn(2, M, R + 2 * N, **bf)
    return {'x_proj': (torch.randn(2, M, E, **bf), torch.randn(2, M, R + 2 * N, **bf)),
            'dt_proj': (x_dbl[..., :R], torch.randn(2, M, E, **bf))}


def main():
    bench_kernels.GRAPH = True
    bw = copy_bandwidth()
    config = triton_weight_grad.WEIGHT_GRAD_CONFIG
    default = dict(config)
    print(f'copy bandwidth {bw / 1e12:.2f} TB/s; default {default}')
    print('| shape | gradient | BLOCK_M | programs / SM | max BLOCK_K | warps | ms | floor / ms | cuBLAS bmm ms |')
    print('| --- | --- | --- | --- | --- | --- | --- | --- | --- |')
    for name, M, E, R, N in SHAPES:
        for grad, (a, b) in operands(M, E, R, N).items():
            floor = (nbytes(a, b) + 2 * a.shape[-1] * b.shape[-1] * 4) / bw * 1e3
            ref = torch.bmm(a.float().transpose(1, 2), b.float())
            cublas = timed(lambda: torch.bmm(a.transpose(1, 2), b))
            try:
                for cfg in CONFIGS:
                    config.update(cfg)
                    err = ((triton_weight_grad.weight_grad(a, b) - ref).norm() / ref.norm()).item()
                    assert err < 1e-4, f'{name} {grad} {cfg}: relative error {err:.1e}'
                    ms = timed(lambda: triton_weight_grad.weight_grad(a, b))
                    print(f'| {name} | {grad} | {cfg["BLOCK_M"]} | {cfg["PROGRAMS_PER_SM"]} | {cfg["MAX_BLOCK_K"]} | '
                          f'{cfg["num_warps"]} | {ms:.4f} | {floor / ms:.2f} | {cublas:.4f} |', flush=True)
            finally:
                config.update(default)


if __name__ == '__main__':
    main()
