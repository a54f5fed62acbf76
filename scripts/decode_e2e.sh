#!/usr/bin/env bash
# Stage 5: token ids -> text; the references of each test MR grouped.
#   bash scripts/decode_e2e.sh [--model md|lg] [--work_dir DIR] [--checkpoint F] [--force] [-- extra flags]
# Reads  WORK_DIR/predict.{step}.b10p08r4.jsonl (beam_e2e.sh), DATA_DIR/test_formatted.jsonl
#        (scripts/create_datasets.sh; TEST_FORMATTED overrides) and the vocabulary (VOCAB_DIR).
# Writes WORK_DIR/e2e_ref.txt (references, a blank line after each MR) and WORK_DIR/e2e_pred.txt (one line per MR).
# Skipped when both exist, unless --force. Settings shared by all stages: below.
STAGE=decode
source "$(dirname "$0")/common.sh"
parse_common_args "$@"

TEST_FORMATTED=$(absolute "${TEST_FORMATTED:-$DATA_DIR/test_formatted.jsonl}")
PREDICT=$(predict_file "$(final_checkpoint)")
REF=$WORK_DIR/e2e_ref.txt
PRED=$WORK_DIR/e2e_pred.txt

if already_done "$REF" "$PRED" --after "$PREDICT" "$TEST_FORMATTED"; then exit 0; fi
need_file "$PREDICT" "bash scripts/beam_e2e.sh"
need_file "$TEST_FORMATTED" "bash scripts/create_datasets.sh"
[ -s "$VOCAB_DIR/encoder.json" ] || [ -s "$VOCAB_DIR/vocab.json" ] \
  || die "decode: no GPT-2 vocabulary (encoder.json or vocab.json) in $VOCAB_DIR (make it with:" \
         "bash scripts/download_pretrained_checkpoints.sh, or set VOCAB_DIR)"

run "$PY" "$REPO_DIR/src/gpt2_decode.py" --vocab "$VOCAB_DIR" --sample_file "$PREDICT" \
  --input_file "$TEST_FORMATTED" --output_ref_file "$REF" --output_pred_file "$PRED" --ref_type e2e \
  "${EXTRA_ARGS[@]}"
log "done: $REF, $PRED"
