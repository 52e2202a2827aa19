#!/usr/bin/env bash
# Every CUDA path of zeroblocks checked in one run on a bare GPU machine (nvcc, CMake,
# ninja, Python with PyTorch and the nvidia-nccl-cu13 wheel; no MPI, no apt, no network,
# no doctest): configure a CUDA build with what is there, build only what the checks need,
# run every CUDA test (`ctest -L cuda`: the kernels, cuda_space, comm::nccl in one
# process, the engine on the GPU against the host engine, the GPU demo's smoke runs), the
# demo once more for its table, and bench/cuda_kernels.sh (fused AdamW and the upcast
# against the device copy and against torch._fused_adamw_). Writes OUT/gpu_check.log (all
# output) and OUT/gpu_results.md (the device, each part's status and time, the figures
# for bench/RESULTS.md).
#
# Usage: scripts/gpu_check.sh OUT_DIR
#   Carry .gpu-carry/ (made here by scripts/gpu_prepare.sh: the doctest header) with the
#   source tree. Each part has its own time limit and the script goes on past a failure;
#   the whole run stays within ZB_GPU_DEADLINE seconds (default 470). Without a GPU it
#   configures and builds, then says "no GPU" and exits 0.
# Environment: NCCL_ROOT (default: the nvidia/nccl folder of the Python wheel),
#   ZB_GPU_BUILD (default build-gpu), ZB_GPU_JOBS (default nproc),
#   ZB_GPU_BENCH_N (default 67108864,268435456), ZB_DOCTEST_DIR (default .gpu-carry),
#   ZB_GPU_BUILD_LIMIT (seconds for the build, default 300).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out="${1:?usage: scripts/gpu_check.sh OUT_DIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
log="$out/gpu_check.log"
res="$out/gpu_results.md"
build="${ZB_GPU_BUILD:-build-gpu}"
jobs="${ZB_GPU_JOBS:-$(nproc)}"
bench_n="${ZB_GPU_BENCH_N:-67108864,268435456}"
doctest_dir="$(cd "${ZB_DOCTEST_DIR:-.gpu-carry}" 2>/dev/null && pwd || true)"
deadline=$(( $(date +%s) + ${ZB_GPU_DEADLINE:-470} ))
: >"$log"
rows=()

say() { echo "$*" | tee -a "$log"; }

# part NAME LIMIT CMD...: run CMD with its output in the log (and on stdout), within
# LIMIT seconds and the overall deadline; record PASS / FAIL (rc) / TIMEOUT and the time.
part() {
  local name=$1 limit=$2
  shift 2
  local left=$(( deadline - $(date +%s) ))
  (( left < limit )) && limit=$left
  if (( limit < 5 )); then
    say "== $name: not run (the overall deadline is reached)"
    rows+=("| $name | NOT RUN (deadline) | 0 |")
    return 1
  fi
  say "== $name (limit ${limit} s): $*"
  local t0 rc status
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) status=PASS ;;
    124 | 137) status="TIMEOUT (${limit} s)" ;;
    *) status="FAIL (rc $rc)" ;;
  esac
  rows+=("| $name | $status | $(( $(date +%s) - t0 )) |")
  say "== $name: $status"
  return "$rc"
}

# ---- what the machine has ------------------------------------------------------------
gpu="none"
if command -v nvidia-smi >/dev/null &&
   q=$(timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader 2>/dev/null) &&
   [ -n "$q" ]; then
  gpu="$q"
fi
nccl="${NCCL_ROOT:-}"
if [ -z "$nccl" ] && command -v python3 >/dev/null; then
  # The wheel's folder: nvidia/nccl with include/nccl.h and lib/libnccl.so.2.
  nccl=$(python3 - <<'PY' 2>/dev/null
import importlib.util, os, site, sys
paths = []
try:
    spec = importlib.util.find_spec("nvidia.nccl")
    if spec and spec.submodule_search_locations:
        paths += list(spec.submodule_search_locations)
except Exception:
    pass
for sp in site.getsitepackages() + [site.getusersitepackages()] + sys.path:
    paths.append(os.path.join(sp, "nvidia", "nccl"))
for p in paths:
    if os.path.isfile(os.path.join(p, "include", "nccl.h")):
        print(p)
        break
PY
  )
