#!/usr/bin/env bash
# One GPU session's measurements, in one go (the device machine is lent by the minute): GPU parity tests,
# then ours against the transformers + peft baseline, printing short tables. Logs go to $OUT when set.
#   bash bench/run_gpu.sh [tests] [train] [micro] [beam] [profile] [trace] [eager] [where]  (default: the first
#   four; profile: a graphed training step's kernels by kind; trace: where the GPU idles in the training loop;
#   eager: our eager training steps against transformers + peft, measured in the second session;
#   where: scripts/beam_e2e.sh end to end at its default, BEAM_BATCH_SIZE=8 and 128, where the time goes)
#   SHARED=path/to/shared (default ../shared): vocab/ and data/e2e/{valid,test}.txt
set -uo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
OUT=${OUT:-/tmp/loranlg-bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 LORANLG_SHARED=$SHARED
WHAT=${*:-tests train micro beam}
TMP=$(mktemp -d)
python3 src/format_converting_e2e.py "$SHARED/data/e2e/test.txt" "$TMP/test_formatted.jsonl"
python3 src/gpt2_encode.py --vocab "$SHARED/vocab" --input "$TMP/test_formatted.jsonl" --output "$TMP/test.jsonl" --add_bos --add_eos
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
for item in $WHAT; do
  case $item in
    tests) python3 -m pytest -q tests/test_gpu.py 2>&1 | tee "$OUT/tests.log" | tail -15 ;;
    train)
      # each table also times transformers + peft at its precision first (bench/hf_baseline.py), same data
      python3 bench/bench_train.py --shared "$SHARED" ${TRAIN_ARGS:---modes graph+compile,graph+compile-optimizer-combo --precisions bf16 --layouts packed} 2>&1 | tee "$OUT/train.log" | grep '^|' | tail -5
      python3 bench/bench_train.py --shared "$SHARED" --modes graph+compile --precisions fp32 2>&1 | tee -a "$OUT/train.log" | grep '^|' | tail -2 ;;
    profile)
      # where a graphed training step's GPU time goes, by kind of kernel
      python3 src/format_converting_e2e.py "$SHARED/data/e2e/valid.txt" "$TMP/valid_formatted.jsonl"
      python3 src/gpt2_encode.py --vocab "$SHARED/vocab" --input "$TMP/valid_formatted.jsonl" --output "$TMP/valid.jsonl" --add_bos --add_eos
      python3 bench/profile_train.py --data "$TMP/valid.jsonl" --compile 2>&1 | tee -a "$OUT/profile.log" | grep -E '^replay|^\|' ;;
    trace) python3 bench/trace_train.py --shared "$SHARED" 2>&1 | tee "$OUT/trace.log" | grep -E '^loop|^span|^\|' ;;
    eager)
      # eager steps need no warm-up epoch (nothing is captured or compiled)
      python3 bench/bench_train.py --shared "$SHARED" --modes eager --precisions fp32,bf16 --warmup 20 --steps 100 2>&1 | tee "$OUT/eager.log" | grep '^|' | tail -4 ;;
    where) python3 bench/profile_beam.py --shared "$SHARED" 2>&1 | tee "$OUT/where.log" | grep -E '^\||auto' ;;
    micro) python3 bench/micro_beam.py 2>&1 | tee "$OUT/micro.log" | grep -E '^\||contexts$' ;;
    beam)
      # with transformers' generate timed first (bench/hf_baseline.py), same contexts
      python3 bench/bench_beam.py --data "$TMP/test.jsonl" ${BEAM_ARGS:---batch_sizes 128,256 --precisions bf16} 2>&1 | tee "$OUT/beam.log" | tail -14
      # hypotheses that end early (as a trained model's): contexts leave the batch, the cache shrinks
      python3 bench/bench_beam.py --data "$TMP/test.jsonl" --end_at 60 --batch_sizes 8,128 --precisions bf16 2>&1 | tee -a "$OUT/beam.log" | tail -14 ;;
  esac
done
rm -rf "$TMP"
