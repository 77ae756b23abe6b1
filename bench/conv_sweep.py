"""Launch configurations of the conv1d kernels: the bidirectional conv1d forward and forward+backward over
BLOCK_T x BLOCK_E x num_warps (kernels/triton_conv1d.py's CONV_CONFIG picks one), CUDA-graph timing, with x the
strided first half of in_proj's output as the model passes it. Floor: x read once, two outputs written, over
the copy bandwidth of the same run. Results: docs/performance.md.

    python bench/conv_sweep.py
"""
import itertools

import torch

import bench_kernels
from bench_kernels import copy_bandwidth, nbytes, time_configs
from vim.kernels import triton_conv1d, triton_ops

SHAPES = [(128, 197, 384), (256, 197, 384), (8, 6085, 384)]
CONFIGS = [dict(BLOCK_T=t, BLOCK_E=e, num_warps=w)
           for t, e, w in itertools.product((16, 32, 64), (64, 128, 256), (2, 4)) if t * e // (32 * w) >= 4]


def main():
    bench_kernels.GRAPH = True
    bw = copy_bandwidth()
    print(f'copy bandwidth {bw / 1e12:.2f} TB/s; default {triton_conv1d.CONV_CONFIG}')
    print('| shape | BLOCK_T | BLOCK_E | warps | fwd ms | floor / fwd | fwd+bwd ms |')
    print('| --- | --- | --- | --- | --- | --- | --- |')
    for batch, L, E in SHAPES:
        xz = torch.randn(batch, L, 2 * E, device='cuda').to(torch.bfloat16)
        x = xz[..., :E]
        w, b = torch.randn(2, E, 4, device='cuda') * 0.3, torch.randn(2, E, device='cuda')
        floor = nbytes(x) * 3 / bw * 1e3
        for _, cfg, fwd, fb in time_configs(triton_conv1d.CONV_CONFIG, triton_ops.bidirectional_conv1d, [x, w, b],
                                            [('', cfg) for cfg in CONFIGS]):
            print(f'| b{batch} L{L} E{E} | {cfg["BLOCK_T"]} | {cfg["BLOCK_E"]} | {cfg["num_warps"]} | {fwd:.4f} | '
                  f'{floor / fwd:.2f} | {fb:.4f} |', flush=True)


if __name__ == '__main__':
    main()