fi
commit=$(git rev-parse --short HEAD 2>/dev/null || echo "unknown (no .git)")
say "gpu_check: device: $gpu"
say "gpu_check: nvcc: $(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p' || echo none)," \
    "cmake $(cmake --version | head -1 | awk '{print $3}'), NCCL from '${nccl:-not found}', doctest from '${doctest_dir:-not found}'," \
    "$jobs jobs, commit $commit"

# ---- configure and build -------------------------------------------------------------
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
cfg=(cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DZEROBLOCKS_WITH_MPI=OFF
     -DZEROBLOCKS_WITH_CUDA=ON -DZEROBLOCKS_WITH_URING=OFF -DZEROBLOCKS_WERROR=OFF
     -DZEROBLOCKS_BUILD_TESTS=ON -DZEROBLOCKS_BUILD_BENCH=ON -DZEROBLOCKS_BUILD_EXAMPLES=ON)
[ -n "$nccl" ] && cfg+=(-DNCCL_ROOT="$nccl")
[ -n "$doctest_dir" ] && cfg+=(-DZB_DOCTEST_INCLUDE_DIR="$doctest_dir")
built=0
if part configure 120 "${cfg[@]}"; then
  # What the checks run: every CUDA test (tests/cuda/*.cmake), the GPU demo, the bench.
  targets=(test_cuda_kernels test_cuda_smoke test_cuda_space test_comm_nccl_single test_cuda_headers_cxx
           test_engine_cuda test_engine_cuda_self train_mlp_cuda bench_cuda_kernels)
  keep_going=()
  [ ${#gen[@]} -gt 0 ] && keep_going=(-- -k 0)  # ninja: build the rest past a failure
  part build "${ZB_GPU_BUILD_LIMIT:-300}" cmake --build "$build" -j "$jobs" --target "${targets[@]}" "${keep_going[@]}" && built=1
fi

# ---- run -----------------------------------------------------------------------------
if [ "$gpu" = none ]; then
  say "gpu_check: no GPU (nvidia-smi found none): the build is checked, nothing is run"
  rows+=("| tests, demo, bench | NOT RUN (no GPU) | 0 |")
else
  [ "$built" = 1 ] || say "gpu_check: the build failed; running what was built"
  part "ctest -L cuda" 240 ctest --test-dir "$build" -L cuda --output-on-failure --timeout 200 -j 4
  part "bench/cuda_kernels.sh" 150 env BENCH_BIN="$build/bench/bench_cuda_kernels" bash bench/cuda_kernels.sh "$bench_n"
  for off in none cpu; do
    part "demo --offload $off" 60 env OMP_NUM_THREADS=4 "$build/examples/train_mlp_cuda" --device cuda \
      --offload "$off" --stage all --steps 60 --log-every 20
  done
fi

# ---- the results file ------------------------------------------------------------------
{
  echo "# zeroblocks GPU check"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit"
  echo "- device: $gpu"
  echo "- nvcc $(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p'), NCCL from ${nccl:-not found}," \
       "host $(nproc) cores"
  echo
  echo "| part | status | seconds |"
  echo "|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "## CTest"
  echo
  echo '```'
  grep -E "tests passed|tests failed|\*\*\*|Test +#[0-9]+:.*(Failed|Timeout|Not Run|Skipped)" "$log" | head -40 || true
  echo '```'
  echo
  echo "## Figures (bench/cuda_kernels.sh, the demo)"
  echo
  echo '```'
  grep -E "^RESULT|ratio|goal|elem/s|train_mlp: (PASS|FAIL|SKIP)|max \\|p|GB/s" "$log" | head -80 || true
  echo '```'
} >"$res"
say "gpu_check: wrote $res and $log"
exit 0
