#!/usr/bin/env bash
# kill -9 of one rank at a random instant while a 2-rank job trains and saves a
# checkpoint after every step, TRIALS times; after each kill, `latest` must load and
# verify (sizes, checksums, registry, the step its name says) and the next save must
# clean the interrupted save's leftovers (kill_writer --verify). Each trial resumes from
# the previous trial's latest, so kills land in saves of every kind of state.
#
#   kill_trials.sh WRITER DIR TRIALS MPIEXEC [MPIEXEC ARGS...]   (e.g. mpiexec -n 2)
set -u
writer=$1 dir=$2 trials=$3
shift 3
rm -rf "$dir"
mkdir -p "$dir"
log="$dir.log"
verified=0 saves_seen=0
for i in $(seq 1 "$trials"); do
  "$@" "$writer" "$dir" --steps 100000 >"$log" 2>&1 &
  job=$!
  # Wait for both ranks to be running (under a loaded machine mpirun's start-up alone can
  # take longer than the shortest random instant below), then pick the instant.
  for _ in $(seq 200); do
    [ "$(pgrep -f "$writer $dir --steps" | wc -l)" -ge 2 ] && break
    sleep 0.1
  done
  # A random instant 0.3 to 1.5 s in: start-up takes ~0.2 s, a save of ~2.3 MB a few ms
  # to tens of ms, so kills land before, inside and between saves.
  sleep "$(awk -v s="$RANDOM" 'BEGIN { printf "%.3f", 0.3 + (s % 1200) / 1000.0 }')"
  pid=$(pgrep -f "$writer $dir --steps" | shuf -n 1)
  if [ -z "$pid" ]; then
    echo "trial $i: no writer running (it ended early?):"
    cat "$log"
    exit 1
  fi
  kill -9 "$pid"
  wait "$job" 2>/dev/null
  pkill -9 -f "$writer $dir --steps" 2>/dev/null
  sleep 0.2
  latest=$(cat "$dir/latest" 2>/dev/null || echo none)
  leftovers=$(find "$dir" -maxdepth 1 -name '.tmp-*' | wc -l)
  if ! out=$("$@" "$writer" "$dir" --verify 2>&1); then
    echo "trial $i: FAILED to verify after the kill (latest: $latest):"
    echo "$out"
    exit 1
  fi
  if ! grep -q "kill_writer: VERIFIED" <<<"$out"; then
    echo "trial $i: FAILED: no verification line:"
    echo "$out"
    exit 1
  fi
  [ "$latest" != none ] && saves_seen=$((saves_seen + 1))
  verified=$((verified + 1))
  echo "trial $i: killed rank pid $pid; latest $latest ($leftovers interrupted-save leftover(s)): $(grep -o 'VERIFIED.*' <<<"$out")"
done
echo "kill_trials: $verified of $trials trials verified ($saves_seen with a checkpoint to load)"
[ "$verified" -eq "$trials" ] && echo "kill_trials: PASS"
