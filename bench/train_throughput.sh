#!/usr/bin/env bash
# GPU training throughput of the CIFAR-10 recipe on generated data (no network, no albumentations needed).
# Usage (repo root, on the GPU machine): bash bench/train_throughput.sh [OUT_DIR] [extra args for train_throughput.py]
# Writes OUT_DIR/train_throughput*.json and OUT_DIR/train_throughput.log.
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
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
  python3 -c "import torch, timm, sys; print('torch', torch.__version__, 'timm', timm.__version__, 'python', sys.version.split()[0])"
} > "$OUT/env.txt" 2>&1
# CIFAR-10 from scratch recipe (Vim-Tiny, 32 px, 4x4 patches, bf16): batch 128 as in the recipe, then 256
python3 bench/train_throughput.py --steps 100 --out "$OUT/train_throughput_b128.json" "$@" 2>&1 | tee "$OUT/train_throughput.log"
python3 bench/train_throughput.py --steps 100 --batch-size 256 --out "$OUT/train_throughput_b256.json" "$@" 2>&1 | tail -3 | tee -a "$OUT/train_throughput.log"
# the 224 px fine-tune recipe's model (random init: throughput only)
python3 bench/train_throughput.py --config configs/cifar10_finetune_vim_tiny_224.yaml --steps 50 \
  --out "$OUT/train_throughput_224.json" "$@" 2>&1 | tail -3 | tee -a "$OUT/train_throughput.log"
