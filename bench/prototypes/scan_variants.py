"""Forward-scan prototypes that picked the design of kernels/triton_scan.py (bench/kernel_notes.md, "v2"):
correctness against the production kernel, timing, and an ncu pass.

    python3 bench/prototypes/scan_variants.py                      # timings (H100 run: kernel_notes.md)
    ncu --clock-control none --section WarpStateStats --section SchedulerStats --section Occupancy \
        -k regex:fwd python3 bench/prototypes/scan_variants.py --ncu --only cur,k4_s1,k4_s3

'cur' is whatever kernels/triton_scan.py holds now (at the time of the recorded run: the associative-scan
kernel of commit a265966). The kernels are in scan_forward.py.
"""
import argparse
import sys

import torch
import triton

sys.path[:0] = ['bench/prototypes', 'bench']
import scan_forward  # noqa: E402
from bench_kernels import scan_inputs, timed  # noqa: E402
from vim.kernels import triton_ops  # noqa: E402


def proto(kernel, be, warps=1, **consts):
    def run(x, dt, A, B, C, D, z, bias):
        batch, L, E = x.shape
        out = torch.empty_like(x)
        At = A.t().contiguous()
        kernel[(triton.cdiv(E, be), batch)](x, dt, At, B, C, D, z, bias, out, L, E, A.shape[1],
                                            BLOCK_E=be, BLOCK_N=16, num_warps=warps, **consts)
        return out
    return run

VARIANTS = {
    'cur': lambda *a: triton_ops.selective_scan(*a),
    'k1_bt4': proto(scan_forward.fwd_rows, 32, BLOCK_T=4),
    'k1_bt8': proto(scan_forward.fwd_rows, 32, BLOCK_T=8),
    'k4_s1': proto(scan_forward.fwd_split, 32, STAGES=1, FAST_SP=True),
    'k4_s2': proto(scan_forward.fwd_split, 32, STAGES=2, FAST_SP=True),
    'k4_s3': proto(scan_forward.fwd_split, 32, STAGES=3, FAST_SP=True),
    'k4_s4': proto(scan_forward.fwd_split, 32, STAGES=4, FAST_SP=True),
    'k4_s1_be64': proto(scan_forward.fwd_split, 64, STAGES=1, FAST_SP=True),
    'k4_s3_be64': proto(scan_forward.fwd_split, 64, STAGES=3, FAST_SP=True),
    'k4_s3_be64_w2': proto(scan_forward.fwd_split, 64, warps=2, STAGES=3, FAST_SP=True),
    'k4_s3_be16': proto(scan_forward.fwd_split, 16, STAGES=3, FAST_SP=True),
}

p = argparse.ArgumentParser()
p.add_argument('--ncu', action='store_true')
p.add_argument('--only', default=None)
args = p.parse_args()
names = args.only.split(',') if args.only else list(VARIANTS)
shapes = [(128, 197, 384)] if args.ncu else [(128, 197, 384), (8, 6085, 384), (128, 197, 768)]
for batch, L, E in shapes:
    inp = scan_inputs(None, batch, L, E)
    ref = VARIANTS['cur'](*inp).float()
    for name in names:
        try:
            out = VARIANTS[name](*inp).float()
            err = ((out - ref).abs().max() / ref.abs().max()).item()
            if args.ncu:
                torch.cuda.synchronize(); VARIANTS[name](*inp); torch.cuda.synchronize()
                continue
            ms = timed(lambda: VARIANTS[name](*inp))
        except Exception as e:
            print(name, 'FAILED', repr(e)[:300]); continue
        print(f'b{batch} L{L} E{E} {name:16s} {ms:.4f} ms  rel err {err:.1e}', flush=True)
