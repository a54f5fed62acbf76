# Sourced (not run) by the stage scripts train.sh, beam.sh, decode.sh, eval.sh and run.sh (and through them by
# the per-task names: train_e2e.sh ... run_e2e.sh, run_webnlg.sh, run_dart.sh).
# Settings shared by the stages. Every setting is a variable with a matching flag; the flag wins:
#   TASK         --task e2e|webnlg|dart   the data set and its recipe (default e2e; see "Recipes" below)
#   MODEL        --model md|lg|sm         GPT-2 size (default md)
#   NGPU         --ngpu N                 processes per node (default 1)
#   WORK_DIR     --work_dir DIR           run directory (default trained_models/GPT2_M/TASK for md, ..._L for lg)
#   FORCE=1      --force                  redo a stage whose outputs exist
#   LAUNCHER     --launcher torchrun|launch|python
#                                         torchrun, python -m torch.distributed.launch, or one plain process
#                                         (default: torchrun for several processes, python for one: torchrun
#                                         would start a second Python, about 1.5 s)
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT  (--nnodes --node_rank --master_addr --master_port) several nodes
#                                         (defaults 1, 0, 127.0.0.1, 29500; on one node torchrun runs --standalone,
#                                         on a free port, unless MASTER_PORT is set)
#   RDZV_TIMEOUT --rdzv_timeout S         with several nodes, how long a node waits for the others to join
#                                         (default torch's 600 s); past it the stage stops and says why
#   DATA_DIR     --data_dir DIR           the task's jsonl files (default data/e2e, data/webnlg_challenge_2017,
#                                         data/dart)
#   PRETRAINED_DIR --pretrained_dir DIR   GPT-2 weights and vocabulary (default pretrained_checkpoints)
#   VOCAB_DIR    --vocab DIR              GPT-2 vocabulary (default PRETRAINED_DIR)
#   INIT_CHECKPOINT --init_checkpoint F   base weights (default PRETRAINED_DIR/gpt2-medium-pytorch_model.bin
#                                         or -model.safetensors for md); "none" trains from scratch
#   MODEL_CARD   --model_card CARD        overrides the card MODEL implies (gpt2.md for md)
#   PRECISION    --precision fp32|bf16|fp16  passed to gpt2_ft.py and gpt2_beam.py when set
#   LORA_DIM     --lora_dim R             LoRA rank (default 4); 0 is full fine-tuning
#   CHECKPOINT   --checkpoint F           what beam search decodes (default: the one named by WORK_DIR/train.done),
#                                         e.g. a released LoRA file such as gpt2_md_lora_e2e.pt
#                                         (gpt2_md_lora_webnlg.pt, gpt2_md_lora_dart.pt, gpt2_lg_lora_*.pt)
#   PYTHON                                the interpreter (default .venv/bin/python when it exists, else python3)
#   TORCHINDUCTOR_CACHE_DIR               torch.compile's cache (default .cache/torchinductor): a run with the
#                                         same settings loads the kernels an earlier run compiled, also after
#                                         /tmp is cleared or on another node sharing the repository
# Relative paths are taken from the repository root (the scripts run from any directory).
# Anything after `--` goes to the stage's Python command as extra flags (a repeated flag overrides ours).
# Recipes (paper Table 11; a flag after -- changes one): every task trains with batch 8, lr 2e-4, 5 epochs,
# warmup 500, linear schedule, r 4, alpha 32, seed 110, and decodes with beam 10, no-repeat n-gram 4, eval_len 64;
#   e2e:    weight decay 0.01, LoRA dropout 0.1, label smoothing 0.1, length penalty 0.8 (the original README's;
#           the paper's table says 0.9); scored by eval/e2e/measure_scores.py (BLEU, NIST, METEOR, ROUGE-L, CIDEr)
#   webnlg: weight decay 0.01, LoRA dropout 0.1, label smoothing 0.1, length penalty 0.8; scored by
#           eval/GenerationEval/eval.py (BLEU, METEOR, TER) on the unseen, seen and all test categories
#   dart:   weight decay 0.0, LoRA dropout 0.0, label smoothing 0.0, length penalty 0.8; scored like webnlg (all)

set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The repository's .venv (scripts/setup.sh) when there is one; PYTHON overrides.
PY=${PYTHON:-$(if [ -x "$REPO_DIR/.venv/bin/python" ]; then echo "$REPO_DIR/.venv/bin/python"; else echo python3; fi)}
EXTRA_ARGS=()

