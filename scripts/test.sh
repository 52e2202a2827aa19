#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what is missing, builds with
# -Wall -Wextra -Werror, runs every CTest test (unit, multi-rank under mpirun on 1-4
# ranks, compile-fail, consumer projects via FetchContent and find_package, the demo
# smoke run), then rebuilds the host tests under AddressSanitizer + UBSan and runs them,
# then the threaded tests (MPI progress thread, watchdog, swap I/O threads, async
# checkpoint saver) under ThreadSanitizer (presets tsan-threads, suppressions in
# scripts/tsan.supp). The whole host suite under ThreadSanitizer is the `tsan` preset
# (about an hour here on 2 cores, past CI's time: `cmake --preset tsan && cmake --build
# --preset tsan && ctest --preset tsan`).
# Set ZB_SKIP_SANITIZE=1 to skip both sanitizer parts, ZB_SKIP_TSAN=1 the last one.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
. scripts/mpi_env.sh
jobs="$(nproc)"

cmake --preset default >/dev/null
cmake --build --preset default -j"$jobs"
ctest --preset default -j"$jobs"

if [ "${ZB_SKIP_SANITIZE:-0}" != "1" ]; then
  cmake --preset sanitize >/dev/null
  cmake --build --preset sanitize -j"$jobs"
  ctest --preset sanitize -j"$jobs"
fi

if [ "${ZB_SKIP_SANITIZE:-0}" != "1" ] && [ "${ZB_SKIP_TSAN:-0}" != "1" ]; then
  cmake --preset tsan >/dev/null
  cmake --build --preset tsan-threads -j"$jobs"
  ctest --preset tsan-threads -j"$jobs"
fi
