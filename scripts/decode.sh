#!/usr/bin/env bash
# Stage 5: token ids -> text; the references of each test source grouped (src/gpt2_decode.py).
#   bash scripts/decode.sh [--task e2e|webnlg|dart] [--model md|lg] [--work_dir DIR] [--checkpoint F] [--force]
#                          [-- extra flags]        (decode_e2e.sh is decode.sh --task e2e)
# Reads  WORK_DIR/predict.{step}.*.jsonl (beam.sh), DATA_DIR/test_formatted.jsonl (scripts/create_datasets.sh;
#        TEST_FORMATTED overrides) and the vocabulary (VOCAB_DIR).
# Writes e2e:    WORK_DIR/e2e_ref.txt (references, a blank line after each MR), WORK_DIR/e2e_pred.txt (a line per MR).
#        webnlg: as the original README decodes (--ref_type webnlg --ref_num 6 --tokenize --lower), once per
#                category subset (--filter): WORK_DIR/references_webnlg/reference0..5 + WORK_DIR/hypothesis_webnlg
#                (all), and the same with _seen and _unseen appended.
#        dart:   WORK_DIR/references_dart/reference0..5 and WORK_DIR/hypothesis_dart (--ref_type dart, the same flags).
# Skipped when the outputs exist, unless --force. Settings shared by all stages: below.
STAGE=decode
source "$(dirname "$0")/common.sh"
parse_common_args "$@"

TEST_FORMATTED=$(absolute "${TEST_FORMATTED:-$DATA_DIR/test_formatted.jsonl}")
PREDICT=$(predict_file "$(final_checkpoint)")

# decode_to REF PRED [gpt2_decode.py flags]: one decoding, skipped when REF and PRED are newer than the inputs
# (REF a file for e2e, a directory of reference0.. for webnlg and dart, judged by its reference0).
decode_to() {
  local ref=$1 pred=$2 made=$1
  shift 2
  [ "$TASK" = e2e ] || made=$ref/reference0
  if already_done "$made" "$pred" --after "$PREDICT" "$TEST_FORMATTED"; then return; fi
  need_file "$PREDICT" "$(stage_command beam)"
  need_file "$TEST_FORMATTED" "bash scripts/create_datasets.sh --datasets $TASK"
  [ -s "$VOCAB_DIR/encoder.json" ] || [ -s "$VOCAB_DIR/vocab.json" ] \
    || die "decode: no GPT-2 vocabulary (encoder.json or vocab.json) in $VOCAB_DIR (make it with:" \
           "bash scripts/download_pretrained_checkpoints.sh, or set VOCAB_DIR)"
  run "$PY" "$REPO_DIR/src/gpt2_decode.py" --vocab "$VOCAB_DIR" --sample_file "$PREDICT" \
    --input_file "$TEST_FORMATTED" --output_ref_file "$ref" --output_pred_file "$pred" "$@" "${EXTRA_ARGS[@]}"
  log "done: $ref, $pred"
}

case "$TASK" in
  e2e) decode_to "$WORK_DIR/e2e_ref.txt" "$WORK_DIR/e2e_pred.txt" --ref_type e2e ;;
  *)
    for subset in $(generation_subsets); do
      decode_to "$(references_dir "$subset")" "$(hypothesis_file "$subset")" --ref_type "$TASK" \
        --ref_num 6 --tokenize --lower --filter "$subset"
    done ;;
esac
