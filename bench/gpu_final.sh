#!/usr/bin/env bash
# One device-machine call for the whole package: kernel GPU tests, Triton vs reference on the whole model,
# model throughput against DeiT, training and detection throughput. Writes at most 8 files to OUT (about 7
# minutes on an H100).
# Usage (repo root, on the GPU machine): bash bench/gpu_final.sh [OUT_DIR]
set -u
OUT=${1:-${OUT:-/tmp/vim_gpu_out}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# the package without installing it: vim/ plus kernels/ mounted as vim.kernels (setup.cfg's package_dir)
rm -rf /tmp/vim_pkg && mkdir -p /tmp/vim_pkg/vim
for f in "$PWD"/vim/*; do ln -sfn "$f" /tmp/vim_pkg/vim/; done
ln -sfn "$PWD/kernels" /tmp/vim_pkg/vim/kernels
export PYTHONPATH=/tmp/vim_pkg
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton, timm, sys; print('torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__, 'python', sys.version.split()[0])"
} > "$OUT/env.txt" 2>&1
# memcheck beside the tests on bench/memcheck_cases.txt: the segmented and one-segment scan, both conv1d kernels,
# add+RMSNorm (fp32, values and gradients) and the softplus / sigmoid helpers
MEMCHECK=$(cat bench/memcheck_cases.txt)
timeout 200 compute-sanitizer --tool memcheck --print-limit 20 python3 -P -m pytest -m gpu \
  tests/kernels/test_triton_gpu.py -q -p no:cacheprovider -k "$MEMCHECK" 2>&1 | tail -8 > "$OUT/memcheck.log" &
timeout 230 python3 -P -m pytest -m gpu tests/kernels -q -p no:cacheprovider -rf -n 8 -k "not long_sequence" 2>&1 \
  | tail -25 > "$OUT/gpu_tests.log"
wait
timeout 200 python3 -P -m pytest -m gpu tests/kernels -q -p no:cacheprovider -rf -k long_sequence 2>&1 \
  | tail -5 >> "$OUT/gpu_tests.log"
tail -4 "$OUT/gpu_tests.log"; tail -2 "$OUT/memcheck.log"
timeout 300 python3 bench/model_throughput.py --compile-deit --out "$OUT/model_throughput.md" 2>&1 | tail -30
timeout 70 python3 bench/train_throughput.py --steps 40 --out "$OUT/train_throughput_b128.json" 2>&1 | tail -2
timeout 70 python3 bench/detection_throughput.py --model vim_small_patch16_224 --batch-size 8 --size 800 1216 \
  --amp bf16 --steps 6 --warmup 2 --out "$OUT/detection_throughput.json" 2>&1 | tail -2
