"""Where the scan backward's time goes (bench/kernel_notes.md, reading 7): the production backward against
variants, CUDA-graph timing, and an ncu pass. Variants: dB and dC atomics as plain stores (wrong values, timing
only: what the atomics cost); the backward's load-pipeline depth, alone and with a register cap (more warps per
SM, more spills).

    python3 bench/prototypes/bwd_probe.py                        # timings, Vim-Tiny b128 L197 and b8 L6085
    ncu --section SchedulerStats --section WarpStateStats --section Occupancy --section SpeedOfLight \
        --section SourceCounters -k regex:_scan_bwd -c 1 python3 bench/prototypes/bwd_probe.py --ncu
"""
import argparse
import importlib.util
import os
import sys
import tempfile

sys.path[:0] = ['bench']
import bench_kernels  # noqa: E402
from bench_kernels import fwd_bwd, scan_inputs  # noqa: E402
from vim.kernels import triton_scan  # noqa: E402


def variant(name, replacements):
    """triton_scan with text replacements, loaded from a temporary file as a module of vim.kernels (so its
    relative imports resolve) without writing into the package."""
    src = open(triton_scan.__file__).read()
    for old, new in replacements:
        assert old in src, old
        src = src.replace(old, new)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f'_probe_{name}.py')
        with open(path, 'w') as f:
            f.write(src)
        spec = importlib.util.spec_from_file_location(f'vim.kernels._probe_{name}', path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)                   # the kernels keep their source from here on
    return module


parser = argparse.ArgumentParser()
parser.add_argument('--ncu', action='store_true', help='one forward+backward at b128 L197 (for ncu)')
args = parser.parse_args()
if args.ncu:
    fwd_bwd(triton_scan.selective_scan, scan_inputs(None, 128, 197, 384))()
    sys.exit()
bench_kernels.GRAPH = True
BWD_LAUNCH = ("STAGES=_stages(cfg, n_seg, backward=True),\n                num_warps=cfg['num_warps'])\n"
              "        return (dx")
variants = [('production', triton_scan),
            ('dB/dC stores, no atomics', variant('no_atomics', [
                ("tl.atomic_add(dB_ptr + dBC_row + t[:, None] * N, _stack(dB0, dB1, dB2, dB3), mask=mask_bc,\n"
                 "                                  sem='relaxed')", "tl.store(dB_ptr + dBC_row + t[:, None] * N, "
                 "_stack(dB0, dB1, dB2, dB3), mask=mask_bc)"),
                ("tl.atomic_add(dC_ptr + dBC_row + t[:, None] * N, _stack(dC0, dC1, dC2, dC3), mask=mask_bc,\n"
                 "                                  sem='relaxed')", "tl.store(dC_ptr + dBC_row + t[:, None] * N, "
                 "_stack(dC0, dC1, dC2, dC3), mask=mask_bc)")]))]


def backward_launch(stages=None, maxnreg=None):
    """The backward launch with its pipeline depth and/or register cap fixed."""
    launch = BWD_LAUNCH
    if stages is not None:
        launch = launch.replace('STAGES=_stages(cfg, n_seg, backward=True)', f'STAGES={stages}')
    if maxnreg is not None:
        launch = launch.replace("num_warps=cfg['num_warps'])", f"num_warps=cfg['num_warps'], maxnreg={maxnreg})")
    return [(BWD_LAUNCH, launch)]


variants += [(f'backward STAGES {s}', variant(f'stages{s}', backward_launch(stages=s))) for s in (1, 2)]
variants += [(f'backward STAGES {s} maxnreg {n}', variant(f'stages{s}_maxnreg{n}', backward_launch(s, n)))
             for s, n in ((2, 200), (2, 168), (2, 128))]
for batch, L in ((128, 197), (8, 6085)):
    inputs = scan_inputs(None, batch, L, 384)
    for name, module in variants:
        ms = bench_kernels.timed(fwd_bwd(module.selective_scan, inputs))
        print(f'| b{batch} L{L} | {name} | scan fwd+bwd {ms:.3f} ms |', flush=True)
