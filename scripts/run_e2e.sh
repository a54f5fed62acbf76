#!/usr/bin/env bash
# The whole E2E reproduction, stage by stage, ending with the comparison with the paper:
#   bash scripts/run_e2e.sh [--model md|lg] [--ngpu N] [--work_dir DIR] [--force] [--nnodes N --node_rank R ...]
#   bash scripts/run_e2e.sh --demo      the same chain offline on the CPU in minutes (a small model, see below)
# Stages: download_pretrained_checkpoints.sh, create_datasets.sh (each only when its outputs are missing),
# train_e2e.sh, beam_e2e.sh, decode_e2e.sh, eval_e2e.sh. A stage whose outputs exist is skipped unless --force.
# With several nodes, run it on every node: nodes other than 0 stop after training (node 0 holds the checkpoint).
# CHECKPOINT=F (or --checkpoint F): score that checkpoint (e.g. a released LoRA file) without training.
# TRAIN_ARGS / BEAM_ARGS: extra flags for gpt2_ft.py / gpt2_beam.py (e.g. TRAIN_ARGS="--precision bf16").
#
# --demo: no download, no GPU. A gpt2.mini (256 wide, 4 layers) trained from random weights with full
# fine-tuning (lora_dim 0) on the E2E valid split, then beam search, decoding and the five scores on the first
# DEMO_CONTEXTS meaning representations of the test split. Its scores show that the pipeline works; they are
# not the paper's. Settings: E2E_SOURCE_DIR (a folder with valid.txt and test.txt; default data/e2e, else
# $LORANLG_SHARED/data/e2e), VOCAB_DIR (encoder.json + vocab.bpe or vocab.json + merges.txt; default
# pretrained_checkpoints, else $LORANLG_SHARED/vocab), DEMO_STEPS (training steps, default 400),
# DEMO_CONTEXTS (test MRs scored, default 200 of 630, for time), DEMO_HOLDOUT (valid MRs kept out of training for the
# validation loss, default 20), DEMO_CARD (default gpt2.mini; gpt2.tiny is faster and worse), WORK_DIR
# (default trained_models/demo/e2e).
STAGE=run
source "$(dirname "$0")/common.sh"
DEMO=${DEMO:-0}
START=$SECONDS

stage() {
  local name=$1
  shift
  local began=$SECONDS
  echo "=== $name ===" >&2
  bash "$REPO_DIR/scripts/$name" "$@"
  echo "=== $name: $((SECONDS - began)) s ===" >&2
}

# The variables the stage scripts read (flags given here reach them this way).
export_settings() {
  export MODEL NGPU WORK_DIR FORCE LAUNCHER NNODES NODE_RANK MASTER_ADDR DATA_DIR PRETRAINED_DIR \
    VOCAB_DIR INIT_CHECKPOINT MODEL_CARD PRECISION LORA_DIM PYTHON="$PY"
  export MASTER_PORT=$MASTER_PORT_GIVEN  # empty: one node picks a free port
}

# ------------------------------------------------------------------ the paper's reproduction

