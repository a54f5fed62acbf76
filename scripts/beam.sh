#!/usr/bin/env bash
# Stage 4: beam search over the task's test set with the paper's settings (the original's README), under torchrun.
#   bash scripts/beam.sh [--task e2e|webnlg|dart] [--model md|lg] [--ngpu N] [--work_dir DIR] [--checkpoint F]
#                        [--force] [-- extra flags]        (beam_e2e.sh is beam.sh --task e2e)
# Reads  DATA_DIR/test.jsonl (scripts/create_datasets.sh; TEST_DATA overrides), the GPT-2 weights and the
#        checkpoint train.sh finished with (WORK_DIR/train.done), or CHECKPOINT / --checkpoint: e.g. a
#        released LoRA file (gpt2_md_lora_e2e.pt, gpt2_md_lora_webnlg.pt, ...), loaded over the base weights.
# Writes WORK_DIR/predict.{step}.b10p08r4.jsonl (E2E; predict.{step}.b10p08.jsonl for WebNLG and DART, as the
#        original README names them; {"id", "predict"} a line) and WORK_DIR/beam.log.
# BEAM_BATCH_SIZE contexts per batch (default auto: on a GPU as many as its free memory holds, all 630 E2E
# test contexts on an 80 GB one; on the CPU 16). The results do not depend on it (up to rounding at near-ties).
# Skipped when the prediction file exists, unless --force. Settings shared by all stages: below.
STAGE=beam
source "$(dirname "$0")/common.sh"
parse_common_args "$@"

TEST_DATA=$(absolute "${TEST_DATA:-$DATA_DIR/test.jsonl}")
BEAM_BATCH_SIZE=${BEAM_BATCH_SIZE:-auto}
CKPT=$(final_checkpoint)
OUTPUT=$(predict_file "$CKPT")

if already_done "$OUTPUT" --after "$CKPT" "$TEST_DATA"; then exit 0; fi
need_file "$TEST_DATA" "bash scripts/create_datasets.sh --datasets $TASK"
need_file "$CKPT" "$(stage_command train)"
if [ "$LORA_DIM" -gt 0 ]; then
  # LoRA: the base weights, then the LoRA tensors of the checkpoint over them.
  [ "$INIT_CHECKPOINT" != none ] || die "beam: a LoRA checkpoint needs the base weights (INIT_CHECKPOINT)"
  need_file "$INIT_CHECKPOINT" "bash scripts/download_pretrained_checkpoints.sh $MODEL"
  WEIGHT_ARGS=(--init_checkpoint "$INIT_CHECKPOINT" --lora_checkpoint "$CKPT")
else
  WEIGHT_ARGS=(--init_checkpoint "$CKPT")  # full fine-tuning: the checkpoint is the whole model
fi
need_gpu "beam search with" "hours (10 beams, up to 64 steps, over every test context)"
mkdir -p "$WORK_DIR"

launch gpt2_beam.py \
  --data "$TEST_DATA" --batch_size "$BEAM_BATCH_SIZE" --seq_len 512 --eval_len 64 \
  --model_card "$MODEL_CARD" "${WEIGHT_ARGS[@]}" --lora_dim "$LORA_DIM" --lora_alpha 32 \
  --beam 10 --length_penalty "$LENGTH_PENALTY" --no_repeat_ngram_size 4 --repetition_penalty 1.0 --eos_token_id 628 \
  --work_dir "$WORK_DIR" --output_file "$(basename "$OUTPUT")" \
  "${PRECISION_ARGS[@]}" "${EXTRA_ARGS[@]}" 2>&1 | tee "$WORK_DIR/beam.log" || {
  STATUS=$?
  die_if_nodes_never_met "$WORK_DIR/beam.log"
  exit "$STATUS"
}

[ "$NODE_RANK" = 0 ] || exit 0
[ -s "$OUTPUT" ] || die "beam: gpt2_beam.py ended without writing $OUTPUT (see beam.log)"
log "done: $OUTPUT"
