"""Instruction counts of the scan kernels' hot loops on sm_90, without a GPU.

Compiles each kernel ahead of time for an H100 (Triton's bundled ptxas, target sm_90a), reports registers and
spills from `ptxas -v`, and counts the SASS instructions of each tile loop by opcode. The
per-update figure divides that loop by the state updates one thread does per tile (4 steps x the states it
holds), the number docs/performance.md budgets against.

    python bench/sass_count.py [--block-e-fwd 32] [--block-e-bwd 16]

It compiles with the Triton it imports, and versions compile the same kernel differently (the forward loop is
726 instructions with 3.8, 898 with 3.6): count with the GPU's version, e.g.
``pip install --no-deps --target /tmp/t36 triton==3.6.0; PYTHONPATH=/tmp/t36 python bench/sass_count.py``.
"""
import argparse
import collections
import inspect
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from vim.kernels import triton_scan

NVIDIA_BIN = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin')
FP32_POINTERS = {'A_ptr', 'D_ptr', 'bias_ptr', 'ckpt_ptr', 'segsum_ptr', 'segh_ptr', 'scratch_ptr', 'segdh_ptr',
                 'dA_ptr', 'dB_ptr', 'dC_ptr', 'dD_ptr', 'dbias_ptr'}


def compile_sm90(kernel, constexprs, num_warps=1, maxnreg=None):
    """(ptxas -v summary, SASS text) of ``kernel`` for bf16 activations, fp32 parameters. Integer arguments are
    marked 16-divisible where the JIT would specialise them so at Vim-Tiny's b128 L197 shapes (every pointer,
    size and stride but L, n_ckpt and n_seg): that decides vectorised and pipelined loads."""
    params = list(inspect.signature(kernel.fn).parameters)
    signature = {p: 'constexpr' if p in constexprs else
                 ('*fp32' if p in FP32_POINTERS else '*bf16') if p.endswith('_ptr') else 'i32' for p in params}
    divisible = [p for p in params if p not in constexprs and p not in ('L', 'n_ckpt', 'n_seg')]
    attrs = {(params.index(p),): [['tt.divisibility', 16]] for p in divisible}
    compiled = triton.compile(ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget('cuda', 90, 32), options=dict(num_warps=num_warps, maxnreg=maxnreg))
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = os.path.join(tmp, 'k.ptx'), os.path.join(tmp, 'k.cubin')
        with open(ptx, 'w') as f:
            f.write(compiled.asm['ptx'])
        info = subprocess.run([os.path.join(NVIDIA_BIN, 'ptxas'), '-arch=sm_90a', '-v', ptx, '-o', cubin],
                              capture_output=True, text=True).stderr
        sass = subprocess.run([os.path.join(NVIDIA_BIN, 'nvdisasm'), cubin], capture_output=True, text=True).stdout
    used = [line.split('info    : ')[-1] for line in info.splitlines() if 'Used' in line or 'spill' in line]
    return '; '.join(used), sass


def tile_loops(sass, min_size=100):
    """Opcodes of each innermost loop of at least min_size instructions (a label up to the last backward branch to
    it, with no other such loop inside), in program order. The tile loops are the kernels' hot loops; an outer
    loop (the backward's chunk loop) is the sum of its inner ones plus its own overhead, so it is not listed."""
    labels, instructions, pending = {}, [], []
    for line in sass.splitlines():
        label = re.match(r'^\s*(\.L_x_\d+):', line)
        if label:
            pending.append(label.group(1))
            continue
        ins = re.match(r'\s+/\*([0-9a-f]{4,})\*/\s+([@A-Z].*)', line)
        if ins:
            addr = int(ins.group(1), 16)
            labels.update((name, addr) for name in pending)
            pending = []
            instructions.append((addr, ins.group(2)))
    spans = {}
    for addr, text in instructions:
        target = re.search(r'BRA\s+`?\(?(\.L_x_\d+)', text)
        if target and labels.get(target.group(1), addr) < addr:
            start = labels[target.group(1)]
            spans[start] = max(spans.get(start, addr), addr)
    spans = [(a, b) for a, b in spans.items() if sum(a <= x <= b for x, _ in instructions) >= min_size]
    inner = [(a, b) for a, b in spans if not any((a, b) != (c, d) and a <= c and d <= b for c, d in spans)]
    return [[re.sub(r'^@!?U?P\w+\s+', '', t).split()[0].split('.')[0] for x, t in instructions if a <= x <= b]
            for a, b in sorted(inner)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--block-e-fwd', type=int, default=32)
    parser.add_argument('--block-e-bwd', type=int, default=16)
    args = parser.parse_args()
    options = dict(REVERSE=False, HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, NDIR=1, D_FIRST=0, D_LAST=1,
                   BLOCK_N=16, CKPT_TILES=16, W=4, FUSED_CONV=False, FUSED_DT=False, BLOCK_R=1)
    fwd, bwd, dh_summary = triton_scan._scan_fwd_kernel, triton_scan._scan_bwd_kernel, triton_scan._dh_summary_kernel
    # (name, kernel, its mode, channel block, segmented); B and C widened in place and registers capped as the
    # launches do
    cfg = triton_scan.SCAN_CONFIG
    cases = [('forward, one segment', fwd, dict(MODE=0, SAVE=True), args.block_e_fwd, False),
             ('forward, one segment, inference', fwd, dict(MODE=0, SAVE=False), args.block_e_fwd, False),
             ('forward, segment summaries', fwd, dict(MODE=1, SAVE=False), args.block_e_fwd, True),
             ('forward, segment replay', fwd, dict(MODE=2, SAVE=True), args.block_e_fwd, True),
             ('backward, one segment', bwd, dict(SEGMENTED=False), args.block_e_bwd, False),
             ('backward, segment summaries', dh_summary, {}, args.block_e_fwd, True),
             ('backward, segment replay', bwd, dict(SEGMENTED=True), args.block_e_bwd, True)]
    print(f'triton {triton.__version__} ({triton.__file__})')
    for name, kernel, mode, block_e, segmented in cases:
        stages = triton_scan._stages(cfg, 2 if segmented else 1, backward=kernel is not fwd)
        params = inspect.signature(kernel.fn).parameters
        constexprs = {k: v for k, v in dict(options, BLOCK_E=block_e, STAGES=stages, WIDEN_BC=cfg['WIDEN_BC'],
                                            **mode).items() if k in params}
        maxnreg = triton_scan._register_cap(cfg) if kernel is not bwd else None   # as launched
        summary, sass = compile_sm90(kernel, constexprs, maxnreg=maxnreg)
        updates = 4 * 16 * block_e / 32                     # per thread per tile: 4 steps x (16 states x channels)
        print(f'{name} (BLOCK_E {block_e}): {summary}')
        for ops in tile_loops(sass):                         # the backward: pass 1, then pass 2
            print(f'  loop {len(ops)} instructions, {len(ops) / updates:.1f} per state update; ' +
                  ', '.join(f'{op} {n}' for op, n in collections.Counter(ops).most_common(10)))


if __name__ == '__main__':
    main()
