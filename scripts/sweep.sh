#!/usr/bin/env bash
# Many independent runs, one per GPU at a time: seeds (the paper's ± intervals are over seeds) and the paper's
# questions "which weights, how small a rank" (its Tables 5-6 and the GPT-2 M rank study of its appendix). Each run
# is the whole chain of a task (train.sh, beam.sh, decode.sh, eval.sh) with --lora_dim R, --lora_targets T and
# --random_seed S; the sweep ends with a table of the cells, a plot, and the comparison with the paper.
#   bash scripts/sweep.sh [--task e2e|webnlg|dart] [--seeds 110,111,112] [--ranks 1,2,4,8,16,64]
#                         [--targets "q;v;q,v;q,k,v,o;all"] [--model md|lg] [--ngpu N] [--work_dir DIR] [--force]
#                         [-- extra gpt2_ft.py flags, e.g. --dora]
#        --task: default e2e (sweep_e2e.sh is sweep.sh --task e2e); --model: default md.
#   bash scripts/sweep.sh --task T --demo [...]   a tiny sweep offline on the CPU in minutes (below)
# --seeds S,S,...: a seed axis. Every cell runs once per seed, each run in its own directory; the tables show each
#        number as the mean ± the sample standard deviation (n - 1) over the seeds whose run finished, and name a
#        run that failed. With --seeds and no --ranks / --targets the grid is the paper's one cell, r 4 on q,v
#        (train.sh's recipe), so `--seeds 110,111,112` is three runs of the paper's recipe.
#        Without --seeds each cell runs once, with the recipe's seed 110, and the default grid is ranks
#        1,2,4,8,16,64 x targets "q;v;q,v;q,k,v,o;all".
# Target sets are separated by ';' (a set is --lora_targets' comma list). The runs are dealt to the GPUs in turn
# (run i to GPU i mod N), each GPU running its runs one after the other, each run alone on its GPU
# (CUDA_VISIBLE_DEVICES): --ngpu N runs N at once. The GPUs are those CUDA_VISIBLE_DEVICES lists when it is set
# (--ngpu N takes the first N), else 0..N-1; without --ngpu, all of them (nvidia-smi -L). A finished run (its scores
# exist, and the sweep did not see it fail) is skipped unless --force, so running the sweep again resumes it. The
# data and GPT-2 weights must be there (bash scripts/run.sh --task T makes them, or create_datasets.sh and
# download_pretrained_checkpoints.sh).
# Writes WORK_DIR/r{R}_{targets}/ (a cell's run directory: model.*.pt, metrics.jsonl, scores, sweep.log, ...) or,
#        with --seeds, WORK_DIR/r{R}_{targets}/seed{S}/ (one per seed); a run that fails keeps its sweep.log and a
#        sweep.failed naming the stage. Then WORK_DIR/sweep.md (a row per cell: trainable parameters, validation
#        loss, the task's scores; with seeds, mean ± std and the count of finished seeds), WORK_DIR/results.md
#        (each cell beside the paper's rows with their ± intervals; md and lg only) and WORK_DIR/sweep.png (BLEU and
#        validation loss against the rank, a line per target set). WORK_DIR defaults to
#        trained_models/GPT2_M/{task}_sweep (GPT2_L for lg). Exit status 1 when a run failed (after the tables).
# --demo: the offline demo's data and a small model (run.sh --demo: DEMO_CARD, default gpt2.tiny, fully fine-tuned
#        from random weights, in WORK_DIR/base) stand in for the pretrained GPT-2; each run then trains LoRA on it
#        on the CPU for SWEEP_DEMO_STEPS steps (default 100) and decodes SWEEP_DEMO_CONTEXTS test inputs (default
#        30), one run after the other. Default grid ranks 1,4 x targets "q,v;all" (with --seeds: r 4, q,v);
#        DEMO_STEPS (the base model's steps, default 300) as for run.sh. WORK_DIR defaults to
#        trained_models/demo/{task}_sweep. The scores show the sweep works, not the paper's numbers.
set -euo pipefail
REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$(if [ -x "$REPO_DIR/.venv/bin/python" ]; then echo "$REPO_DIR/.venv/bin/python"; else echo python3; fi)}

