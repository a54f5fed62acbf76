#!/usr/bin/env bash
# Stage 6-7: the five E2E scores (BLEU, NIST, METEOR, ROUGE-L, CIDEr), the comparison with the paper, the loss plot.
#   bash scripts/eval_e2e.sh [--model md|lg] [--work_dir DIR] [--force]
# Reads  WORK_DIR/e2e_ref.txt and WORK_DIR/e2e_pred.txt (decode_e2e.sh); WORK_DIR/metrics.jsonl (train_e2e.sh)
#        for the plot, when there is one.
# Writes WORK_DIR/scores.json and WORK_DIR/scores.txt (measure_scores.py), WORK_DIR/results.md (our scores beside
#        the paper's Table 3 rows for MODEL, marked against COMPARE_METHOD: LoRA, or FT when LORA_DIM=0) and
#        WORK_DIR/losses.png. Needs Java (METEOR, PTB tokenizer). Skipped when the outputs exist, unless --force.
STAGE=eval
source "$(dirname "$0")/common.sh"
parse_common_args "$@"

REF=$WORK_DIR/e2e_ref.txt
PRED=$WORK_DIR/e2e_pred.txt
SCORES=$WORK_DIR/scores.json
RESULTS=$WORK_DIR/results.md
METRICS=$WORK_DIR/metrics.jsonl
PLOT=$WORK_DIR/losses.png
if [ "$LORA_DIM" -gt 0 ]; then COMPARE_METHOD=${COMPARE_METHOD:-LoRA}; else COMPARE_METHOD=${COMPARE_METHOD:-FT}; fi

if ! already_done "$SCORES" --after "$REF" "$PRED"; then
  need_file "$REF" "bash scripts/decode_e2e.sh"
  need_file "$PRED" "bash scripts/decode_e2e.sh"
  command -v java >/dev/null 2>&1 || die "eval: no 'java' on PATH: METEOR and the PTB tokenizer need a Java" \
    "runtime (Debian/Ubuntu: sudo apt-get install default-jre-headless)"
  if ! run "$PY" "$REPO_DIR/eval/e2e/measure_scores.py" -p --json "$REF" "$PRED" > "$SCORES.tmp"; then
    rm -f "$SCORES.tmp"
    die "eval: measure_scores.py failed (its message is above)"
  fi
  mv "$SCORES.tmp" "$SCORES"
fi
if [ ! -s "$WORK_DIR/scores.txt" ] || [ "$SCORES" -nt "$WORK_DIR/scores.txt" ]; then
  # The official block, from the JSON (one run of the Java metrics).
  "$PY" -c 'import json, sys
scores = json.load(open(sys.argv[1]))
print("SCORES:\n==============")
for name in ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"):
    print(f"{name}: {scores[name]:.4f}")' "$SCORES" > "$WORK_DIR/scores.txt"
fi
cat "$WORK_DIR/scores.txt"

if ! already_done "$RESULTS" --after "$SCORES"; then
  case "$MODEL" in
    md|lg) run "$PY" "$REPO_DIR/scripts/compare_with_paper.py" --scores "$SCORES" --model "$MODEL" \
             --method "$COMPARE_METHOD" --output "$RESULTS" ${COMPARE_NOTE:+--note "$COMPARE_NOTE"} ;;
    *) log "the paper has no E2E row for MODEL=$MODEL: no comparison" ;;
  esac
elif [ -s "$RESULTS" ]; then
  cat "$RESULTS"
fi

if [ -s "$METRICS" ]; then
  if ! already_done "$PLOT" --after "$METRICS"; then
    run "$PY" "$REPO_DIR/scripts/plot_losses.py" --metrics "$METRICS" --output "$PLOT" \
      --title "E2E, $MODEL_CARD, $(basename "$(dirname "$WORK_DIR")")/$(basename "$WORK_DIR")"
  fi
else
  log "no $METRICS (no training in this work dir): no loss plot"
fi
log "done: $SCORES, $RESULTS"
