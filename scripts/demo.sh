#!/usr/bin/env bash
# The main demo: installs what is missing, builds train_gpt, trains a GPT-2-architecture
# model (0.8 M parameters, byte-level, on the GPL text every Debian system has) with
# every ZeRO stage on 4 MPI ranks, prints a progress line every 10 steps and a table per
# stage (validation loss, equality with stage 0, memory against the ZeRO formula,
# elements communicated), and writes the loss curves of all stages to one SVG plot.
# Extra arguments go to train_gpt (e.g. --model gpt2-124M --stage 3 --steps 3 --seq 64;
# --offload nvme --nvme-path DIR; --data FILE; --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
. scripts/mpi_env.sh
cmake -S . -B build-demo -DCMAKE_BUILD_TYPE=Release -DZEROBLOCKS_BUILD_TESTS=OFF -DZEROBLOCKS_BUILD_BENCH=OFF >/dev/null
cmake --build build-demo --target train_gpt -j"$(nproc)"
# One thread per rank: 4 ranks share the machine's cores (2 on the reference VM).
OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 mpirun -np 4 build-demo/examples/train_gpt --plot "$PWD/build-demo/gpt_loss.svg" "$@"
