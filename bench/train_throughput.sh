#!/usr/bin/env bash
# Training throughput of the recipes in each training mode (eager, train.compile, train.cuda_graph, both) on
# generated data (no network, no albumentations needed), and DeiT-Tiny through the same engine at 224 px.
# Usage (repo root, on the GPU machine): bash bench/train_throughput.sh [OUT_DIR] [extra args for train_throughput.py]
# Writes OUT_DIR/train_throughput.json (one object per run) and OUT_DIR/train_throughput.log.
set -u
OUT=${1:-${OUT:-/tmp/vim_train_out}}
shift || true
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# the package without installing it: vim/ plus kernels/ mounted as vim.kernels (setup.cfg's package_dir)
if ! python3 -c "import vim.kernels" 2>/dev/null; then
  rm -rf /tmp/vim_pkg && mkdir -p /tmp/vim_pkg/vim
  for f in "$PWD"/vim/*; do ln -sfn "$f" /tmp/vim_pkg/vim/; done
  ln -sfn "$PWD/kernels" /tmp/vim_pkg/vim/kernels
  export PYTHONPATH=/tmp/vim_pkg${PYTHONPATH:+:$PYTHONPATH}
fi
RUNS=$(mktemp -d)
run() {  # run NAME ARGS...: one train_throughput.py run, its JSON kept as RUNS/NAME.json
  local name=$1; shift
  timeout 300 python3 bench/train_throughput.py --out "$RUNS/$name.json" "$@" 2>&1 | tail -1 | tee -a "$OUT/train_throughput.log"
}
CIFAR="--steps 100"
FT="--config configs/cifar10_finetune_vim_tiny_224.yaml --steps 40 --batch-size 128"
run cifar_eager $CIFAR "$@"
run cifar_graph $CIFAR "$@" train.cuda_graph=true
run cifar_compile $CIFAR "$@" train.compile=inductor
run cifar_compile_graph $CIFAR "$@" train.compile=inductor train.cuda_graph=true
run vim224_eager $FT "$@"
run vim224_compile_graph $FT "$@" train.compile=inductor train.cuda_graph=true
run deit224_eager $FT "$@" model.name=deit_tiny_patch16_224
run deit224_compile_graph $FT "$@" model.name=deit_tiny_patch16_224 train.compile=inductor train.cuda_graph=true
python3 - "$RUNS" "$OUT/train_throughput.json" <<'PY'
import json, os, sys
runs = {n[:-5]: json.load(open(os.path.join(sys.argv[1], n))) for n in sorted(os.listdir(sys.argv[1]))}
json.dump(runs, open(sys.argv[2], 'w'), indent=1)
PY
