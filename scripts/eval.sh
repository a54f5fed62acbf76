#!/usr/bin/env bash
# Stages 6-7: the scores, the comparison with the paper, the loss plot.
#   bash scripts/eval.sh [--task e2e|webnlg|dart] [--model md|lg] [--work_dir DIR] [--force]
#                                                  (eval_e2e.sh is eval.sh --task e2e)
# e2e:    reads WORK_DIR/e2e_ref.txt and e2e_pred.txt (decode.sh); writes WORK_DIR/scores.json and scores.txt
#         (eval/e2e/measure_scores.py: BLEU, NIST, METEOR, ROUGE-L, CIDEr) and results.md (beside the paper's
#         Table 3 rows for MODEL).
# webnlg: reads WORK_DIR/references_webnlg{,_seen,_unseen}/ and hypothesis_webnlg{,_seen,_unseen} (decode.sh);
#         writes WORK_DIR/scores_{unseen,seen,all}.json (eval/GenerationEval/eval.py -nr 6 -m bleu,meteor,ter),
#         scores.txt and results.md (BLEU U/S/A beside the repository README's rows for MODEL).
# dart:   the same with references_dart/ and hypothesis_dart: WORK_DIR/scores_all.json, scores.txt, results.md.
# results.md (and results.png, the same as bars) marks our scores against COMPARE_METHOD: LoRA, or the full fine-tuning row when LORA_DIM=0. Also
# WORK_DIR/losses.png from WORK_DIR/metrics.jsonl (train.sh), when there is one. Needs Java (METEOR; the E2E PTB
# tokenizer). Skipped when the outputs exist, unless --force. Settings shared by all stages: below.
STAGE=eval
source "$(dirname "$0")/common.sh"
parse_common_args "$@"

RESULTS=$WORK_DIR/results.md
METRICS=$WORK_DIR/metrics.jsonl
PLOT=$WORK_DIR/losses.png
if [ "$LORA_DIM" -gt 0 ]; then COMPARE_METHOD=${COMPARE_METHOD:-LoRA}; else COMPARE_METHOD=${COMPARE_METHOD:-FT}; fi

need_java() {
  command -v java >/dev/null 2>&1 || die "eval: no 'java' on PATH: METEOR needs a Java runtime" \
    "(Debian/Ubuntu: sudo apt-get install default-jre-headless)"
}

# score_to OUTPUT INPUT... -- COMMAND...: COMMAND's standard output into OUTPUT, unless OUTPUT is newer than the
# inputs; nothing half-written on failure.
score_to() {
  local output=$1 inputs=()
  shift
  while [ "$1" != -- ]; do inputs+=("$1"); shift; done
  shift
  if already_done "$output" --after "${inputs[@]}"; then return; fi
  local input
  for input in "${inputs[@]}"; do need_file "$input" "$(stage_command decode)"; done
  need_java
  if ! run "$@" > "$output.tmp"; then
    rm -f "$output.tmp"
    die "eval: $(basename "$2") failed (its message is above)"
  fi
  mv "$output.tmp" "$output"
}

compare_args=()
case "$TASK" in
  e2e)
    SCORES=$WORK_DIR/scores.json
    score_to "$SCORES" "$WORK_DIR/e2e_ref.txt" "$WORK_DIR/e2e_pred.txt" -- \
      "$PY" "$REPO_DIR/eval/e2e/measure_scores.py" -p --json "$WORK_DIR/e2e_ref.txt" "$WORK_DIR/e2e_pred.txt"
    SCORE_FILES=("$SCORES")
    compare_args=(--scores "$SCORES") ;;
  *)
    SCORE_FILES=()
    for subset in $(generation_subsets); do
      refs=$(references_dir "$subset")
      score_to "$WORK_DIR/scores_$subset.json" "$refs/reference0" "$(hypothesis_file "$subset")" -- \
        "$PY" "$REPO_DIR/eval/GenerationEval/eval.py" -R "$refs/reference" -H "$(hypothesis_file "$subset")" \
        -nr 6 -m bleu,meteor,ter --json
      SCORE_FILES+=("$WORK_DIR/scores_$subset.json")
      compare_args+=(--scores "$subset=$WORK_DIR/scores_$subset.json")
    done ;;
esac

if ! already_done "$WORK_DIR/scores.txt" --after "${SCORE_FILES[@]}"; then
  # The printed block, from the JSON (one run of the Java metrics).
  "$PY" - "$TASK" "${SCORE_FILES[@]}" > "$WORK_DIR/scores.txt" <<'PYTHON'
import json, os, sys
task, paths = sys.argv[1], sys.argv[2:]
if task == "e2e":
    scores = json.load(open(paths[0]))
    print("SCORES:\n==============")
    for name in ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"):
        print(f"{name}: {scores[name]:.4f}")
else:
    for path in paths:
        scores = json.load(open(path))
        subset = os.path.basename(path)[len("scores_"):-len(".json")]
        print(f"{task} {subset}: BLEU {scores['bleu']:.2f}  METEOR {scores['meteor']:.4f}  TER {scores['ter']:.4f}")
PYTHON
fi
cat "$WORK_DIR/scores.txt"

if ! already_done "$RESULTS" --after "${SCORE_FILES[@]}"; then
  case "$MODEL" in
    md|lg) run "$PY" "$REPO_DIR/scripts/compare_with_paper.py" --task "$TASK" "${compare_args[@]}" \
             --model "$MODEL" --method "$COMPARE_METHOD" --output "$RESULTS" --plot "$WORK_DIR/results.png" \
             ${COMPARE_NOTE:+--note "$COMPARE_NOTE"} ;;
    *) log "the paper has no row for MODEL=$MODEL: no comparison" ;;
  esac
elif [ -s "$RESULTS" ]; then
  cat "$RESULTS"
fi

if [ -s "$METRICS" ]; then
  if ! already_done "$PLOT" --after "$METRICS"; then
    run "$PY" "$REPO_DIR/scripts/plot_losses.py" --metrics "$METRICS" --output "$PLOT" \
      --title "$TASK_NAME, $MODEL_CARD, $(basename "$(dirname "$WORK_DIR")")/$(basename "$WORK_DIR")"
  fi
else
  log "no $METRICS (no training in this work dir): no loss plot"
fi
log "done: ${SCORE_FILES[*]}, $RESULTS"
[ ! -s "$WORK_DIR/results.png" ] || log "pictures: $WORK_DIR/results.png (ours beside the paper), $PLOT (the losses)"
