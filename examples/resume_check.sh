#!/usr/bin/env bash
# The demo stopped and resumed prints the loss lines of the run that never stopped:
# run A trains 60 steps; run B trains 40 (saving every 20) and is killed; run C resumes
# from B's latest checkpoint and trains to 60. The step-60 lines of A and C must match.
#   resume_check.sh TRAIN_MLP DIR MPIEXEC [ARGS...]
set -u
demo=$1 dir=$2
shift 2
rm -rf "$dir"
args=(--stage 3 --log-every 20 --dtype fp16)
a=$("$@" "$demo" "${args[@]}" --steps 60 2>&1 | grep '^step    60')
"$@" "$demo" "${args[@]}" --steps 40 --save-dir "$dir" --save-every 20 >/dev/null 2>&1 || { echo "run B failed"; exit 1; }
c=$("$@" "$demo" "${args[@]}" --steps 60 --save-dir "$dir" --resume 2>&1 | grep -E '^step    60|^resumed')
echo "uninterrupted: $a"
echo "resumed:       $c"
if [ -n "$a" ] && grep -qF "$a" <<<"$c" && grep -q '^resumed from .*step-40' <<<"$c"; then
  echo "resume_check: PASS"
else
  echo "resume_check: FAIL"
fi
