#!/usr/bin/env bash
# The prepared GPU check: what a lent GPU machine (H100/H200, no network, no TE unless installed)
# runs as ONE command, in under 10 minutes (8 before the decode steps, whose time on a GPU is an estimate
# until they have run there). Records go to the directory given as the argument.
#
#   bash scripts/gpu-check.sh OUT_DIR        # e.g. results, or $OUT on the device tool
#
# It needs no install: torch, transformers, pandas, matplotlib, nvidia-ml-py and pytest-benchmark
# are expected on the machine; teswap runs from this checkout via PYTHONPATH. Each step has its own
# time limit and the script goes on after a failed step, so one failure never loses the others.
set -uo pipefail
OUT=${1:?usage: scripts/gpu-check.sh OUT_DIR}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export TESWAP_RUN_ID="gpucheck-$(date -u +%Y%m%dT%H%M%SZ)"
PY=${PYTHON:-python3}
# Overridable so the script's plumbing can be exercised on a CPU (tests/test_gpu_check_script.py).
MODEL=${TESWAP_CHECK_MODEL:-llama3.2-1b}
CHECK_SEQ=${TESWAP_CHECK_SEQ:-2048}
BENCH_SEQS=${TESWAP_BENCH_SEQS:-512,2048}
BENCH_BUDGET_S=${TESWAP_BENCH_BUDGET_S:-3}  # sampling time per cell (paired rounds stop earlier once the CI is tight)
DECODE_SEQS=${TESWAP_DECODE_SEQS:-128,512}  # decode prompt lengths; the graphed ladder runs at the last one
DECODE_BATCHES=${TESWAP_DECODE_BATCHES:-1,8}  # the graphed ladder runs at the last one (TE's FP8 rows rule: 8)
DECODE_NEW_TOKENS=${TESWAP_DECODE_NEW_TOKENS:-32}
LOG="$OUT/gpu-check.log"
failures=0
unavailable=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log it, keep going on failure
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local started=$SECONDS
  timeout --signal=INT --kill-after=20 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local code=${PIPESTATUS[0]}
  echo "=== $name: exit $code after $((SECONDS - started)) s" | tee -a "$LOG"
  if [ "$code" -eq 2 ] && [[ $name == check* ]]; then
    unavailable=$((unavailable + 1))  # teswap check: this precision cannot run here (reason logged above)
  elif [ "$code" -ne 0 ]; then
    failures=$((failures + 1))
  fi
}

cd "$REPO"
step environment 60 bash -o pipefail -c '"$1" -m teswap.cli env --json | tee "$2"' env "$PY" "$OUT/env.json"
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm,memory.total --format=csv >> "$LOG" 2>&1 \
  || echo "nvidia-smi: not available" >> "$LOG"

# What the environment step found (read as JSON: no second import of torch and transformers).
TE=$("$PY" -c "import json, sys; print('yes' if json.load(open(sys.argv[1]))['backends']['te'] == 'available' else 'no')" \
  "$OUT/env.json" 2>/dev/null || echo no)
BACKENDS=torch
[ "$TE" = yes ] && BACKENDS="torch te"

# Parity: stock vs swapped at bf16 and the FP8 recipes, on the Llama-3.2-1B shape at 2048 tokens.
for backend in $BACKENDS; do
  precisions="bf16 fp8-delayed fp8-current"
  [ "$backend" = te ] && precisions="$precisions fp8-block mxfp8"  # recipes only TE runs (hardware permitting)
  for precision in $precisions; do
    step "check $backend $precision" 120 "$PY" -m teswap.cli check --model "$MODEL" --backend "$backend" \
      --precision "$precision" --seq-len "$CHECK_SEQ" --batch 1 --results "$OUT" --json "$OUT/check-$backend-$precision.json"
  done
done

# A short sweep with NVML energy: prefill and training step, stock vs swapped, two lengths.
SWEEP_BACKENDS=stock,torch
[ "$TE" = yes ] && SWEEP_BACKENDS=stock,torch,te
step "bench $MODEL" 240 "$PY" -m teswap.cli bench --models "$MODEL" --workloads prefill,train \
  --backends "$SWEEP_BACKENDS" --precisions bf16,fp8-delayed,fp8-current --seq-lens "$BENCH_SEQS" --batches 1 \
  --results "$OUT" --budget-s "$BENCH_BUDGET_S" --min-energy-window-s 2 --idle-s 2

# A short decode sweep (a prompt's prefill, then DECODE_NEW_TOKENS forced greedy tokens over the KV cache):
# TTFT, TPOT, decode tokens/s, stock vs swapped at bf16, eager, over prompt length x batch. Then the ladder
# HF -> TE -> +CUDA graphs -> +FP8 weights at one shape: graphs compile once per model and shape (stock and
# torch: torch.compile reduce-overhead; te: make_graphed_callables), so they run at one prompt and batch only.
DECODE_TIMING=(--new-tokens "$DECODE_NEW_TOKENS" --warmup 2 --min-samples 6 --min-rounds 4 --budget-s 1 --remeasure 0
  --min-energy-window-s 1 --idle-s 1 --results "$OUT")
step "decode $MODEL" 100 "$PY" -m teswap.cli bench --models "$MODEL" --workloads decode --backends "$SWEEP_BACKENDS" \
  --precisions bf16 --options none --seq-lens "$DECODE_SEQS" --batches "$DECODE_BATCHES" "${DECODE_TIMING[@]}"
GRAPH_PRECISIONS=bf16 GRAPH_OPTIONS=cuda-graphs
[ "$TE" = yes ] && GRAPH_PRECISIONS=bf16,fp8-delayed GRAPH_OPTIONS=cuda-graphs,cuda-graphs+fp8-weights
step "decode graphs $MODEL" 150 "$PY" -m teswap.cli bench --models "$MODEL" --workloads decode \
  --backends "$SWEEP_BACKENDS" --precisions "$GRAPH_PRECISIONS" --options "$GRAPH_OPTIONS" \
  --seq-lens "${DECODE_SEQS##*,}" --batches "${DECODE_BATCHES##*,}" "${DECODE_TIMING[@]}"

step report 60 "$PY" -m teswap.cli report --results "$OUT" --out "$OUT/report"
echo "gpu-check: $failures failed step(s), $unavailable precision(s) unavailable here; records under $OUT" \
  | tee -a "$LOG"
exit $(( failures > 0 ))