# --help: the comment block at the top of the script, then the settings every stage shares (this file's).
usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  echo
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

die() {
  echo "error: $*" >&2
  exit 2
}

log() {
  echo "[$STAGE] $*" >&2
}

parse_common_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --task) TASK=$2; shift 2 ;;
      --model) MODEL=$2; shift 2 ;;
      --ngpu|--nproc_per_node) NGPU=$2; shift 2 ;;
      --work_dir|--work-dir) WORK_DIR=$2; shift 2 ;;
      --force) FORCE=1; shift ;;
      --launcher) LAUNCHER=$2; shift 2 ;;
      --nnodes) NNODES=$2; shift 2 ;;
      --node_rank|--node-rank) NODE_RANK=$2; shift 2 ;;
      --master_addr|--master-addr) MASTER_ADDR=$2; shift 2 ;;
      --master_port|--master-port) MASTER_PORT=$2; shift 2 ;;
      --rdzv_timeout|--rdzv-timeout) RDZV_TIMEOUT=$2; shift 2 ;;
      --data_dir|--data-dir) DATA_DIR=$2; shift 2 ;;
      --pretrained_dir|--pretrained-dir) PRETRAINED_DIR=$2; shift 2 ;;
      --vocab) VOCAB_DIR=$2; shift 2 ;;
      --init_checkpoint) INIT_CHECKPOINT=$2; shift 2 ;;
      --checkpoint) CHECKPOINT=$2; shift 2 ;;
      --model_card) MODEL_CARD=$2; shift 2 ;;
      --precision) PRECISION=$2; shift 2 ;;
      --lora_dim) LORA_DIM=$2; shift 2 ;;
      --demo) DEMO=1; shift ;;
      -h|--help) usage; exit 0 ;;
      --) shift; EXTRA_ARGS=("$@"); break ;;
      *) die "unknown option '$1' (see --help; flags for the Python command go after --)" ;;
    esac
  done
  resolve_settings
}

# The task's data folder and recipe (paper Table 11; the header's "Recipes").
task_settings() {
  TASK=${TASK:-e2e}
  case "$TASK" in
    e2e) TASK_NAME=E2E; DATA_NAME=e2e; WEIGHT_DECAY=0.01; LORA_DROPOUT=0.1; LABEL_SMOOTH=0.1; LENGTH_PENALTY=0.8
         PREDICT_SUFFIX=b10p08r4 ;;
    webnlg) TASK_NAME=WebNLG; DATA_NAME=webnlg_challenge_2017; WEIGHT_DECAY=0.01; LORA_DROPOUT=0.1; LABEL_SMOOTH=0.1
            LENGTH_PENALTY=0.8; PREDICT_SUFFIX=b10p08 ;;
    dart) TASK_NAME=DART; DATA_NAME=dart; WEIGHT_DECAY=0.0; LORA_DROPOUT=0.0; LABEL_SMOOTH=0.0; LENGTH_PENALTY=0.8
          PREDICT_SUFFIX=b10p08 ;;
    *) die "--task must be e2e, webnlg or dart (TASK=$TASK)" ;;
  esac
}

