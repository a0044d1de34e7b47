#!/usr/bin/env bash
# Record every GPU benchmark with benchmarks/harness.py on one CUDA card, from the repository root:
#
#   MINILORA_GIT_COMMIT=<sha> bash benchmarks/run_all_gpu.sh kernels   # nf4, elementwise, ce-lora, allocator,
#                                                                      # checkpointing, e2e 1B   (~7 min on an H200)
#   MINILORA_GIT_COMMIT=<sha> bash benchmarks/run_all_gpu.sh 8b        # e2e 8B, context length  (~8 min on an H200)
#   MINILORA_GIT_COMMIT=<sha> bash benchmarks/run_all_gpu.sh cpu       # cpu_smollm2 on 2 host cores (~5 min)
#   bash benchmarks/run_all_gpu.sh all                                 # all three parts in one go (~20 min)
#
# Each part fits one 10-minute call; every benchmark runs under its own `timeout`, so one that overruns leaves the
# others' results. Results go to $OUT (default ./bench-out): one archive <part>-results.tar.gz with every JSON/PNG
# (copy its content into benchmarks/results/) and one log <part>.log — two files, because a device call returns at
# most 8. Liger-Kernel and bitsandbytes are installed from .whl/ when that folder exists (wheels for the machine's
# Python; a missing one only drops its baseline rows, except bitsandbytes, which the HF anchor needs).
# MINILORA_GIT_COMMIT names the commit in every result (a copied tree has no .git to ask). SMOKE=1 passes --smoke to
# every script: tiny shapes on a CPU, to check this script itself without a GPU. Results are saved after every
# comparison, so a benchmark stopped by its time limit still leaves what it measured.
set -u
PART="${1:-kernels}"
OUT="${OUT:-$PWD/bench-out}"
WORK="$(mktemp -d /tmp/minilora-bench.XXXXXX)"
LOG="$OUT/$PART.log"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export MINILORA_GIT_COMMIT="${MINILORA_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
PY="${PYTHON:-python3}"

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

step() {  # step SECONDS NAME ARGS...: run one benchmark module with a time limit, log its output, go on if it fails
  local limit="$1" name="$2"; shift 2
  echo "=== $name (limit ${limit}s) $(date -u +%H:%M:%S)" | tee -a "$LOG"
  # shellcheck disable=SC2086  # RUNNER is a command prefix (taskset ...), split on purpose
  timeout --signal=INT --kill-after=20 "$limit" ${RUNNER:-} "$PY" -m "benchmarks.$name" --out "$WORK" ${SMOKE:+--smoke} \
    "$@" 2>&1 | tee -a "$LOG"
  echo "=== $name exit ${PIPESTATUS[0]} $(date -u +%H:%M:%S)" | tee -a "$LOG"
}

kernels() {
  step 60  bench_nf4
  step 150 bench_elementwise
  step 150 bench_ce_lora
  step 45  bench_expandable_segments
  step 60  gpu_checkpointing
  step 150 bench_e2e --shape 1b
}

eight_b() {  # the HF anchor's random 8B checkpoint is saved once and reused by the second script
  step 270 bench_e2e --shape 8b --anchor-cache "$WORK/anchor-8b"
  step 270 ctx_mem --lengths 2048,8192,16384,32768 --long 131072 --anchor-cache "$WORK/anchor-8b"
  rm -rf "$WORK/anchor-8b"
}

cpu() {
  if command -v taskset >/dev/null; then
    echo "=== cpu_smollm2 pinned to cores 0,1" | tee -a "$LOG"
    RUNNER="taskset -c 0,1" step 420 cpu_smollm2 --threads 2
  else
    step 420 cpu_smollm2 --threads 2
  fi
}

"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$LOG"
case "$PART" in
  kernels) kernels ;;
  8b) eight_b ;;
  cpu) cpu ;;
  all) kernels; eight_b; cpu ;;
  *) echo "unknown part '$PART': use kernels, 8b, cpu or all" >&2; exit 2 ;;
esac
rm -rf "$WORK/anchor-"* 2>/dev/null
tar czf "$OUT/$PART-results.tar.gz" -C "$WORK" . && echo "results: $OUT/$PART-results.tar.gz" | tee -a "$LOG"
ls -la "$WORK" | tee -a "$LOG"
