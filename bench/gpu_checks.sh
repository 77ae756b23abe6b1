#!/usr/bin/env bash
# One device-machine call for the kernels (about 4 minutes on an H100, most of it Triton compiling):
#   phase 1, in parallel: the GPU kernel tests in shards (compilation is CPU-bound and per process), memcheck on
#   small cases, and bench warm-ups that fill Triton's on-disk cache for phase 2;
#   phase 2, alone on the GPU: bench_kernels.py --scan-only at the shapes, with the launch sweep.
# Usage (repo root, on the GPU machine): bash bench/gpu_checks.sh [OUT_DIR]
set -u
OUT=${1:-${OUT:-/tmp/vim_kernels_out}}
mkdir -p "$OUT" /tmp/logs
export PYTHONUNBUFFERED=1
# vim.kernels without the rest of the package (the model code is not needed here)
mkdir -p /tmp/pkg/vim && : > /tmp/pkg/vim/__init__.py && ln -sfn "$PWD/kernels" /tmp/pkg/vim/kernels
export PYTHONPATH=/tmp/pkg
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch, triton, sys; print('torch', torch.__version__, 'triton', triton.__version__, 'python', sys.version.split()[0])"
} > "$OUT/env.txt" 2>&1
T1=${T1:-150}
MEMCHECK_DEFAULT=$(cat bench/memcheck_cases.txt)   # the cases memcheck runs (see bench/gpu_final.sh)
SEL=${SEL:-"not model and not long_sequence"}   # every kernel case but the two slow ones (run them alone)
python3 -P -m pytest -m gpu tests/kernels/test_triton_gpu.py -q -p no:cacheprovider --collect-only -k "$SEL" 2>/dev/null \
  | grep '::' > /tmp/ids.txt
NSH=${NSH:-9}
for i in $(seq 0 $((NSH - 1))); do
  awk -v n=$NSH -v i=$i 'NR % n == i' /tmp/ids.txt > /tmp/ids$i.txt
  timeout $T1 python3 -P -m pytest -m gpu -q -p no:cacheprovider -rf $(cat /tmp/ids$i.txt) > /tmp/logs/shard$i.log 2>&1 &
done
timeout $T1 compute-sanitizer --tool memcheck --print-limit 20 python3 -P -m pytest -m gpu tests/kernels/test_triton_gpu.py \
  -q -p no:cacheprovider -k "${MEMCHECK_SEL:-$MEMCHECK_DEFAULT}" \
  > /tmp/logs/memcheck.log 2>&1 &
if [ "${BENCH:-1}" = 1 ]; then
  for s in 0 1 2 3; do   # bench warm-ups (timings discarded): compile the kernels phase 2 times
    timeout $T1 python3 bench/bench_kernels.py --scan-only --no-reference --shapes $s > /tmp/logs/warm$s.log 2>&1 &
  done
  timeout $T1 python3 bench/bench_kernels.py --sweep-only --shapes 0,1 > /tmp/logs/warm_sweep.log 2>&1 &
fi
wait
for i in $(seq 0 $((NSH - 1))); do grep -E 'passed|failed|FAILED|error' /tmp/logs/shard$i.log || echo "shard $i: no summary (timed out?)"; done > "$OUT/gpu_tests.log"
cat /tmp/logs/shard*.log > "$OUT/gpu_tests_full.log"
grep -E "passed|failed|error" "$OUT/gpu_tests.log"
tail -30 /tmp/logs/memcheck.log > "$OUT/memcheck.log"; tail -4 "$OUT/memcheck.log"
[ "${BENCH:-1}" = 1 ] || exit 0
cat /tmp/logs/warm*.log > "$OUT/warmup.log"
timeout ${T2:-70} python3 bench/bench_kernels.py --scan-only --no-reference --sweep --shapes 0,1,2,3 \
  --out "$OUT/bench.md" > "$OUT/bench.log" 2>&1
cat "$OUT/bench.log"