resolve_settings() {
  task_settings
  MODEL=${MODEL:-md}
  case "$MODEL" in
    sm) SIZE_NAME=gpt2; DEFAULT_WORK=trained_models/GPT2_S/$TASK ;;
    md) SIZE_NAME=gpt2-medium; DEFAULT_WORK=trained_models/GPT2_M/$TASK ;;
    lg) SIZE_NAME=gpt2-large; DEFAULT_WORK=trained_models/GPT2_L/$TASK ;;
    *) die "--model must be sm, md or lg (MODEL=$MODEL)" ;;
  esac
  MODEL_CARD=${MODEL_CARD:-gpt2.$MODEL}
  NGPU=${NGPU:-1}
  NNODES=${NNODES:-1}
  NODE_RANK=${NODE_RANK:-0}
  MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
  MASTER_PORT_GIVEN=${MASTER_PORT:-}
  MASTER_PORT=${MASTER_PORT:-29500}
  RDZV_TIMEOUT=${RDZV_TIMEOUT:-}
  LAUNCHER=${LAUNCHER:-}
  FORCE=${FORCE:-0}
  PRECISION=${PRECISION:-}
  PRECISION_ARGS=()
  if [ -n "$PRECISION" ]; then PRECISION_ARGS=(--precision "$PRECISION"); fi
  LORA_DIM=${LORA_DIM:-4}
  WORK_DIR_GIVEN=${WORK_DIR:+1}
  WORK_DIR=$(absolute "${WORK_DIR:-$DEFAULT_WORK}")
  DATA_DIR=$(absolute "${DATA_DIR:-data/$DATA_NAME}")
  PRETRAINED_DIR=$(absolute "${PRETRAINED_DIR:-pretrained_checkpoints}")
  TORCHINDUCTOR_CACHE_DIR=$(absolute "${TORCHINDUCTOR_CACHE_DIR:-.cache/torchinductor}")
  export TORCHINDUCTOR_CACHE_DIR
  VOCAB_GIVEN=${VOCAB_DIR:+1}
  VOCAB_DIR=$(absolute "${VOCAB_DIR:-$PRETRAINED_DIR}")
  if [ -z "${INIT_CHECKPOINT:-}" ]; then
    INIT_CHECKPOINT=$PRETRAINED_DIR/$SIZE_NAME-pytorch_model.bin
    if [ ! -f "$INIT_CHECKPOINT" ] && [ -f "$PRETRAINED_DIR/$SIZE_NAME-model.safetensors" ]; then
      INIT_CHECKPOINT=$PRETRAINED_DIR/$SIZE_NAME-model.safetensors
    fi
  elif [ "$INIT_CHECKPOINT" != none ]; then
    INIT_CHECKPOINT=$(absolute "$INIT_CHECKPOINT")
  fi
  case "$NGPU$NNODES$NODE_RANK$LORA_DIM$RDZV_TIMEOUT" in
    *[!0-9]*) die "--ngpu, --nnodes, --node_rank, --lora_dim and --rdzv_timeout take whole numbers" ;;
  esac
  [ "$NODE_RANK" -lt "$NNODES" ] || die "--node_rank must be below --nnodes (NODE_RANK=$NODE_RANK, NNODES=$NNODES)"
  if [ -z "$LAUNCHER" ]; then
    if [ "$((NGPU * NNODES))" = 1 ]; then LAUNCHER=python; else LAUNCHER=torchrun; fi
  fi
  case "$LAUNCHER" in torchrun|launch|python) ;; *) die "--launcher must be torchrun, launch or python" ;; esac
  if [ "$LAUNCHER" = python ] && [ "$((NGPU * NNODES))" -gt 1 ]; then
    die "--launcher python runs one process; use torchrun or launch for NGPU=$NGPU x NNODES=$NNODES"
  fi
}

