#!/usr/bin/env bash
# A whole reproduction, stage by stage, ending with the comparison with the paper:
#   bash scripts/run.sh --task e2e|webnlg|dart [--model md|lg] [--ngpu N] [--work_dir DIR] [--force]
#                       [--nnodes N --node_rank R ...]
#   bash scripts/run.sh --task TASK --demo   the same chain offline on the CPU in minutes (a small model, see below)
# run_e2e.sh, run_webnlg.sh and run_dart.sh are run.sh with their --task.
# Stages: download_pretrained_checkpoints.sh, create_datasets.sh (each only when its outputs are missing),
# train.sh, beam.sh, decode.sh, eval.sh (with --task). A stage whose outputs exist is skipped unless --force.
# With several nodes, run it on every node: nodes other than 0 stop after training (node 0 holds the checkpoint).
# CHECKPOINT=F (or --checkpoint F): score that checkpoint (e.g. a released LoRA file) without training.
# TRAIN_ARGS / BEAM_ARGS: extra flags for gpt2_ft.py / gpt2_beam.py (e.g. TRAIN_ARGS="--precision bf16").
#
# --demo: no download, no GPU. A gpt2.mini (256 wide, 4 layers) trained from random weights with full
# fine-tuning (lora_dim 0), then beam search, decoding, the scores and the comparison. Its scores show that the
# pipeline works; they are not the paper's.
#   e2e:    trained on the E2E valid split, scored on the first DEMO_CONTEXTS MRs of the test split (default 200
#           of 630); E2E_SOURCE_DIR: a folder with valid.txt and test.txt.
#   webnlg: trained on part of the WebNLG dev split (dev.json), scored on DEMO_CONTEXTS other entries (default
#           100): half of them from 3 categories kept out of training (scored as unseen), half from the others
#           (seen); WEBNLG_SOURCE_DIR: a folder with dev.json.
#   dart:   trained on the DART dev split but its last DEMO_CONTEXTS triple sets (default 100), scored on those;
#           DART_SOURCE_DIR: a folder with dart-v1.1.1-full-dev.json.
# Inputs are looked for in the SOURCE_DIR variable, then data/<task folder>, then $LORANLG_SHARED (default: the
# shared/ folder beside the repository); missing, they are downloaded into data/ (a few MB; LORANLG_DATA_URL as
# for create_datasets.sh), and the vocabulary into pretrained_checkpoints/. Other settings: VOCAB_DIR (encoder.json + vocab.bpe or vocab.json +
# merges.txt; default pretrained_checkpoints, else $LORANLG_SHARED/vocab), DEMO_STEPS (training steps, default
# 400), DEMO_HOLDOUT (MRs / entries kept out of training for the validation loss, default 20), DEMO_CARD (default
# gpt2.mini; gpt2.tiny is faster and worse), WORK_DIR (default trained_models/demo/TASK).
STAGE=run
source "$(dirname "$0")/common.sh"
DATA_URL=${LORANLG_DATA_URL:-https://raw.githubusercontent.com/microsoft/LoRA/main/examples/NLG}
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

# The variables the stage scripts read (flags given here reach them this way; TASK among them).
export_settings() {
  export TASK MODEL NGPU WORK_DIR FORCE LAUNCHER NNODES NODE_RANK MASTER_ADDR RDZV_TIMEOUT DATA_DIR PRETRAINED_DIR \
    VOCAB_DIR INIT_CHECKPOINT MODEL_CARD PRECISION LORA_DIM PYTHON="$PY"
  export MASTER_PORT=$MASTER_PORT_GIVEN  # empty: one node picks a free port
}

# ------------------------------------------------------------------ the paper's reproduction

full_run() {
  [ ${#EXTRA_ARGS[@]} -eq 0 ] || die "run.sh passes no flags after --; use TRAIN_ARGS / BEAM_ARGS"
  export_settings
  if [ "$INIT_CHECKPOINT" != none ] && [ ! -s "$INIT_CHECKPOINT" ]; then
    stage download_pretrained_checkpoints.sh "$MODEL" --dir "$PRETRAINED_DIR" --vocab_dir "$VOCAB_DIR"
  fi
  local needed=(test.jsonl test_formatted.jsonl) splits=test name
  [ -n "${CHECKPOINT:-}" ] || { needed+=(train.jsonl valid.jsonl); splits=train,valid,test; }
  for name in "${needed[@]}"; do
    if [ ! -s "$DATA_DIR/$name" ]; then
      [ "$(basename "$DATA_DIR")" = "$DATA_NAME" ] || die "missing $DATA_DIR/$name: create_datasets.sh builds" \
        "DATA/$DATA_NAME/, so DATA_DIR must end in /$DATA_NAME for it to build them"
      stage create_datasets.sh --datasets "$TASK" --splits "$splits" --vocab "$VOCAB_DIR" --data "$(dirname "$DATA_DIR")"
      break
    fi
  done
  if [ -n "${CHECKPOINT:-}" ]; then
    export CHECKPOINT
    echo "scoring $CHECKPOINT: no training" >&2
  else
    # shellcheck disable=SC2086  # TRAIN_ARGS / BEAM_ARGS are lists of flags
    stage train.sh -- ${TRAIN_ARGS:-}
  fi
  if [ "$NODE_RANK" != 0 ]; then
    echo "node $NODE_RANK: training done; beam search and scoring run on node 0" >&2
    return
  fi
  # Beam search on this node only: the checkpoint is here.
  NNODES=1 NGPU=$NGPU stage beam.sh -- ${BEAM_ARGS:-}
  stage decode.sh
  stage eval.sh
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

# The demo's train / valid / test parts, formatted and encoded, in WORK_DIR/data.
prepare_demo_data() {
  local source=$1 data=$WORK_DIR/data split
  if already_done "$data/train.jsonl" "$data/valid.jsonl" "$data/test.jsonl" "$data/test_formatted.jsonl"; then
    return
  fi
  mkdir -p "$data"
  if [ "$TASK" = e2e ]; then
    split_valid "$source/valid.txt" "$DEMO_HOLDOUT" "$data/train.txt" "$data/valid.txt"
    first_mrs "$source/test.txt" "$DEMO_CONTEXTS" > "$data/test.txt"
    for split in train valid test; do
      [ -s "$data/$split.txt" ] || die "demo: no $split lines (DEMO_HOLDOUT=$DEMO_HOLDOUT, DEMO_CONTEXTS=$DEMO_CONTEXTS)"
      "$PY" "$REPO_DIR/src/format_converting_e2e.py" "$data/$split.txt" "$data/${split}_formatted.jsonl"
    done
  else
    PYTHONPATH="$REPO_DIR/src${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m loranlg.demo_data --task "$TASK" \
      --source "$source" --out "$data" --contexts "$DEMO_CONTEXTS" --holdout "$DEMO_HOLDOUT"
  fi
  for split in train valid test; do
    "$PY" "$REPO_DIR/src/gpt2_encode.py" --vocab "$VOCAB_DIR" --input "$data/${split}_formatted.jsonl" \
      --output "$data/$split.jsonl" --add_bos --add_eos
  done
  echo "demo data: $(wc -l < "$data/train_formatted.jsonl") training lines, $(wc -l < "$data/valid_formatted.jsonl")" \
    "held-out lines, $(wc -l < "$data/test_formatted.jsonl") test lines, in $data" >&2
}

# The demo's raw input files per task, as the LoRA repository's data folder names them.
demo_files() {
  case "$TASK" in
    e2e) echo "e2e valid.txt test.txt" ;;
    webnlg) echo "webnlg_challenge_2017 dev.json" ;;
    dart) echo "dart dart-v1.1.1-full-dev.json" ;;
  esac
}

# The folder holding the demo's raw files: the task's SOURCE_DIR variable, data/<folder>, the shared folder; else
# they are downloaded into data/<folder> (a few MB). Prints the folder.
demo_source() {
  local shared=$1 folder given name found
  read -r folder names <<< "$(demo_files)"
  case "$TASK" in
    e2e) given=${E2E_SOURCE_DIR:-} ;; webnlg) given=${WEBNLG_SOURCE_DIR:-} ;; dart) given=${DART_SOURCE_DIR:-} ;;
  esac
  for found in "$given" "$REPO_DIR/data/$folder" "${shared:+$shared/data/$folder}"; do
    [ -n "$found" ] || continue
    local complete=1
    for name in $names; do [ -s "$found/$name" ] || complete=0; done
    if [ "$complete" = 1 ]; then echo "$found"; return; fi
  done
  echo "demo: no $TASK_NAME demo data in ${given:+$given, }data/$folder${shared:+ or $shared/data/$folder}: downloading it" >&2
  for name in $names; do
    PYTHONPATH="$REPO_DIR/src${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m loranlg.download raw \
      --dest "$REPO_DIR/data/$folder/$name" --url "$DATA_URL/data/$folder/$name" >&2 || true
  done
  echo "$REPO_DIR/data/$folder"
}

