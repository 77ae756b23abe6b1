#!/usr/bin/env bash
# One device-machine call for the kernels: start building the official kernels (mamba_ssm, causal_conv1d from
# the sdists in .whl/, sm_90 only) in the background, run the GPU tests, then compute-sanitizer's memcheck.
# Usage (repo root, on the GPU machine): bash bench/gpu_checks.sh [OUT_DIR]
set -u
OUT=${1:-${OUT:-/tmp/vim_kernels_out}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# vim.kernels without the rest of the package (the model code is not needed here)
mkdir -p /tmp/pkg/vim && : > /tmp/pkg/vim/__init__.py && ln -sfn "$PWD/kernels" /tmp/pkg/vim/kernels
export PYTHONPATH=/tmp/pkg
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch, triton, sys; print('torch', torch.__version__, 'triton', triton.__version__, 'python', sys.version.split()[0])"
} > "$OUT/env.txt" 2>&1
if ls .whl/mamba_ssm-*.tar.gz >/dev/null 2>&1 && [ ! -e /tmp/official_build.log ] && ! python3 -c "import selective_scan_cuda" 2>/dev/null; then
  setsid bash -c "MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 \
    python3 -m pip install --no-build-isolation --no-deps --no-index .whl/einops-*.whl .whl/causal_conv1d-*.tar.gz \
    .whl/mamba_ssm-*.tar.gz > /tmp/official_build.log 2>&1; echo build rc=\$? >> /tmp/official_build.log" &
fi
timeout 300 python3 -P -m pytest -m gpu tests/kernels/test_triton_gpu.py -q -p no:cacheprovider -rf --durations=8 2>&1 | tee "$OUT/gpu_tests.log"
timeout 150 compute-sanitizer --tool memcheck --print-limit 20 python3 -P -m pytest -m gpu tests/kernels/test_triton_gpu.py -q \
  -p no:cacheprovider -k "(shape0 or causal or input_checks) and not long" 2>&1 | tail -40 > "$OUT/memcheck.log"
tail -5 "$OUT/memcheck.log"
cp /tmp/official_build.log "$OUT/" 2>/dev/null; tail -3 /tmp/official_build.log 2>/dev/null
