#!/usr/bin/env bash
# Prepares, on this machine, what scripts/gpu_check.sh needs carried to a bare GPU
# machine (nvcc, CMake, ninja, Python with PyTorch and the nvidia-nccl-cu13 wheel; no
# MPI, no apt, no network, no doctest): the doctest header, into .gpu-carry/ (git-ignored,
# about 300 KB). Carry that folder with the source tree, then run scripts/gpu_check.sh.
#
# Usage: scripts/gpu_prepare.sh          (installs doctest-dev with apt-get when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
header=/usr/include/doctest/doctest.h
if [ ! -f "$header" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq doctest-dev >/dev/null
fi
mkdir -p .gpu-carry/doctest
cp "$header" .gpu-carry/doctest/doctest.h
v=$(awk '/#define DOCTEST_VERSION_(MAJOR|MINOR|PATCH)/ {printf "%s%s", sep, $3; sep="."}' "$header")
echo "gpu_prepare: $(du -sh .gpu-carry | cut -f1) in .gpu-carry/ (doctest $v)"
