#!/usr/bin/env bash
# Record every GPU benchmark with benchmarks/harness.py on one CUDA card, from the repository root. Six parts, each
# sized for one 10-minute call on an H200 (estimates; the 8B anchor's build, save and 4-bit reload dominate part 8b):
#
#   MINILORA_GIT_COMMIT=<sha> bash benchmarks/run_all_gpu.sh kernels    # nf4, elementwise, ce-lora, allocator,
#                                                                       # checkpointing, e2e 1B          (~7 min)
#   MINILORA_GIT_COMMIT=<sha> bash benchmarks/run_all_gpu.sh 8b         # e2e 8B, context 2K..32K        (~8 min)
#   MINILORA_GIT_COMMIT=<sha> bash benchmarks/run_all_gpu.sh long-cpu   # one 128K-token step, then the
#                                                                       # CPU benchmark on 2 host cores  (~8 min)
#   MINILORA_GIT_COMMIT=<sha> bash benchmarks/run_all_gpu.sh frontier   # budgets sweep 1B + 8B, ablation,
#                                                                       # profile                        (~8 min)
#   MINILORA_GIT_COMMIT=<sha> bash benchmarks/run_all_gpu.sh context    # offload homes' GB/s, attention
#                                                                       # order, 2K..32K, steps of 64K and
#                                                                       # 400K tokens                    (~10 min)
#   MINILORA_GIT_COMMIT=<sha> bash benchmarks/run_all_gpu.sh checks     # real-length packing 1B + 8B, the
#                                                                       # learner's my_gpu, pytest -m gpu (~9 min)
#   bash benchmarks/run_all_gpu.sh all                                  # the six in one go              (~50 min)
#
# The HF anchor's random checkpoint of each shape is saved once, in $TMPDIR/minilora-anchor-<shape> (every script's
# default), and reused by every later script and part on the same machine.
# Every benchmark runs under its own `timeout`, and saves its JSON after every comparison, so one that overruns
# leaves what it measured and the others still run. Results go to $OUT (default ./bench-out): one archive
# <part>-results.tar.gz with every JSON/PNG (its files go into benchmarks/results/) and one log <part>.log — two
# files, because a device call returns at most 8. Liger-Kernel and bitsandbytes are installed from .whl/ when that
# folder exists (wheels for the machine's Python; without Liger its baseline rows are left out; the HF anchor needs
# bitsandbytes). MINILORA_GIT_COMMIT names the commit in every result (a copied tree has no .git to ask).
# SMOKE=1 passes --smoke to every script: tiny shapes on a CPU, to check this script itself without a GPU.
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

eight_b() {
  step 240 bench_e2e --shape 8b --reps 1
  step 300 ctx_mem --lengths 2048,8192,16384,32768
}

frontier() {  # the speed-memory frontier at both shapes, the "+ triton" ablation and the step profile (~8 min)
  step 160 bench_frontier --shape 1b
  step 330 bench_frontier --shape 8b --ablation --profile
}

context() {  # the longest context: the last --long step shrinks to what the deadline leaves
  local long="65536,409600"
  [ -n "${SMOKE:-}" ] && long="256"  # a CPU runs the tiny model's long step through the Triton interpreter
  step 580 ctx_mem --io --attention --baseline --lengths 2048,8192,32768 --long "$long" --deadline-s 540
}

checks() {  # packing on real lengths, the learner's command, and the GPU-marked tests
  step 300 bench_packing --shapes 1b,8b
  step 150 my_gpu --batch 2
  echo "=== pytest -m gpu $(date -u +%H:%M:%S)" | tee -a "$LOG"
  if [ -z "${SMOKE:-}" ]; then
    timeout 240 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tail -40 | tee -a "$LOG"
  fi
}

long_cpu() {
  step 200 ctx_mem --lengths 8192 --no-anchor --long 131072 --name long-context-8b
  if command -v taskset >/dev/null; then
    echo "=== cpu_smollm2 pinned to cores 0,1" | tee -a "$LOG"
    RUNNER="taskset -c 0,1" step 300 cpu_smollm2 --threads 2 --steps 1
  else
    step 300 cpu_smollm2 --threads 2 --steps 1
  fi
}

"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available()
else 'no CUDA device')" 2>&1 | tee -a "$LOG"
case "$PART" in
  kernels) kernels ;;
  8b) eight_b ;;
  long-cpu) long_cpu ;;
  frontier) frontier ;;
  context) context ;;
  checks) checks ;;
  all) kernels; eight_b; long_cpu; frontier; context; checks ;;
  *) echo "unknown part '$PART': use kernels, 8b, long-cpu, frontier, context, checks or all" >&2; exit 2 ;;
esac
tar czf "$OUT/$PART-results.tar.gz" -C "$WORK" . && echo "results: $OUT/$PART-results.tar.gz" | tee -a "$LOG"
ls -la "$WORK" | tee -a "$LOG"
