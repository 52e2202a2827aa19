#!/usr/bin/env bash
# safetensors_writer on 2 ranks, zeroblocks-export on its checkpoint, then Python's
# safetensors and numpy read every export back (check_safetensors.py).
#   safetensors_check.sh WRITER EXPORT_TOOL DIR MPIEXEC [ARGS...]
set -u
writer=$1 tool=$2 dir=$3
shift 3
rm -rf "$dir"
mkdir -p "$dir"
"$@" "$writer" "$dir" || { echo "safetensors_check: writer failed"; exit 1; }
"$tool" "$dir" "$dir/model-fp32-tool.safetensors" --dtype fp32 --optimizer-state --chunk-numel 64 ||
  { echo "safetensors_check: zeroblocks-export failed"; exit 1; }
python3 "$(dirname "$0")/check_safetensors.py" "$dir"
