#!/usr/bin/env bash
# The paper's questions "which weights, how small a rank" on E2E with GPT-2 (its Tables 5-6 and the GPT-2 M rank
# study of its appendix): LoRA over a grid of ranks x target sets, each cell the whole E2E chain (train.sh,
# beam.sh, decode.sh, eval.sh with --lora_dim R and --lora_targets T), ending with a table like the paper's
# (trainable parameters, validation loss and the five E2E scores per cell) and a plot.
#   bash scripts/sweep_e2e.sh [--ranks 1,2,4,8,16,64] [--targets "q;v;q,v;q,k,v,o;all"] [--model md|lg]
#                             [--ngpu N] [--work_dir DIR] [--force] [-- extra gpt2_ft.py flags, e.g. --dora]
#   bash scripts/sweep_e2e.sh --demo      a tiny grid offline on the CPU in minutes (below)
# Target sets are separated by ';' (a set is --lora_targets' comma list). One run per GPU: the cells are dealt
# to the GPUs (--ngpu, default every GPU nvidia-smi lists), each run alone on its GPU (CUDA_VISIBLE_DEVICES); a
# cell whose outputs exist is skipped unless --force. The data and GPT-2 weights must be there (bash
# scripts/run_e2e.sh makes them, or create_datasets.sh and download_pretrained_checkpoints.sh).
# Writes WORK_DIR/r{R}_{targets}/ (each cell's run directory: model.*.pt, metrics.jsonl, scores.json, ...),
#        WORK_DIR/sweep.md (the table) and WORK_DIR/sweep.png (BLEU and validation loss against the rank, a line per
#        target set). WORK_DIR defaults to trained_models/GPT2_M/e2e_sweep (GPT2_L for lg); logs in each cell.
# --demo: the offline demo's data and a small model (run.sh --demo: gpt2.tiny fully fine-tuned from random weights on
#        the E2E valid split, in WORK_DIR/base) stands in for the pretrained GPT-2; each cell then trains LoRA on it
#        for SWEEP_DEMO_STEPS steps (default 100) and decodes SWEEP_DEMO_CONTEXTS test MRs (default 30). Default grid
#        ranks 1,4 x targets "q,v;all"; DEMO_STEPS (the base model's steps, default 300), DEMO_CARD (gpt2.tiny) as
#        for run.sh. WORK_DIR defaults to trained_models/demo/e2e_sweep. The scores show the sweep works, not the
#        paper's numbers.
set -euo pipefail
REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$(if [ -x "$REPO_DIR/.venv/bin/python" ]; then echo "$REPO_DIR/.venv/bin/python"; else echo python3; fi)}

die() {
  echo "error: $*" >&2
  exit 2
}

DEMO=0 FORCE_FLAG=() MODEL=${MODEL:-md} RANKS="" TARGET_SETS="" NGPU=${NGPU:-} WORK_DIR=${WORK_DIR:-} EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --ranks) RANKS=$2; shift 2 ;;
    --targets) TARGET_SETS=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --ngpu) NGPU=$2; shift 2 ;;
    --work_dir|--work-dir) WORK_DIR=$2; shift 2 ;;
    --force) FORCE_FLAG=(--force); shift ;;
    --demo) DEMO=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown option '$1' (see --help; flags for gpt2_ft.py go after --)" ;;
  esac
done
case "$MODEL" in md) SIZE=GPT2_M ;; lg) SIZE=GPT2_L ;; sm) SIZE=GPT2_S ;; *) die "--model must be sm, md or lg" ;; esac
if [ "$DEMO" = 1 ]; then
  RANKS=${RANKS:-1,4}
  TARGET_SETS=${TARGET_SETS:-q,v;all}
  WORK_DIR=${WORK_DIR:-trained_models/demo/e2e_sweep}
else
  RANKS=${RANKS:-1,2,4,8,16,64}
  TARGET_SETS=${TARGET_SETS:-q;v;q,v;q,k,v,o;all}
  WORK_DIR=${WORK_DIR:-trained_models/$SIZE/e2e_sweep}