die() {
  echo "error: $*" >&2
  exit 2
}

TASK=${TASK:-e2e} DEMO=0 FORCE_FLAG=() MODEL=${MODEL:-md} RANKS="" TARGET_SETS="" SEEDS="" NGPU=${NGPU:-}
WORK_DIR=${WORK_DIR:-} EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in --task|--seeds|--ranks|--targets|--model|--ngpu|--work_dir|--work-dir)
    [ $# -ge 2 ] || die "$1 needs a value (see --help)" ;; esac
  case "$1" in
    --task) TASK=$2; shift 2 ;;
    --seeds) SEEDS=$2; shift 2 ;;
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
case "$TASK" in e2e) TASK_NAME=E2E ;; webnlg) TASK_NAME=WebNLG ;; dart) TASK_NAME=DART ;;
  *) die "--task must be e2e, webnlg or dart (got '$TASK')" ;; esac
case "$MODEL" in md) SIZE=GPT2_M ;; lg) SIZE=GPT2_L ;; sm) SIZE=GPT2_S ;; *) die "--model must be sm, md or lg" ;; esac

# --seeds: whole numbers, each once; the seed is then the sweep's to set.
SEED_LIST=(-)
if [ -n "$SEEDS" ]; then
  [[ "$SEEDS" =~ ^[0-9]{1,18}(,[0-9]{1,18})*$ ]] \
    || die "--seeds takes a comma list of whole numbers below 10^18, e.g. 110,111,112 (got '$SEEDS')"
  IFS=, read -r -a SEED_LIST <<< "$SEEDS"
  repeated=$(printf '%s\n' "${SEED_LIST[@]}" | sort | uniq -d | head -n 1)
  [ -z "$repeated" ] || die "--seeds names seed $repeated twice (got '$SEEDS')"
  for arg in "${EXTRA[@]}"; do
    case "$arg" in --random_seed|--random_seed=*) die "--seeds sets each run's --random_seed; drop it after --" ;; esac
  done
  RANKS=${RANKS:-4}
  TARGET_SETS=${TARGET_SETS:-q,v}
fi
if [ "$DEMO" = 1 ]; then
  RANKS=${RANKS:-1,4}
  TARGET_SETS=${TARGET_SETS:-q,v;all}
  WORK_DIR=${WORK_DIR:-trained_models/demo/${TASK}_sweep}
else
  RANKS=${RANKS:-1,2,4,8,16,64}
  TARGET_SETS=${TARGET_SETS:-q;v;q,v;q,k,v,o;all}
  WORK_DIR=${WORK_DIR:-trained_models/$SIZE/${TASK}_sweep}
