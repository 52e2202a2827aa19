#!/usr/bin/env bash
# Installs what zeroblocks needs to build its tests, benches and examples on Debian /
# Ubuntu: a C++20 compiler, CMake, pkg-config, Open MPI, doctest, liburing, nlohmann-json and xxHash
# (checkpoints). Skips packages already present.
set -euo pipefail
pkgs=(g++ cmake make pkg-config libopenmpi-dev openmpi-bin doctest-dev liburing-dev nlohmann-json3-dev libxxhash-dev)
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