fi
case "$WORK_DIR" in /*) ;; *) WORK_DIR=$REPO_DIR/$WORK_DIR ;; esac
case "$RANKS" in *[!0-9,]*|"") die "--ranks takes a comma list of whole numbers (got '$RANKS')" ;; esac
IFS=';' read -r -a TARGET_LIST <<< "$TARGET_SETS"
for targets in "${TARGET_LIST[@]}"; do  # checked by the flag's own parser, before any run
  PYTHONPATH="$REPO_DIR/src" "$PY" -c 'import sys; from loranlg.flags import parse_targets; parse_targets(sys.argv[1])' \
    "$targets" 2>/dev/null || die "--targets: '$targets' is not a list of q, k, v, o, fc, proj (or all)"
done
mkdir -p "$WORK_DIR"

# The cells, in table order: "R TARGETS DIR" a line.
CELLS=$WORK_DIR/sweep.cells
: > "$CELLS"
for targets in "${TARGET_LIST[@]}"; do
  for rank in ${RANKS//,/ }; do
    echo "$rank $targets $WORK_DIR/r${rank}_${targets//,/}" >> "$CELLS"
  done
done

# run_cell R TARGETS DIR [GPU]: the E2E chain of one cell, its output in DIR/sweep.log.
run_cell() {
  local rank=$1 targets=$2 dir=$3 gpu=${4:-}
  local common=(--task e2e --model "$MODEL" --work_dir "$dir" --lora_dim "$rank" --launcher python "${FORCE_FLAG[@]}")
  mkdir -p "$dir"
  echo "sweep: r=$rank targets=$targets${gpu:+ on GPU $gpu} -> $dir" >&2
  (
    if [ -n "$gpu" ]; then export CUDA_VISIBLE_DEVICES=$gpu; fi
    bash "$REPO_DIR/scripts/train.sh" "${common[@]}" -- --lora_targets "$targets" "${CELL_TRAIN_ARGS[@]}" "${EXTRA[@]}"
    bash "$REPO_DIR/scripts/beam.sh" "${common[@]}" -- --lora_targets "$targets" "${CELL_BEAM_ARGS[@]}" \
      "${VARIANT_ARGS[@]}"
    bash "$REPO_DIR/scripts/decode.sh" "${common[@]}"
    bash "$REPO_DIR/scripts/eval.sh" "${common[@]}"
  ) > "$dir/sweep.log" 2>&1 || { echo "sweep: the cell r=$rank targets=$targets failed; see $dir/sweep.log" >&2; return 1; }
}

# The variant flags beam search must repeat (the checkpoint records them; loading checks them).
VARIANT_ARGS=()
for ((i = 0; i < ${#EXTRA[@]}; i++)); do
  case "${EXTRA[$i]}" in
    --dora) VARIANT_ARGS+=(--dora) ;;
    --lora_scaling) VARIANT_ARGS+=(--lora_scaling "${EXTRA[$((i + 1))]}") ;;
    --lora_alpha) VARIANT_ARGS+=(--lora_alpha "${EXTRA[$((i + 1))]}") ;;
  esac
done

CELL_TRAIN_ARGS=() CELL_BEAM_ARGS=()
if [ "$DEMO" = 1 ]; then
  # The base model and the data: run.sh's demo (full fine-tuning of a small card from random weights).
  export DEMO_CARD=${DEMO_CARD:-gpt2.tiny} DEMO_STEPS=${DEMO_STEPS:-300}
  export DEMO_CONTEXTS=${SWEEP_DEMO_CONTEXTS:-30} DEMO_HOLDOUT=${DEMO_HOLDOUT:-20}
  echo "sweep demo: the base model ($DEMO_CARD, $DEMO_STEPS steps) in $WORK_DIR/base" >&2
  WORK_DIR=$WORK_DIR/base bash "$REPO_DIR/scripts/run.sh" --task e2e --demo "${FORCE_FLAG[@]}" > "$WORK_DIR/base.log" 2>&1 \
    || die "sweep demo: the base run failed; see $WORK_DIR/base.log"
  BASE=$WORK_DIR/base
  export MODEL_CARD=$DEMO_CARD INIT_CHECKPOINT=$BASE/$(cat "$BASE/train.done") DATA_DIR=$BASE/data
  export VOCAB_DIR=${VOCAB_DIR:-$(sed -n 's/^demo: .* vocabulary from \(.*\), work dir .*/\1/p' "$WORK_DIR/base.log" | tail -n 1)}
  export BEAM_BATCH_SIZE=${BEAM_BATCH_SIZE:-16}
  steps=${SWEEP_DEMO_STEPS:-100}
  CELL_TRAIN_ARGS=(--device cpu --max_step "$steps" --lr 0.002 --warmup_step $((steps / 10)) --save_interval 1000000
                   --eval_interval "$steps" --log_interval $((steps / 5 > 0 ? steps / 5 : 1)))
  CELL_BEAM_ARGS=(--device cpu)
  while read -r rank targets dir; do
    run_cell "$rank" "$targets" "$dir"
  done < "$CELLS"
else
  if [ -z "$NGPU" ]; then
    NGPU=$(nvidia-smi -L 2>/dev/null | grep -c GPU || true)
    [ "$NGPU" -gt 0 ] || die "no GPU found (nvidia-smi -L); give --ngpu N, or run the CPU demo: bash scripts/sweep_e2e.sh --demo"
  fi
  echo "sweep: $(wc -l < "$CELLS") cells on $NGPU GPU(s), in $WORK_DIR" >&2
  # GPU g runs cells g, g + NGPU, g + 2 NGPU, ... one after the other.
  pids=()
  for ((gpu = 0; gpu < NGPU; gpu++)); do
    (
      status=0
      index=0
      while read -r rank targets dir; do
        if [ $((index % NGPU)) = "$gpu" ]; then run_cell "$rank" "$targets" "$dir" "$gpu" || status=1; fi
        index=$((index + 1))
      done < "$CELLS"
      exit $status
    ) &
    pids+=($!)
  done
  failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  [ "$failed" = 0 ] || echo "sweep: some cells failed (their sweep.log says why); the table shows the others" >&2
fi

"$PY" "$REPO_DIR/scripts/sweep_table.py" --cells "$CELLS" --output "$WORK_DIR/sweep.md" --plot "$WORK_DIR/sweep.png" \
  --note "$([ "$DEMO" = 1 ] && echo "Offline demo: LoRA on a ${DEMO_CARD} fully fine-tuned from random weights (not GPT-2); the scores show that the sweep works, not the paper's numbers." || echo "GPT-2 $MODEL, the E2E recipe of train.sh / beam.sh with --lora_dim R --lora_targets T${EXTRA[*]:+ and ${EXTRA[*]}}.")"
echo "sweep: done; the table in $WORK_DIR/sweep.md, the plot in $WORK_DIR/sweep.png" >&2
