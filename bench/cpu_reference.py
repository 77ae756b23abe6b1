"""CPU numbers of the pure-PyTorch path: Vim-Tiny forward time per image at 224 px, and the scan's
formulations compared (chunk sizes, the whole sequence at once, a parallel prefix scan).

    python bench/cpu_reference.py [--threads 2] [--out bench/cpu_reference.md]
"""
import argparse
import platform
import time

import timm
import torch

import vim
from vim.kernels import reference
from report import emit, finish


def best_of(fn, repeats=3):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def parallel_prefix_scan(x, dt, A, B, C, D, z, dt_bias):
    """Hillis-Steele scan over the whole sequence: log2(L) passes over (batch, L, E, N) tensors."""
    dt = torch.nn.functional.softplus(dt + dt_bias)
    a = torch.exp(dt.unsqueeze(-1) * A)
    b = (dt * x).unsqueeze(-1) * B.unsqueeze(2)
    offset = 1
    while offset < x.shape[1]:
        b = torch.cat([b[:, :offset], b[:, offset:] + a[:, offset:] * b[:, :-offset]], 1)
        a = torch.cat([a[:, :offset], a[:, offset:] * a[:, :-offset]], 1)
        offset *= 2
    y = torch.einsum('blen,bln->ble', b, C) + x * D
    return y * torch.nn.functional.silu(z)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lines = [f'torch {torch.__version__}, timm {timm.__version__}, {platform.processor() or platform.machine()}, '
             f'{args.threads} threads', '']

    model = timm.create_model('vim_tiny_patch16_224').eval()
    lines += ['| Vim-Tiny forward, 224 px | batch | s per image |', '| --- | --- | --- |']
    for batch in (1, 8):
        images = torch.randn(batch, 3, 224, 224)
        with torch.inference_mode():
            t = best_of(lambda: model(images))
        emit(lines, f'| reference path | {batch} | {t / batch:.3f} |')

    E, N, L = 384, 16, 197
    lines += ['', f'| scan formulation (one direction, E={E}, N={N}, L={L}) | batch | ms |', '| --- | --- | --- |']
    for batch in (1, 8):
        inp = (torch.randn(batch, L, E), torch.randn(batch, L, E) - 2, -torch.rand(E, N) * 4,
               torch.randn(batch, L, N), torch.randn(batch, L, N), torch.randn(E), torch.randn(batch, L, E),
               torch.randn(E))
        with torch.inference_mode():
            for chunk in (16, 32, 64, 128, L):
                t = best_of(lambda: reference.selective_scan(*inp, chunk=chunk))
                name = 'whole sequence at once' if chunk == L else f'chunks of {chunk}'
                emit(lines, f'| sequential steps, {name} | {batch} | {t * 1e3:.1f} |')
            t = best_of(lambda: parallel_prefix_scan(*inp))
            emit(lines, f'| parallel prefix (Hillis-Steele) | {batch} | {t * 1e3:.1f} |')
    finish(lines, args.out)


if __name__ == '__main__':
    main()
