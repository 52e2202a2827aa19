#!/usr/bin/env bash
# Sequential read and write throughput of swap::uring and swap::posix against fio
# (io_uring engine, --direct=1) with the same request size, queue depth and file size,
# in one run; prints each ratio (goal: >= 0.9 of fio for reads and for writes).
#
# Usage: bench/swap_vs_fio.sh [DIR] [SIZE] [BLOCK] [DEPTH]
#   DIR    directory on the disk to measure (default: build/bench-swap)
#   SIZE   file size (default 4g), BLOCK request size (default 1m), DEPTH queue depth (8)
# Needs fio (installed with apt-get when missing) and a built bench_swap_throughput
# (cmake --build build --target bench_swap_throughput).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-build/bench-swap}"
size="${2:-4g}"
block="${3:-1m}"
depth="${4:-8}"
reps="${REPS:-2}"
bin="${BENCH_BIN:-build/bench/bench_swap_throughput}"
command -v fio >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null; }
[ -x "$bin" ] || cmake --build build --target bench_swap_throughput >/dev/null
mkdir -p "$dir"

fio_bw() {  # $1 = write|read ; prints the best GB/s over $reps runs
  local best=0
  for _ in $(seq "$reps"); do
    local bw
    bw=$(fio --name=zb --filename="$dir/fio.dat" --size="$size" --bs="$block" --iodepth="$depth" \
             --ioengine=io_uring --direct=1 --rw="$1" --numjobs=1 --output-format=json 2>/dev/null |
         python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]['$1']; print(j['bw_bytes']/1e9)")
    best=$(python3 -c "print(max($best, $bw))")
  done
  echo "$best"
}

fio_w=$(fio_bw write)
fio_r=$(fio_bw read)
rm -f "$dir/fio.dat"
echo "fio io_uring direct: size=$size bs=$block iodepth=$depth write_GBps=$fio_w read_GBps=$fio_r"
for backend in uring posix; do
  line=$("$bin" --dir "$dir" --backend "$backend" --size "$size" --block "$block" --depth "$depth" --reps "$reps")
  echo "$line"
  w=$(sed -E 's/.*write_GBps=([0-9.]+).*/\1/' <<<"$line")
  r=$(sed -E 's/.*read_GBps=([0-9.]+).*/\1/' <<<"$line")
  python3 -c "print('ratio $backend/fio: write %.3f  read %.3f  (goal >= 0.9)' % ($w/$fio_w, $r/$fio_r))"
done
