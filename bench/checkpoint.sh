#!/usr/bin/env bash
# Checkpoint save and load throughput of one rank against fio's sequential write and
# read of the same size on the same directory (page cache dropped before reads; fio
# with end_fsync, as save fsyncs), in one run (goal >= 0.8 of fio both ways); the time
# async_saver::save blocks training against a memcpy of the state (goal <= 1.5x); the
# offline export's peak RSS against its chunk (goal <= chunk + 64 MiB).
#
# Usage: [ROUNDS=5] bench/checkpoint.sh [DIR] [NUMEL]   (default build/bench-ckpt, 16777216)
# Needs fio (installed with apt-get when missing); run as root to drop the page cache.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-build/bench-ckpt}"
numel="${2:-16777216}"
command -v fio >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null; }
cmake --build build --target bench_checkpoint zeroblocks-export >/dev/null
mkdir -p "$dir"
bytes=$((numel * 12))
rounds="${ROUNDS:-5}"
fio_mbps() {  # $1 write|read
  [ "$1" = read ] && { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
  fio --name=zb --filename="$dir/fio.dat" --size="$bytes" --bs=1m --ioengine=psync --rw="$1" --end_fsync=1 \
      --numjobs=1 --output-format=json 2>/dev/null |
    python3 -c "import json,sys; print(json.load(sys.stdin)['jobs'][0]['$1']['bw_bytes']/1e6)"
}
# The disk's speed drifts run to run on a shared VM (fio's read here: 1.4-1.9 GB/s), so
# each round measures the checkpoint and fio back to back, and the ratio is the median
# of the rounds' ratios.
rows=()
for r in $(seq "$rounds"); do
  out=$(build/bench/bench_checkpoint --dir "$dir/ckpt" --numel "$numel" --reps 1)
  fw=$(fio_mbps write)
  fr=$(fio_mbps read)
  rm -f "$dir/fio.dat"
  save=$(sed -n 's/.*save_MBps=\([0-9.]*\).*/\1/p' <<<"$out")
  load=$(sed -n 's/.*load_MBps=\([0-9.]*\).*/\1/p' <<<"$out")
  blocked=$(sed -n 's/.*async.*ratio=\([0-9.]*\).*/\1/p' <<<"$out")
  echo "round $r: save_MBps=$save fio_write_MBps=$fw load_MBps=$load fio_read_MBps=$fr async_blocked/memcpy=$blocked"
  rows+=("$save $fw $load $fr $blocked")
done
printf '%s\n' "${rows[@]}" | python3 -c "
import sys, statistics as st
r = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
print(f'median over {len(r)} rounds: save / fio write = {st.median(x[0]/x[1] for x in r):.2f}, '
      f'load / fio read = {st.median(x[2]/x[3] for x in r):.2f} (goal >= 0.8); '
      f'async blocked / memcpy = {st.median(x[4] for x in r):.2f} (goal <= 1.5)')"
# The export's peak RSS with a 1 Mi-element chunk (state at least 8x that).
chunk=1048576
rss=$( { /usr/bin/time -f "%M" build/tools/zeroblocks-export "$dir/ckpt" bench "$dir/out.safetensors" \
           --optimizer-state --chunk-numel "$chunk" >/dev/null; } 2>&1 | tail -1)
rm -f "$dir/out.safetensors"
python3 -c "print(f'export peak RSS {$rss/1024:.1f} MiB for a {$bytes/2**20:.0f} MiB checkpoint, chunk {$chunk*4/2**20:.0f} MiB of fp32: goal <= chunk + 64 MiB = {$chunk*4/2**20 + 64:.0f} MiB')"
