#!/usr/bin/env bash
# The infinity preset's optimizer step on a model whose 16Ψ bytes exceed this machine's
# RAM, against the disk's own time for the step's bytes: fio measures sequential read
# and write bandwidth and a 50/50 mixed run (io_uring, --direct=1, same request size
# and depth), then bench_nvme_step prints step time / I/O bound (goal <= 1.15) for two
# bounds: reads then writes at their own rates, and all bytes at the mixed rate.
#
# Usage: bench/nvme_step.sh [DIR] [PSI] [extra bench_nvme_step options...]
#   DIR  directory on the disk (default build/bench-nvme); needs 24·PSI bytes free
#   PSI  parameters (default 1.75e9: 16Ψ = 28 GB)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-build/bench-nvme}"
psi="${2:-1.75e9}"
shift $(( $# > 2 ? 2 : $# ))
bin="${BENCH_BIN:-build/bench/bench_nvme_step}"
command -v fio >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null; }
[ -x "$bin" ] || cmake --build build --target bench_nvme_step >/dev/null
mkdir -p "$dir"
bw() {
  fio --name=zb --filename="$dir/fio.dat" --size=4g --bs=1m --iodepth=8 --ioengine=io_uring --direct=1 \
      --rw="$1" --numjobs=1 --output-format=json 2>/dev/null |
    python3 -c "import json,sys; print(json.load(sys.stdin)['jobs'][0]['$1']['bw_bytes']/1e9)"
}
w=$(bw write)
r=$(bw read)
# Mixed: sequential reads and writes at once, 50/50 — what the pipeline asks of the disk.
m=$(fio --name=zb --filename="$dir/fio.dat" --size=4g --bs=1m --iodepth=8 --ioengine=io_uring --direct=1 \
        --rw=rw --rwmixread=50 --numjobs=1 --output-format=json 2>/dev/null |
    python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; print((j['read']['bw_bytes']+j['write']['bw_bytes'])/1e9)")
rm -f "$dir/fio.dat"
echo "fio io_uring direct bs=1m iodepth=8: write $w GB/s, read $r GB/s, mixed 50/50 read+write $m GB/s"
"$bin" --dir "$dir" --psi "$psi" --fio-read-gbps "$r" --fio-write-gbps "$w" --fio-mixed-gbps "$m" "$@"