fi
case "$WORK_DIR" in /*) ;; *) WORK_DIR=$REPO_DIR/$WORK_DIR ;; esac
[[ "$RANKS" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--ranks takes a comma list of whole numbers (got '$RANKS')"
[[ -z "$NGPU" || "$NGPU" =~ ^[1-9][0-9]*$ ]] || die "--ngpu takes a whole number of GPUs, 1 or more (got '$NGPU')"
IFS=';' read -r -a TARGET_LIST <<< "$TARGET_SETS"
for targets in "${TARGET_LIST[@]}"; do  # checked by the flag's own parser, before any run
  PYTHONPATH="$REPO_DIR/src" "$PY" -c 'import sys; from loranlg.flags import parse_targets; parse_targets(sys.argv[1])' \
    "$targets" 2>/dev/null || die "--targets: '$targets' is not a list of q, k, v, o, fc, proj (or all)"
done
mkdir -p "$WORK_DIR"

# The runs, in table order: "R TARGETS SEED DIR" a line (SEED "-": the recipe's, no seed axis).
RUNS=$WORK_DIR/sweep.runs
: > "$RUNS"
for targets in "${TARGET_LIST[@]}"; do
  for rank in ${RANKS//,/ }; do
    for seed in "${SEED_LIST[@]}"; do
      dir=$WORK_DIR/r${rank}_${targets//,/}
      [ "$seed" = - ] || dir=$dir/seed$seed
      echo "$rank $targets $seed $dir" >> "$RUNS"
    done
  done
done

# The score files eval.sh writes last: a run that has them (and no sweep.failed) is finished.
case "$TASK" in e2e) SCORE_FILES=(scores.json) ;; webnlg) SCORE_FILES=(scores_unseen.json scores_seen.json scores_all.json) ;;
  dart) SCORE_FILES=(scores_all.json) ;; esac
finished() {
  local name
  [ ! -e "$1/sweep.failed" ] || return 1
  for name in "${SCORE_FILES[@]}"; do [ -s "$1/$name" ] || return 1; done
}

describe() {  # describe R TARGETS SEED: how the messages name a run
  if [ "$3" = - ]; then echo "r=$1 targets=$2"; else echo "r=$1 targets=$2 seed $3"; fi
}

# run_one R TARGETS SEED DIR [GPU]: the task's chain for one run, its output in DIR/sweep.log; a failure leaves
# DIR/sweep.failed naming the stage.
run_one() {
  local rank=$1 targets=$2 seed=$3 dir=$4 gpu=${5:-} stage
  # one process each, whatever NGPU / NNODES the environment holds (they are the sweep's, not the runs')
  local common=(--task "$TASK" --model "$MODEL" --work_dir "$dir" --lora_dim "$rank" --launcher python --ngpu 1
                --nnodes 1 "${FORCE_FLAG[@]}")
  local seed_args=()
  [ "$seed" = - ] || seed_args=(--random_seed "$seed")
  mkdir -p "$dir"
  rm -f "$dir/sweep.failed"
  echo "sweep: $(describe "$rank" "$targets" "$seed")${gpu:+ on GPU $gpu} -> $dir" >&2
  for stage in train beam decode eval; do
    local stage_args=()
    case "$stage" in
      train) stage_args=(-- --lora_targets "$targets" "${CELL_TRAIN_ARGS[@]}" "${EXTRA[@]}" "${seed_args[@]}") ;;
      beam) stage_args=(-- --lora_targets "$targets" "${CELL_BEAM_ARGS[@]}" "${VARIANT_ARGS[@]}") ;;
    esac
    if ! ( if [ -n "$gpu" ]; then export CUDA_VISIBLE_DEVICES=$gpu; fi
           bash "$REPO_DIR/scripts/$stage.sh" "${common[@]}" "${stage_args[@]}" ) >> "$dir/sweep.log" 2>&1; then
      echo "$stage" > "$dir/sweep.failed"
      echo "sweep: $(describe "$rank" "$targets" "$seed") failed in $stage; see $dir/sweep.log" >&2
      return 1
    fi
  done
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

# The runs still to do (all of them with --force), "R TARGETS SEED DIR" a line.
PENDING=$WORK_DIR/sweep.pending
: > "$PENDING"
while read -r rank targets seed dir; do
  if [ ${#FORCE_FLAG[@]} = 0 ] && finished "$dir"; then
    echo "sweep: $(describe "$rank" "$targets" "$seed") finished, skipped (--force redoes it): $dir" >&2
  else
    echo "$rank $targets $seed $dir" >> "$PENDING"
  fi
done < "$RUNS"

CELL_TRAIN_ARGS=() CELL_BEAM_ARGS=() FAILED=0
if [ "$DEMO" = 1 ]; then
  # The base model and the data: run.sh's demo (full fine-tuning of a small card from random weights).
  export DEMO_CARD=${DEMO_CARD:-gpt2.tiny} DEMO_STEPS=${DEMO_STEPS:-300}
  export DEMO_CONTEXTS=${SWEEP_DEMO_CONTEXTS:-30} DEMO_HOLDOUT=${DEMO_HOLDOUT:-20}
  echo "sweep demo: the base model ($DEMO_CARD, $DEMO_STEPS steps) in $WORK_DIR/base" >&2
  WORK_DIR=$WORK_DIR/base bash "$REPO_DIR/scripts/run.sh" --task "$TASK" --demo "${FORCE_FLAG[@]}" \
    > "$WORK_DIR/base.log" 2>&1 || die "sweep demo: the base run failed; see $WORK_DIR/base.log"
  BASE=$WORK_DIR/base
  export MODEL_CARD=$DEMO_CARD INIT_CHECKPOINT=$BASE/$(cat "$BASE/train.done") DATA_DIR=$BASE/data
  export VOCAB_DIR=${VOCAB_DIR:-$(sed -n 's/^demo: .* vocabulary from \(.*\), work dir .*/\1/p' "$WORK_DIR/base.log" | tail -n 1)}
  export BEAM_BATCH_SIZE=${BEAM_BATCH_SIZE:-16}
  steps=${SWEEP_DEMO_STEPS:-100}
  CELL_TRAIN_ARGS=(--device cpu --max_step "$steps" --lr 0.002 --warmup_step $((steps / 10)) --save_interval 1000000
                   --eval_interval "$steps" --log_interval $((steps / 5 > 0 ? steps / 5 : 1)))
  CELL_BEAM_ARGS=(--device cpu)
  while read -r rank targets seed dir; do
    run_one "$rank" "$targets" "$seed" "$dir" || FAILED=1
  done < "$PENDING"
