#!/usr/bin/env bash
# gpt_resume_check.sh TRAIN_GPT WORKDIR MPIEXEC NPFLAG
# 1. Resume is bit-identical: a stage-3 run of 8 steps, and the same run stopped after
#    step 4 (checkpoint) and resumed to step 8, end with the same fp32 master hash.
# 2. Initialisation from safetensors with GPT-2's names: a stage-2 run exports its
#    weights; a stage-0 run started from that file (--init) measures exactly the
#    exported model's validation loss before its first step.
set -uo pipefail
bin=$1 dir=$2 mpiexec=$3 np=$4
rm -rf "$dir" && mkdir -p "$dir"
common=(--model tiny --micro-steps 2 --batch 4 --seq 24 --eval-every 0 --log-every 2)
run() { "$mpiexec" "$np" 2 "$bin" "${common[@]}" "$@"; }
hash_of() { sed -n 's/.*master hash \([0-9a-f]*\).*/\1/p' "$1" | tail -1; }

run --stage 3 --steps 8 --dtype fp16 >"$dir/full.log" 2>&1 || { cat "$dir/full.log"; echo "gpt_resume_check: FAIL (full run)"; exit 1; }
run --stage 3 --steps 8 --dtype fp16 --stop-after 4 --save-dir "$dir/ckpt" >"$dir/first.log" 2>&1 || { cat "$dir/first.log"; echo "gpt_resume_check: FAIL (first half)"; exit 1; }
run --stage 3 --steps 8 --dtype fp16 --save-dir "$dir/ckpt" --resume >"$dir/resumed.log" 2>&1 || { cat "$dir/resumed.log"; echo "gpt_resume_check: FAIL (resumed half)"; exit 1; }
full=$(hash_of "$dir/full.log") resumed=$(hash_of "$dir/resumed.log")
echo "uninterrupted: $full  resumed: $resumed"
grep -q "resumed from" "$dir/resumed.log" || { echo "gpt_resume_check: FAIL (no resume line)"; exit 1; }
[ -n "$full" ] && [ "$full" = "$resumed" ] || { echo "gpt_resume_check: FAIL (resume is not bit-identical)"; exit 1; }

run --stage 2 --steps 4 --export "$dir/gpt.safetensors" >"$dir/export.log" 2>&1 || { cat "$dir/export.log"; echo "gpt_resume_check: FAIL (export)"; exit 1; }
run --stage 0 --steps 1 --init "$dir/gpt.safetensors" >"$dir/init.log" 2>&1 || { cat "$dir/init.log"; echo "gpt_resume_check: FAIL (init)"; exit 1; }
exported=$(sed -n 's/^final validation loss \(.*\)/\1/p' "$dir/export.log")
started=$(sed -n 's/^initial validation loss \(.*\)/\1/p' "$dir/init.log")
fresh=$(sed -n 's/^initial validation loss \(.*\)/\1/p' "$dir/export.log")
echo "exported model: $exported  started from the file: $started  (fresh initialisation: $fresh)"
[ -n "$exported" ] && [ "$exported" = "$started" ] && [ "$exported" != "$fresh" ] ||
  { echo "gpt_resume_check: FAIL (initialisation from safetensors)"; exit 1; }
echo "gpt_resume_check: PASS"
