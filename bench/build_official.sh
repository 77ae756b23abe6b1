#!/usr/bin/env bash
# Build the official peers (mamba_ssm's selective_scan_cuda, causal_conv1d_cuda) for sm_90 only, from the
# registry sdists carried in .whl/, into /tmp/site. They are measured against, never depended on.
# Usage (repo root, on the GPU machine): bash bench/build_official.sh > build.log 2>&1
# About 3 minutes with 16 jobs on the H100 machine; writes /tmp/site/BUILD_OK on success.
set -eu
rm -rf /tmp/official && mkdir -p /tmp/official /tmp/site
for sdist in .whl/mamba_ssm-*.tar.gz .whl/causal_conv1d-*.tar.gz; do tar xzf "$sdist" -C /tmp/official; done
for dir in /tmp/official/*/; do
  # Compile for the one GPU present instead of nine architectures.
  sed -i 's/+ cc_flag/+ ["-gencode", "arch=compute_90,code=sm_90"]/' "$dir/setup.py"
done
export MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE MAX_JOBS=16
python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site /tmp/official/causal_conv1d-*/ &
python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site /tmp/official/mamba_ssm-*/
wait
PYTHONPATH=/tmp/site python3 -c "import torch, selective_scan_cuda, causal_conv1d_cuda; print('official kernels import')"
touch /tmp/site/BUILD_OK