else
  # The GPUs: CUDA_VISIBLE_DEVICES' list when set, else 0..N-1 (N: --ngpu, or what nvidia-smi lists).
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    IFS=, read -r -a GPUS <<< "$CUDA_VISIBLE_DEVICES"
  else
    count=${NGPU:-$(nvidia-smi -L 2>/dev/null | grep -c GPU || true)}
    [ "$count" -gt 0 ] || die "no GPU found (nvidia-smi -L); give --ngpu N, or run the CPU demo:" \
      "bash scripts/sweep.sh --task $TASK --demo"
    GPUS=()
    for ((gpu = 0; gpu < count; gpu++)); do GPUS+=("$gpu"); done
  fi
  NGPU=${NGPU:-${#GPUS[@]}}
  [ "$NGPU" -le ${#GPUS[@]} ] || die "--ngpu $NGPU, but CUDA_VISIBLE_DEVICES lists ${#GPUS[@]} GPU(s): $CUDA_VISIBLE_DEVICES"
  echo "sweep: $(wc -l < "$PENDING") of $(wc -l < "$RUNS") runs to do, on GPU(s) ${GPUS[*]:0:$NGPU}, in $WORK_DIR" >&2
  # GPU slot g runs the pending runs g, g + NGPU, g + 2 NGPU, ... one after the other.
  pids=()
  for ((slot = 0; slot < NGPU; slot++)); do
    (
      status=0 index=0
      while read -r rank targets seed dir; do
        if [ $((index % NGPU)) = "$slot" ]; then run_one "$rank" "$targets" "$seed" "$dir" "${GPUS[$slot]}" || status=1; fi
        index=$((index + 1))
      done < "$PENDING"
      exit $status
    ) &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || FAILED=1; done
fi
rm -f "$PENDING"

if [ "$DEMO" = 1 ]; then
  NOTE="Offline demo: LoRA on a ${DEMO_CARD} fully fine-tuned from random weights (not GPT-2); the scores show that the sweep works, not the paper's numbers."
else
  NOTE="GPT-2 $MODEL, the $TASK_NAME recipe of train.sh / beam.sh with --lora_dim R --lora_targets T${SEEDS:+ --random_seed S}${EXTRA[*]:+ and ${EXTRA[*]}}."
fi
RESULTS_ARGS=()
case "$MODEL" in md|lg) RESULTS_ARGS=(--results "$WORK_DIR/results.md" --model "$MODEL") ;; esac
"$PY" "$REPO_DIR/scripts/sweep_table.py" --runs "$RUNS" --task "$TASK" --output "$WORK_DIR/sweep.md" \
  --plot "$WORK_DIR/sweep.png" "${RESULTS_ARGS[@]}" --note "$NOTE"
echo "sweep: the table in $WORK_DIR/sweep.md, the plot in $WORK_DIR/sweep.png${RESULTS_ARGS[*]:+, the paper beside ours in $WORK_DIR/results.md}" >&2
if [ "$FAILED" = 1 ]; then
  echo "error: sweep: some runs failed (named under the table; each one's sweep.log says why); run the sweep" \
    "again to redo them" >&2
  exit 1
fi