# The GPT-2 vocabulary: VOCAB_DIR, pretrained_checkpoints, the shared folder; else downloaded (1.5 MB).
demo_vocabulary() {
  local shared=$1
  if [ "$VOCAB_GIVEN" != 1 ]; then
    VOCAB_DIR=$(find_dir encoder.json "$REPO_DIR/pretrained_checkpoints" "${shared:+$shared/vocab}")
    [ -n "$VOCAB_DIR" ] || VOCAB_DIR=$(find_dir vocab.json "$REPO_DIR/pretrained_checkpoints")
    [ -n "$VOCAB_DIR" ] || VOCAB_DIR=$REPO_DIR/pretrained_checkpoints
  fi
  if ! [ -s "$VOCAB_DIR/encoder.json" ] && ! [ -s "$VOCAB_DIR/vocab.json" ]; then
    echo "demo: no GPT-2 vocabulary in $VOCAB_DIR${shared:+ or $shared/vocab}: downloading it" >&2
    PYTHONPATH="$REPO_DIR/src${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m loranlg.download vocab --dir "$VOCAB_DIR" >&2 \
      || MISSING+=("the GPT-2 vocabulary (vocab.json + merges.txt from https://huggingface.co/openai-community/gpt2, or encoder.json + vocab.bpe) into $VOCAB_DIR")
  fi
}

demo_run() {
  [ ${#EXTRA_ARGS[@]} -eq 0 ] || die "run.sh passes no flags after --; use TRAIN_ARGS / BEAM_ARGS"
  DEMO_STEPS=${DEMO_STEPS:-400}
  DEMO_CONTEXTS=${DEMO_CONTEXTS:-$([ "$TASK" = e2e ] && echo 200 || echo 100)}
  DEMO_HOLDOUT=${DEMO_HOLDOUT:-20}
  case "$DEMO_STEPS$DEMO_CONTEXTS$DEMO_HOLDOUT" in *[!0-9]*) die "DEMO_* take whole numbers" ;; esac
  local shared=${LORANLG_SHARED:-}
  if [ -z "$shared" ] && [ -d "$REPO_DIR/../shared" ]; then shared=$(cd "$REPO_DIR/../shared" && pwd); fi
  local source folder names
  MISSING=()
  source=$(demo_source "$shared")
  read -r folder names <<< "$(demo_files)"
  for name in $names; do
    [ -s "$source/$name" ] || MISSING+=("$DATA_URL/data/$folder/$name into $REPO_DIR/data/$folder/$name")
  done
  demo_vocabulary "$shared"
  if [ ${#MISSING[@]} -gt 0 ]; then
    local list
    list=$(printf '; %s' "${MISSING[@]}")
    die "demo: missing inputs that could not be downloaded. Put the shared folder beside the repository (or set" \
      "LORANLG_SHARED), or fetch by hand: ${list#; }"
  fi
  if [ "$TASK" != e2e ]; then source=$source/$names; fi

  MODEL=md MODEL_CARD=${DEMO_CARD:-gpt2.mini} LORA_DIM=0 INIT_CHECKPOINT=none LAUNCHER=python NGPU=1 NNODES=1
  DATA_DIR=$WORK_DIR/data
  export_settings
  export TRAIN_DATA=$DATA_DIR/train.jsonl VALID_DATA=$DATA_DIR/valid.jsonl TEST_DATA=$DATA_DIR/test.jsonl \
    TEST_FORMATTED=$DATA_DIR/test_formatted.jsonl BEAM_BATCH_SIZE=${BEAM_BATCH_SIZE:-16}
  local trained_on="the E2E valid split" scored_on="$DEMO_CONTEXTS test MRs"
  case "$TASK" in
    webnlg) trained_on="part of the WebNLG dev split"
            scored_on="$DEMO_CONTEXTS other dev entries (the unseen ones from categories kept out of training)" ;;
    dart) trained_on="the DART dev split"; scored_on="its last $DEMO_CONTEXTS triple sets, kept out of training" ;;
  esac
  export COMPARE_NOTE="Offline demo: a ${MODEL_CARD} (random init, full fine-tuning, $DEMO_STEPS steps on $trained_on) scored on $scored_on. These scores show that the pipeline works; they are not a reproduction of the paper."
  echo "demo: $TASK_NAME data from $source, vocabulary from $VOCAB_DIR, work dir $WORK_DIR" >&2

  check_demo_settings "card=$MODEL_CARD steps=$DEMO_STEPS contexts=$DEMO_CONTEXTS holdout=$DEMO_HOLDOUT" \
    "train=${TRAIN_ARGS:-} beam=${BEAM_ARGS:-}"
  stage_demo_data "$source"
  # From random weights: a higher rate and a shorter warmup than the paper's LoRA recipe; no periodic checkpoints.
  local eval_every=$(( DEMO_STEPS / 2 > 0 ? DEMO_STEPS / 2 : 1 ))
  stage train.sh -- --device cpu --max_step "$DEMO_STEPS" --lr 0.001 --warmup_step $(( DEMO_STEPS / 10 )) \
    --save_interval 1000000 --eval_interval "$eval_every" --log_interval $(( eval_every / 5 > 0 ? eval_every / 5 : 1 )) \
    ${TRAIN_ARGS:-}
  stage beam.sh -- --device cpu ${BEAM_ARGS:-}
  stage decode.sh
  stage eval.sh
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
  parse_common_args "$@"
  if [ "$DEMO" = 1 ] && [ -z "${WORK_DIR_GIVEN:-}" ]; then
    WORK_DIR=$(absolute "trained_models/demo/$TASK")
  fi

  # The last stage needs Java: say so before hours (or minutes) of work, not after.
  command -v java >/dev/null 2>&1 || die "no 'java' on PATH: the evaluators (METEOR; E2E's PTB tokenizer) need a Java" \
    "runtime (Debian/Ubuntu: sudo apt-get install default-jre-headless)"
  if [ "$DEMO" = 1 ]; then
    demo_run
  else
    full_run
  fi
  echo "run $TASK: done in $((SECONDS - START)) s; results in $WORK_DIR/results.md" >&2
}

# One line, read whole before it runs: the script can be edited while a long run of it goes on.
main "$@"; exit $?