# A path relative to the repository (the scripts run from any directory), made absolute.
absolute() {
  case "$1" in
    /*) echo "$1" ;;
    *) echo "$REPO_DIR/$1" ;;
  esac
}

# need_file PATH "how to make it": stop with a message naming the script that makes a missing input.
need_file() {
  [ -s "$1" ] || die "$STAGE: missing input $1 (make it with: $2)"
}

# already_done OUTPUT... [--after INPUT...]: true (and a message) when every output exists, none is older than
# an input that exists, and FORCE is not set. A stage whose inputs were remade (a new training) runs again.
already_done() {
  [ "$FORCE" = 1 ] && return 1
  local outputs=() path output
  while [ $# -gt 0 ] && [ "$1" != --after ]; do
    outputs+=("$1")
    shift
  done
  [ $# -gt 0 ] && shift
  for output in "${outputs[@]}"; do
    [ -s "$output" ] || return 1
    for path in "$@"; do
      if [ -e "$path" ] && [ "$path" -nt "$output" ]; then
        log "redoing: $path is newer than $output"
        return 1
      fi
    done
  done
  log "skipped: ${outputs[*]} exist (--force or FORCE=1 redoes it)"
  return 0
}

# launch SCRIPT ARGS...: the Python entry point under the chosen launcher.
launch() {
  local script=$REPO_DIR/src/$1
  shift
  local nodes=(--nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT")
  if [ -n "$RDZV_TIMEOUT" ]; then nodes+=(--rdzv_conf=timeout="$RDZV_TIMEOUT"); fi
  case "$LAUNCHER" in
    python) run "$PY" "$script" "$@" ;;
    torchrun)
      # One node: --standalone picks a free port, so two runs on one machine do not collide.
      if [ "$NNODES" = 1 ] && [ -z "${MASTER_PORT_GIVEN:-}" ]; then nodes=(--standalone --nnodes=1); fi
      run "$PY" -m torch.distributed.run --nproc_per_node="$NGPU" "${nodes[@]}" "$script" "$@" ;;
    launch) run "$PY" -m torch.distributed.launch --nproc_per_node="$NGPU" "${nodes[@]}" "$script" "$@" ;;
  esac
}

run() {
  log "running: $*"
  "$@"
}

# die_if_nodes_never_met LOG: after a failed launch, when LOG shows that torchrun's rendezvous timed out (a node
# missing, or started with another MASTER_ADDR / MASTER_PORT / NNODES), stop saying so in one line.
die_if_nodes_never_met() {
  local reason
  [ "$NNODES" -gt 1 ] || return 0
  reason=$(grep -o -m 1 'torch\.distributed\.Dist\(NetworkError\|StoreError\): .*' "$1" | sed 's/^[^:]*: //; s/\.$//') \
    || return 0
  die "$STAGE: node $NODE_RANK of $NNODES did not meet the other nodes at $MASTER_ADDR:$MASTER_PORT within" \
    "${RDZV_TIMEOUT:-600} s ($reason). Start every node with the same NNODES, MASTER_ADDR and MASTER_PORT (node" \
    "0's address, reachable from the others); RDZV_TIMEOUT (--rdzv_timeout) sets the wait"
}

# The command that runs a stage of this task, for messages: "bash scripts/train_e2e.sh", or
# "bash scripts/train.sh --task dart".
stage_command() {
  if [ "$TASK" = e2e ]; then echo "bash scripts/$1_e2e.sh"; else echo "bash scripts/$1.sh --task $TASK"; fi
}

# The checkpoint that train.sh finished with (CHECKPOINT overrides, e.g. a released LoRA file).
final_checkpoint() {
  if [ -n "${CHECKPOINT:-}" ]; then
    absolute "$CHECKPOINT"
    return
  fi
  local marker=$WORK_DIR/train.done
  if [ ! -s "$marker" ] && [ "$NODE_RANK" != 0 ]; then
    die "$STAGE: node $NODE_RANK holds no checkpoint (node 0 wrote them): set CHECKPOINT to a copy of node 0's" \
      "model file, or run this stage on node 0 alone (NNODES=1)"
  fi
  [ -s "$marker" ] || die "$STAGE: no finished training in $WORK_DIR (no train.done; make it with:" \
    "$(stage_command train), or set CHECKPOINT=path/to/model.pt)"
  echo "$WORK_DIR/$(cat "$marker")"
}

# predict.{step}.b10p08r4.jsonl (E2E) or predict.{step}.b10p08.jsonl (WebNLG, DART) as in the original README;
# {step} is the checkpoint's name without model./.pt.
predict_file() {
  local name
  name=$(basename "$1" .pt)
  echo "$WORK_DIR/predict.${name#model.}.$PREDICT_SUFFIX.jsonl"
}


# WebNLG is scored on the unseen, seen and all test categories (the paper's U/S/A); DART on all.
generation_subsets() {
  if [ "$TASK" = webnlg ]; then echo "unseen seen all"; else echo all; fi
}

# WORK_DIR/references_<task>[_<subset>] and hypothesis_<task>[_<subset>]: the original README's names for all.
subset_suffix() {
  if [ "$1" = all ]; then echo "$TASK"; else echo "${TASK}_$1"; fi
}
references_dir() {
  echo "$WORK_DIR/references_$(subset_suffix "$1")"
}
hypothesis_file() {
  echo "$WORK_DIR/hypothesis_$(subset_suffix "$1")"
}

# Whether this machine has an NVIDIA GPU (asked without starting Python).
have_gpu() {
  [ -e /dev/nvidia0 ] || { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; }
}

# need_gpu WHAT COST: a paper-size card (gpt2.sm/md/lg) on a machine without a GPU stops here, saying what it would
# cost, unless `--device cpu` is among the extra flags.
need_gpu() {
  case "$MODEL_CARD" in gpt2.sm|gpt2.md|gpt2.lg) ;; *) return 0 ;; esac
  local arg previous=""
  for arg in "${EXTRA_ARGS[@]}"; do
    [ "$previous $arg" = "--device cpu" ] || [ "$arg" = --device=cpu ] && return 0
    previous=$arg
  done
  have_gpu && return 0
  die "$STAGE: no GPU on this machine: $1 $MODEL_CARD on the CPU would take $2. Run it on a GPU machine, force it" \
    "with: $(stage_command "$STAGE") -- --device cpu, or run the offline demo (a small model, minutes):" \
    "bash scripts/demo.sh $TASK"
}
