#!/bin/bash
# Runs on the device machine (see bench/RESULTS.md, "GPU decode step"): the
# GPU tests, PyTorch SDPA (baseline (a)) and bench/decode_attention in one
# call. Usage: bench/decode_attention_run.sh BUNDLE_DIR OUT_DIR [bench flags]
set -uo pipefail
bundle=${1:?bundle dir}; out=${2:?out dir}; shift 2
export LD_LIBRARY_PATH=$PWD/$bundle/lib
nvidia-smi --query-gpu=name,driver_version,memory.used,clocks.sm --format=csv | tee "$out/gpu.txt"
for t in paged_attention_test wave_buffer_test decode_attention_test; do
  if [ -x "$bundle/bin/$t" ]; then
    timeout 180 "$bundle/bin/$t" >"$out/$t.log" 2>&1
    echo "$t rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$out/$t.log" | tr '\n' ' ')"
  fi
done
ctx=$(printf '%s\n' "$@" | sed -n 's/^--contexts=//p')
bat=$(printf '%s\n' "$@" | sed -n 's/^--batches=//p')
PYTHONUNBUFFERED=1 timeout 240 python3 bench/torch_sdpa_decode.py \
  ${ctx:+--contexts $ctx} ${bat:+--batches $bat} 2>&1 | tee "$out/sdpa.md"
timeout 420 "$bundle/bin/decode_attention" "$@" 2>&1 | tee "$out/bench.md"
