#!/usr/bin/env bash
# Installs what zeroblocks needs to build its tests, benches and examples on Debian /
# Ubuntu: a C++20 compiler, CMake, pkg-config, Open MPI, doctest, liburing, nlohmann-json and xxHash
# (checkpoints), OpenBLAS (the GPT demo's matrix products). Skips packages already present.
set -euo pipefail
pkgs=(g++ cmake make pkg-config libopenmpi-dev openmpi-bin doctest-dev liburing-dev nlohmann-json3-dev libxxhash-dev libopenblas-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "zeroblocks: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Python's safetensors and numpy: the test suite reads zeroblocks' safetensors exports
# back with them (an outside reference; the library never needs Python).
if ! python3 -c "import safetensors, numpy" >/dev/null 2>&1; then
  echo "zeroblocks: installing Python safetensors and numpy (pip)"
  python3 -m pip install --quiet safetensors numpy 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages safetensors numpy ||
    echo "zeroblocks: could not install safetensors/numpy: checkpoint_safetensors will fail saying so"
fi
