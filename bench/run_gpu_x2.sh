#!/usr/bin/env bash
# The several-GPU measurements (issue 21) on a machine of 2 GPUs, in one go, each part under a time limit, the
# logs in $OUT. Parts (default: tests bench):
#   tests     tests/test_gpu.py's 2-GPU cases (the graphed step of 2 processes against 1) and the GPU cases of
#             the validation and checkpoint writer
#   bench     bench/bench_train.py, one process against torchrun with 2 (gpt2.md, batch 8 per GPU, E2E lengths),
#             the compiled CUDA-graph step, in PRECISIONS (default bf16,fp32)
#   script    scripts/train_e2e.sh at the paper recipe's size, --ngpu 1 then --ngpu 2 (bench/time_train_script.py)
#   deepspeed bench/gpu_deepspeed.sh (needs the wheels in .whl)
#   bash bench/run_gpu_x2.sh [parts...]        SHARED=dir with vocab/ and data/e2e/{valid,test}.txt
set -uo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
OUT=${OUT:-/tmp/loranlg-x2}
PRECISIONS=${PRECISIONS:-bf16,fp32}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 LORANLG_SHARED=$SHARED

part() {  # part NAME SECONDS command...: its output in $OUT/NAME.log, its exit status and wall time here
  local name=$1 seconds=$2 start=$SECONDS
  shift 2
  timeout "$seconds" "$@" > "$OUT/$name.log" 2>&1
  echo "=== $name: exit $?, $((SECONDS - start)) s"
}

for item in ${*:-tests bench}; do
  case $item in
    tests)
      part tests 240 bash -c "python3 -m pytest -q tests/test_gpu.py -k two_gpus;
                               python3 -m pytest -q tests/test_validation.py tests/test_checkpoint_writer.py"
      grep -E "passed|failed|error" "$OUT/tests.log" ;;
    bench)
      part bench2 240 torchrun --standalone --nproc_per_node=2 bench/bench_train.py --shared "$SHARED" \
        --modes graph+compile --precisions "$PRECISIONS" --baseline off
      grep '^| graph' "$OUT/bench2.log"
      part bench1 240 python3 bench/bench_train.py --shared "$SHARED" --modes graph+compile --precisions "$PRECISIONS" \
        --baseline off
      grep '^| graph' "$OUT/bench1.log" ;;
    script)
      part script1 330 python3 bench/time_train_script.py --shared "$SHARED"
      grep -E '^\|' "$OUT/script1.log" | tail -9
      part script2 240 python3 bench/time_train_script.py --shared "$SHARED" -- --ngpu 2
      grep -E '^\|' "$OUT/script2.log" | tail -9 ;;
    deepspeed)
      part deepspeed 240 env OUT="$OUT/ds" bash bench/gpu_deepspeed.sh
      tail -12 "$OUT/deepspeed.log" ;;
    *) echo "unknown part $item (tests, bench, script, deepspeed)"; exit 2 ;;
  esac
done
