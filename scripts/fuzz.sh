#!/usr/bin/env bash
# libFuzzer runs of every reader of outside bytes (fuzz/fuzz_*.cpp over
# checkpoint/format.hpp): each target built with clang (-fsanitize=fuzzer,address,undefined,
# undefined behaviour fatal) and run for SECONDS (default 60) from the seed corpus in
# fuzz/corpus, new inputs kept in $ZB_FUZZ_DIR/corpus-<target> (default build-fuzz). A
# crash, a sanitizer report or an exception other than zeroblocks::error stops the run
# with the input saved as $ZB_FUZZ_DIR/crash-*; the script then exits non-zero.
#   scripts/fuzz.sh [SECONDS] [TARGET...]     (targets: manifest checkpoint safetensors)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(manifest checkpoint safetensors)
if ! command -v clang++ >/dev/null || ! [ -f /usr/include/nlohmann/json.hpp ] || ! [ -f /usr/include/xxhash.h ]; then
  [ "$(id -u)" = 0 ] || { echo "fuzz.sh: needs clang, libclang-rt-dev, nlohmann-json3-dev, libxxhash-dev" >&2; exit 1; }
  apt-get update -qq && apt-get install -y -qq clang libclang-rt-dev nlohmann-json3-dev libxxhash-dev >/dev/null
fi
out="${ZB_FUZZ_DIR:-build-fuzz}"
mkdir -p "$out"
status=0
for t in "${targets[@]}"; do
  exe="$out/fuzz_$t"
  clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -Iinclude -Ifuzz "fuzz/fuzz_$t.cpp" -lxxhash -o "$exe"
  mkdir -p "$out/corpus-$t"
  echo "fuzz.sh: $t for ${secs}s"
  if ! "$exe" -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
      -artifact_prefix="$out/" "$out/corpus-$t" "fuzz/corpus/$t" 2>"$out/$t.log"; then
    echo "fuzz.sh: $t FAILED (log: $out/$t.log)"
    tail -40 "$out/$t.log"
    status=1
  else
    grep -E "^stat::number_of_executed_units|^Done|cov:" "$out/$t.log" | tail -2
  fi
done
exit $status
