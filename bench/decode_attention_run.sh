#!/bin/bash
# Runs on the device machine (see bench/RESULTS.md, "GPU decode step"): every
# GPU test in the bundle, PyTorch SDPA (baseline (a)) and bench/decode_attention
# in one call; with WAVEKV_RUN_BUILD=1 also the index build bench against
# causal prefill, with WAVEKV_RUN_RETRIEVAL=1 the retrieval bench.
# Usage: bench/decode_attention_run.sh BUNDLE_DIR OUT_DIR [bench flags]
set -uo pipefail
bundle=${1:?bundle dir}; out=${2:?out dir}; shift 2
export LD_LIBRARY_PATH=$PWD/$bundle/lib
nvidia-smi --query-gpu=name,driver_version,memory.used,clocks.sm --format=csv | tee "$out/gpu.txt"
: >"$out/tests.log"
for t in "$bundle"/bin/*_test "$bundle"/bin/*_test_gpu; do
  [ -x "$t" ] || continue
  n=$(basename "$t")
  timeout 240 "$t" >/tmp/wavekv-test.log 2>&1
  rc=$?
  cat /tmp/wavekv-test.log >>"$out/tests.log"
  echo "$n rc=$rc $(grep -E '^\[  (PASSED|FAILED)' /tmp/wavekv-test.log | tr '\n' ' ')"
done
if [ "${WAVEKV_RUN_BUILD:-0}" = 1 ] && [ -x "$bundle/bin/index_build_bench" ]; then
  PYTHONUNBUFFERED=1 timeout 120 python3 bench/prefill_attention.py 2>&1 | tee "$out/prefill.md"
  timeout 180 "$bundle/bin/index_build_bench" 2>&1 | tee "$out/build.md"
fi
if [ "${WAVEKV_RUN_RETRIEVAL:-0}" = 1 ] && [ -x "$bundle/bin/retrieval_bench" ]; then
  timeout 120 "$bundle/bin/retrieval_bench" 2>&1 | tee "$out/retrieval.md"
fi
ctx=$(printf '%s\n' "$@" | sed -n 's/^--contexts=//p')
bat=$(printf '%s\n' "$@" | sed -n 's/^--batches=//p')
PYTHONUNBUFFERED=1 timeout 240 python3 bench/torch_sdpa_decode.py \
  ${ctx:+--contexts $ctx} ${bat:+--batches $bat} 2>&1 | tee "$out/sdpa.md"
timeout 420 "$bundle/bin/decode_attention" "$@" 2>&1 | tee "$out/bench.md"
