#!/usr/bin/env bash
# Stage 3: LoRA training with the paper's recipe for the task (README of the original, paper Table 11), under
# torchrun.
#   bash scripts/train.sh [--task e2e|webnlg|dart] [--model md|lg] [--ngpu N] [--work_dir DIR] [--force]
#                         [-- extra gpt2_ft.py flags]        (train_e2e.sh is train.sh --task e2e)
# Reads  DATA_DIR/train.jsonl, DATA_DIR/valid.jsonl (scripts/create_datasets.sh) and the GPT-2 weights
#        (scripts/download_pretrained_checkpoints.sh); TRAIN_DATA / VALID_DATA override the data files.
# Writes WORK_DIR/model.{step}.pt (every 1000 steps and at the end), WORK_DIR/metrics.jsonl, WORK_DIR/train.log,
#        and WORK_DIR/train.done naming the final checkpoint (what beam.sh reads). With several nodes, node 0
#        writes these; node R writes only WORK_DIR/train.nodeR.log and train.nodeR.done (WORK_DIR may be shared).
# GLOBAL_BATCH=G: G examples a step split over all processes (gpt2_ft.py --global_batch), e.g. GLOBAL_BATCH=8 with
#        --ngpu 2 reproduces the paper's one-GPU run step for step; unset (default): 8 per process, as the original.
# Skipped when train.done (train.nodeR.done on node R) exists, unless --force. Settings shared by all stages: below.
STAGE=train
source "$(dirname "$0")/common.sh"
SCRIPT_ARGS=("$@")
parse_common_args "$@"

TRAIN_DATA=$(absolute "${TRAIN_DATA:-$DATA_DIR/train.jsonl}")
VALID_DATA=$(absolute "${VALID_DATA:-$DATA_DIR/valid.jsonl}")
# Node 0 holds the run's files; another node keeps its own log and marker, so that nodes may share WORK_DIR.
NODE_TAG=$([ "$NODE_RANK" = 0 ] || echo ".node$NODE_RANK")
MARKER=$WORK_DIR/train$NODE_TAG.done
TRAIN_LOG=$WORK_DIR/train$NODE_TAG.log

if already_done "$MARKER"; then exit 0; fi
need_file "$TRAIN_DATA" "bash scripts/create_datasets.sh --datasets $TASK"
need_file "$VALID_DATA" "bash scripts/create_datasets.sh --datasets $TASK"
INIT_ARGS=()
if [ "$INIT_CHECKPOINT" != none ]; then
  need_file "$INIT_CHECKPOINT" "bash scripts/download_pretrained_checkpoints.sh $MODEL"
  INIT_ARGS=(--init_checkpoint "$INIT_CHECKPOINT")
fi
BATCH_ARGS=(--train_batch_size 8)
if [ -n "${GLOBAL_BATCH:-}" ]; then BATCH_ARGS=(--global_batch "$GLOBAL_BATCH"); fi
need_gpu "training" "days (about 0.7 TFLOP a step, several seconds a step on a few cores, 26,290 steps for E2E)"
mkdir -p "$WORK_DIR"
rm -f "$MARKER"
STAMP=$WORK_DIR/.train$NODE_TAG.started
touch "$STAMP"

# The paper's recipe (README of microsoft/LoRA examples/NLG, paper Table 11); the task's values from common.sh.
launch gpt2_ft.py \
  --train_data "$TRAIN_DATA" --valid_data "$VALID_DATA" \
  "${BATCH_ARGS[@]}" --grad_acc 1 --valid_batch_size 4 --seq_len 512 \
  --model_card "$MODEL_CARD" "${INIT_ARGS[@]}" \
  --platform local --clip 0.0 --lr 0.0002 --weight_decay "$WEIGHT_DECAY" --correct_bias --adam_beta2 0.999 \
  --scheduler linear --warmup_step 500 --max_epoch 5 \
  --save_interval 1000 --eval_interval 5000 --log_interval 100 \
  --lora_dim "$LORA_DIM" --lora_alpha 32 --lora_dropout "$LORA_DROPOUT" --label_smooth "$LABEL_SMOOTH" --random_seed 110 \
  --work_dir "$WORK_DIR" "${PRECISION_ARGS[@]}" "${EXTRA_ARGS[@]}" 2>&1 \
  | (trap '' INT TERM; exec tee "$TRAIN_LOG") || STATUS=$?
# tee ignores Ctrl-C / SIGTERM, so gpt2_ft.py can still report where it saved; any non-zero exit of gpt2_ft.py
# (130 / 143 when interrupted: it saved resume.pt) ends here, without train.done.
if [ "${STATUS:-0}" != 0 ]; then
  rm -f "$STAMP"
  die_if_nodes_never_met "$TRAIN_LOG"
  # gpt2_ft.py's own reason, again: under torchrun the launcher's report follows it in the log.
  [ "$LAUNCHER" = python ] || grep -m 1 '^error: ' "$TRAIN_LOG" >&2 || true
  RESUME=(bash "$0" "${SCRIPT_ARGS[@]}")
  case " ${SCRIPT_ARGS[*]} " in
    *" -- "*" --resume "*) ;;
    *" -- "*) RESUME+=(--resume) ;;
    *) RESUME+=(-- --resume) ;;
  esac
  echo "error: train: gpt2_ft.py exited with status $STATUS; no train.done written. Continue with:" \
    "$(printf '%q ' "${RESUME[@]}")(see $TRAIN_LOG)" >&2
  exit "$STATUS"
fi

if [ "$NODE_RANK" != 0 ]; then
  rm -f "$STAMP"
  echo "node $NODE_RANK of $NNODES: done (node 0 holds the checkpoints)" > "$MARKER"
  log "done on node $NODE_RANK (node 0 holds the checkpoints)"
  exit 0
fi
# The final checkpoint: the highest step written by this run.
FINAL=$(find "$WORK_DIR" -maxdepth 1 -name 'model.*.pt' -newer "$STAMP" -printf '%f\n' \
  | sed -n 's/^model\.\([0-9]\+\)\.pt$/\1/p' | sort -n | tail -n 1)
rm -f "$STAMP"
[ -n "$FINAL" ] || die "train: gpt2_ft.py ended without writing a model.{step}.pt in $WORK_DIR (see train.log)"
echo "model.$FINAL.pt" > "$MARKER"
log "done: final checkpoint $WORK_DIR/model.$FINAL.pt"
