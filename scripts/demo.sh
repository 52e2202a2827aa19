#!/usr/bin/env bash
# The main demo: installs what is missing, builds train_mlp, trains every ZeRO stage
# on 4 MPI ranks and prints the comparison table. Extra arguments go to train_mlp.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
. scripts/mpi_env.sh
cmake -S . -B build-demo -DCMAKE_BUILD_TYPE=Release -DZEROBLOCKS_BUILD_TESTS=OFF -DZEROBLOCKS_BUILD_BENCH=OFF >/dev/null
cmake --build build-demo --target train_mlp -j"$(nproc)"
OMP_NUM_THREADS=1 mpirun -np 4 build-demo/examples/train_mlp "$@"
