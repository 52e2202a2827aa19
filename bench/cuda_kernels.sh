#!/usr/bin/env bash
# The fused AdamW pass of zeroblocks (bench_cuda_kernels) against PyTorch's fused AdamW
# (bench/torch_fused_adamw.py) on the same N, same GPU: prints each, then the ratio of
# elements per second, zeroblocks / torch (goal >= 1.2). Also shows zeroblocks' kernels
# against the GPU's copy bandwidth (goal >= 0.9).
#
# Usage: bench/cuda_kernels.sh [N[,N...]] [extra bench_cuda_kernels options...]
#   N  element counts (default 67108864,268435456 = 64M, 256M)
# BENCH_BIN overrides the binary (default build/bench/bench_cuda_kernels, built if absent).
# Without a GPU (or without PyTorch for the second half) it says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-67108864,268435456}"
shift $(( $# > 0 ? 1 : 0 ))
bin="${BENCH_BIN:-build/bench/bench_cuda_kernels}"
[ -x "$bin" ] || cmake --build build --target bench_cuda_kernels >/dev/null

zb_out=$("$bin" --n "$n" "$@")
echo "== zeroblocks (bench_cuda_kernels)"
echo "$zb_out"
if ! grep -q '^RESULT fused_adamw' <<<"$zb_out"; then
  echo "no zeroblocks measurement (no CUDA device?): no ratio"
  exit 0
fi

echo "== PyTorch (torch._fused_adamw_)"
if ! command -v python3 >/dev/null; then
  echo "python3 not found: no torch measurement, no ratio"
  exit 0
fi
torch_out=$(python3 bench/torch_fused_adamw.py --n "$n")
echo "$torch_out"
if ! grep -q '^RESULT torch_fused_adamw' <<<"$torch_out"; then
  echo "no torch measurement: no ratio"
  exit 0
fi

echo "== zeroblocks / torch, elements per second (goal >= 1.2)"
printf '%s\n%s\n' "$zb_out" "$torch_out" | awk '
  /^RESULT / {
    kind = $2; n = ""; eps = ""; extra = ""
    for (i = 3; i <= NF; ++i) {
      split($i, kv, "=")
      if (kv[1] == "n") n = kv[2]
      else if (kv[1] == "elems_per_s") eps = kv[2]
      else if (kv[1] == "grad_dtype") extra = extra " torch grad " kv[2]
      else if (kv[1] == "bytes_per_elem") extra = extra ", " kv[2] " B/elem"
    }
    if (kind == "fused_adamw") zb[n] = eps
    else if (kind == "torch_fused_adamw") { th[n] = eps; note[n] = extra }
  }
  END {
    for (n in zb)
      if (n in th)
        printf "  n=%s: zeroblocks %.3e elem/s (28 B/elem), torch %.3e elem/s (%s): ratio %.2f\n",
               n, zb[n], th[n], substr(note[n], 2), zb[n] / th[n]
  }'