full_run() {
  [ ${#EXTRA_ARGS[@]} -eq 0 ] || die "run_e2e.sh passes no flags after --; use TRAIN_ARGS / BEAM_ARGS"
  export_settings
  if [ "$INIT_CHECKPOINT" != none ] && [ ! -s "$INIT_CHECKPOINT" ]; then
    stage download_pretrained_checkpoints.sh "$MODEL" --dir "$PRETRAINED_DIR"
  fi
  local needed=(test.jsonl test_formatted.jsonl) splits=test name
  [ -n "${CHECKPOINT:-}" ] || { needed+=(train.jsonl valid.jsonl); splits=train,valid,test; }
  for name in "${needed[@]}"; do
    if [ ! -s "$DATA_DIR/$name" ]; then
      [ "$(basename "$DATA_DIR")" = e2e ] || die "missing $DATA_DIR/$name: create_datasets.sh builds" \
        "DATA/e2e/, so DATA_DIR must end in /e2e for it to build them"
      stage create_datasets.sh --datasets e2e --splits "$splits" --vocab "$VOCAB_DIR" --data "$(dirname "$DATA_DIR")"
      break
    fi
  done
  if [ -n "${CHECKPOINT:-}" ]; then
    export CHECKPOINT
    echo "scoring $CHECKPOINT: no training" >&2
  else
    # shellcheck disable=SC2086  # TRAIN_ARGS / BEAM_ARGS are lists of flags
    stage train_e2e.sh -- ${TRAIN_ARGS:-}
  fi
  if [ "$NODE_RANK" != 0 ]; then
    echo "node $NODE_RANK: training done; beam search and scoring run on node 0" >&2
    return
  fi
  # Beam search on this node only: the checkpoint is here.
  NNODES=1 NGPU=$NGPU stage beam_e2e.sh -- ${BEAM_ARGS:-}
  stage decode_e2e.sh
  stage eval_e2e.sh
}

# ------------------------------------------------------------------ the offline demo

find_dir() {  # find_dir FILE CANDIDATE...: the first candidate directory holding FILE
  local file=$1 dir
  shift
  for dir in "$@"; do
    if [ -n "$dir" ] && [ -s "$dir/$file" ]; then
      echo "$dir"
      return
    fi
  done
}

# The first N distinct MRs of an E2E raw file, with every reference line of each.
first_mrs() {
  awk -F'[|][|]' -v n="$2" '!($1 in kept) { if (count >= n) next; kept[$1] = 1; count++ } { print }' "$1"
}

# Valid MRs split into training (all but the last H) and held-out (the last H) lines.
split_valid() {
  awk -F'[|][|]' -v h="$2" -v train="$3" -v held="$4" '
    NR == FNR { if (!($1 in seen)) { seen[$1] = ++total }; next }
    { print > ((seen[$1] > total - h) ? held : train) }' "$1" "$1"
}

prepare_demo_data() {
  local source=$1 data=$WORK_DIR/data
  if already_done "$data/train.jsonl" "$data/valid.jsonl" "$data/test.jsonl" "$data/test_formatted.jsonl"; then
    return
  fi
  mkdir -p "$data"
  split_valid "$source/valid.txt" "$DEMO_HOLDOUT" "$data/train.txt" "$data/valid.txt"
  first_mrs "$source/test.txt" "$DEMO_CONTEXTS" > "$data/test.txt"
  local split
  for split in train valid test; do
    [ -s "$data/$split.txt" ] || die "demo: no $split lines (DEMO_HOLDOUT=$DEMO_HOLDOUT, DEMO_CONTEXTS=$DEMO_CONTEXTS)"
    "$PY" "$REPO_DIR/src/format_converting_e2e.py" "$data/$split.txt" "$data/${split}_formatted.jsonl"
    "$PY" "$REPO_DIR/src/gpt2_encode.py" --vocab "$VOCAB_DIR" --input "$data/${split}_formatted.jsonl" \
      --output "$data/$split.jsonl" --add_bos --add_eos
  done
  echo "demo data: $(wc -l < "$data/train.txt") training lines, $(wc -l < "$data/valid.txt") held-out lines," \
    "$(wc -l < "$data/test.txt") test lines over $DEMO_CONTEXTS MRs, in $data" >&2
}

demo_run() {
  [ ${#EXTRA_ARGS[@]} -eq 0 ] || die "run_e2e.sh passes no flags after --; use TRAIN_ARGS / BEAM_ARGS"
  DEMO_STEPS=${DEMO_STEPS:-400}
  DEMO_CONTEXTS=${DEMO_CONTEXTS:-200}
  DEMO_HOLDOUT=${DEMO_HOLDOUT:-20}
  case "$DEMO_STEPS$DEMO_CONTEXTS$DEMO_HOLDOUT" in *[!0-9]*) die "DEMO_* take whole numbers" ;; esac
  local shared=${LORANLG_SHARED:-}
  local source
  source=$(find_dir valid.txt "${E2E_SOURCE_DIR:-}" "$REPO_DIR/data/e2e" "${shared:+$shared/data/e2e}")
  [ -n "$source" ] && [ -s "$source/test.txt" ] || die "demo: no E2E valid.txt and test.txt: set E2E_SOURCE_DIR" \
    "to a folder holding them, or fetch them once with: bash scripts/create_datasets.sh --splits valid,test"
  if [ "$VOCAB_GIVEN" != 1 ]; then
    VOCAB_DIR=$(find_dir encoder.json "$REPO_DIR/pretrained_checkpoints" "${shared:+$shared/vocab}")
    [ -n "$VOCAB_DIR" ] || VOCAB_DIR=$(find_dir vocab.json "$REPO_DIR/pretrained_checkpoints")
  fi
  [ -s "$VOCAB_DIR/encoder.json" ] || [ -s "$VOCAB_DIR/vocab.json" ] || die "demo: no GPT-2 vocabulary in ${VOCAB_DIR:-pretrained_checkpoints}: set VOCAB_DIR to a" \
    "folder with encoder.json + vocab.bpe (or vocab.json + merges.txt), or fetch it once with:" \
    "bash scripts/create_datasets.sh --splits valid,test"

  MODEL=md MODEL_CARD=${DEMO_CARD:-gpt2.mini} LORA_DIM=0 INIT_CHECKPOINT=none LAUNCHER=python NGPU=1 NNODES=1
  DATA_DIR=$WORK_DIR/data
  export_settings
  export TRAIN_DATA=$DATA_DIR/train.jsonl VALID_DATA=$DATA_DIR/valid.jsonl TEST_DATA=$DATA_DIR/test.jsonl \
    TEST_FORMATTED=$DATA_DIR/test_formatted.jsonl BEAM_BATCH_SIZE=${BEAM_BATCH_SIZE:-16}
  export COMPARE_NOTE="Offline demo: a ${MODEL_CARD} (random init, full fine-tuning, $DEMO_STEPS steps on the E2E valid split) scored on $DEMO_CONTEXTS test MRs. These scores show that the pipeline works; they are not a reproduction of the paper."
  echo "demo: E2E text from $source, vocabulary from $VOCAB_DIR, work dir $WORK_DIR" >&2

  check_demo_settings "card=$MODEL_CARD steps=$DEMO_STEPS contexts=$DEMO_CONTEXTS holdout=$DEMO_HOLDOUT" \
    "train=${TRAIN_ARGS:-} beam=${BEAM_ARGS:-}"
  stage_demo_data "$source"
  # From random weights: a higher rate and a shorter warmup than the paper's LoRA recipe; no periodic checkpoints.
  local eval_every=$(( DEMO_STEPS / 2 > 0 ? DEMO_STEPS / 2 : 1 ))
  stage train_e2e.sh -- --device cpu --max_step "$DEMO_STEPS" --lr 0.001 --warmup_step $(( DEMO_STEPS / 10 )) \
    --save_interval 1000000 --eval_interval "$eval_every" --log_interval $(( eval_every / 5 > 0 ? eval_every / 5 : 1 )) \
    ${TRAIN_ARGS:-}
  stage beam_e2e.sh -- --device cpu ${BEAM_ARGS:-}
  stage decode_e2e.sh
  stage eval_e2e.sh
}

# A work dir holds one demo: other settings need --force (everything is redone) or another WORK_DIR.
check_demo_settings() {
  local file=$WORK_DIR/demo.settings wanted
  wanted=$(printf '%s\n' "$@")
  if [ -s "$file" ] && [ "$FORCE" != 1 ] && [ "$(cat "$file")" != "$wanted" ]; then
    die "demo: $WORK_DIR holds a demo run with other settings ($(tr '\n' ' ' < "$file")); use --force to redo" \
      "it, or another WORK_DIR"
  fi
  if [ ! -s "$file" ] || [ "$(cat "$file")" != "$wanted" ]; then
    mkdir -p "$WORK_DIR"
    printf '%s\n' "$wanted" > "$file"
  fi
}

stage_demo_data() {
  local began=$SECONDS
  echo "=== demo data ===" >&2
  prepare_demo_data "$1"
  echo "=== demo data: $((SECONDS - began)) s ===" >&2
}

main() {
  for arg in "$@"; do [ "$arg" = --demo ] && DEMO=1; done
  if [ "$DEMO" = 1 ] && [ -z "${WORK_DIR:-}" ]; then
    WORK_DIR=trained_models/demo/e2e
  fi
  parse_common_args "$@"

  # The last stage needs Java: say so before hours (or minutes) of work, not after.
  command -v java >/dev/null 2>&1 || die "no 'java' on PATH: the E2E evaluator (METEOR, PTB tokenizer) needs a Java" \
    "runtime (Debian/Ubuntu: sudo apt-get install default-jre-headless)"
  if [ "$DEMO" = 1 ]; then
    demo_run
  else
    full_run
  fi
  echo "run_e2e: done in $((SECONDS - START)) s; results in $WORK_DIR/results.md" >&2
}

# One line, read whole before it runs: the script can be edited while a long run of it goes on.
main "$@"; exit $?
