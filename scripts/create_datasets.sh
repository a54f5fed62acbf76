#!/usr/bin/env bash
# Builds the datasets: raw files -> <split>_formatted.jsonl (text) -> <split>.jsonl (GPT-2 ids, with --add_bos
# --add_eos as the original):
#   bash scripts/create_datasets.sh [--datasets e2e,webnlg,dart] [--splits train,valid,test] [--from DIR]
#                                   [--vocab DIR] [--data DIR]
#   --datasets  which datasets (default e2e)
#   --splits    which splits (default train,valid,test)
#   --from DIR  a folder in the original's data layout (DIR/e2e/valid.txt, DIR/webnlg_challenge_2017/dev.json,
#               DIR/dart/dart-v1.1.1-full-dev.json, ...) to copy missing raw files from; or per dataset
#               E2E_SOURCE_DIR / WEBNLG_SOURCE_DIR / DART_SOURCE_DIR pointing at the dataset's own folder
#   --vocab DIR GPT-2 vocabulary (encoder.json + vocab.bpe, or vocab.json + merges.txt); default
#               $LORANLG_VOCAB or pretrained_checkpoints/; when missing, fetched there from the hub
#               ($LORANLG_HUB_URL replaces https://huggingface.co)
#   --data DIR  where datasets are built (default data/ of the repository)
# Raw files are read from DATA/e2e/{train,valid,test}.txt, DATA/webnlg_challenge_2017/{train,dev,test}.json and
# DATA/dart/dart-v1.1.1-full-{train,dev,test}.json. A missing one is copied from the source folder, else
# downloaded from examples/NLG/data/ of the microsoft/LoRA repository on GitHub ($LORANLG_DATA_URL replaces
# https://raw.githubusercontent.com/microsoft/LoRA/main/examples/NLG). Copied or downloaded E2E files must have
# the published line counts (train 42,061, valid 4,672, test 4,693); E2E_TRAIN_SHA256 / E2E_VALID_SHA256 /
# E2E_TEST_SHA256 add a checksum check. A split that cannot be had is named with how to provide it; the other
# splits are still built and the script exits non-zero. PYTHON: the interpreter (default .venv/bin/python, else python3).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
# The repository's .venv (scripts/setup.sh) when there is one; PYTHON overrides.
PY=${PYTHON:-$(if [ -x "$REPO/.venv/bin/python" ]; then echo "$REPO/.venv/bin/python"; else echo python3; fi)}
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
DATA_URL=${LORANLG_DATA_URL:-https://raw.githubusercontent.com/microsoft/LoRA/main/examples/NLG}
DATASETS=e2e
SPLITS=train,valid,test
SOURCE=${LORANLG_DATA_SOURCE:-}
VOCAB=${LORANLG_VOCAB:-}
DATA=$REPO/data

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "error: $*" >&2; exit 2; }
while (( $# )); do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --datasets|--splits|--from|--vocab|--data)
      (( $# >= 2 )) || die "$1 needs a value (see --help)"
      case $1 in
        --datasets) DATASETS=$2 ;; --splits) SPLITS=$2 ;; --from) SOURCE=$2 ;; --vocab) VOCAB=$2 ;; --data) DATA=$2 ;;
      esac
      shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

for split in ${SPLITS//,/ }; do
  [[ $split == train || $split == valid || $split == test ]] || die "unknown split '$split' (expected train, valid, test)"
done
for dataset in ${DATASETS//,/ }; do
  [[ $dataset == e2e || $dataset == webnlg || $dataset == dart ]] || die "unknown dataset '$dataset' (expected e2e, webnlg, dart)"
done

VOCAB=${VOCAB:-$REPO/pretrained_checkpoints}
if ! [[ -f $VOCAB/encoder.json && -f $VOCAB/vocab.bpe || -f $VOCAB/vocab.json && -f $VOCAB/merges.txt ]]; then
  echo "no GPT-2 vocabulary in $VOCAB (encoder.json + vocab.bpe, or vocab.json + merges.txt): fetching it" >&2
  "$PY" -m loranlg.download vocab --dir "$VOCAB" \
    || die "$VOCAB: no GPT-2 vocabulary (expected encoder.json + vocab.bpe, or vocab.json + merges.txt); put it there, or give --vocab DIR"
fi

# raw file name of a split, per dataset
raw_name() {
  local dataset=$1 split=$2 dev=$2
  [[ $split == valid ]] && dev=dev
  case $dataset in
    e2e) echo "$split.txt" ;;
    webnlg) echo "$dev.json" ;;
    dart) echo "dart-v1.1.1-full-$dev.json" ;;
  esac
}

failed=()
for dataset in ${DATASETS//,/ }; do
  case $dataset in
    e2e) folder=e2e; source_dir=${E2E_SOURCE_DIR:-${SOURCE:+$SOURCE/e2e}} ;;
    webnlg) folder=webnlg_challenge_2017; source_dir=${WEBNLG_SOURCE_DIR:-${SOURCE:+$SOURCE/webnlg_challenge_2017}} ;;
    dart) folder=dart; source_dir=${DART_SOURCE_DIR:-${SOURCE:+$SOURCE/dart}} ;;
  esac
  out=$DATA/$folder
  echo "creating $dataset datasets in $out ..." >&2
  for split in ${SPLITS//,/ }; do
    echo "$split..." >&2
    raw=$out/$(raw_name "$dataset" "$split")
    fetch=("$PY" -m loranlg.download raw --dest "$raw" --url "$DATA_URL/data/$folder/$(raw_name "$dataset" "$split")")
    [[ -n $source_dir ]] && fetch+=(--from "$source_dir")
    if [[ $dataset == e2e ]]; then
      case $split in train) lines=42061 ;; valid) lines=4672 ;; test) lines=4693 ;; esac
      fetch+=(--lines "$lines")
      checksum_var=E2E_${split^^}_SHA256
      [[ -n ${!checksum_var:-} ]] && fetch+=(--sha256 "${!checksum_var}")
    fi
    if ! "${fetch[@]}"; then
      failed+=("$dataset/$split")
      continue
    fi
    "$PY" "$REPO/src/format_converting_$dataset.py" "$raw" "$out/${split}_formatted.jsonl" || { failed+=("$dataset/$split"); continue; }
    "$PY" "$REPO/src/gpt2_encode.py" --vocab "$VOCAB" --input "$out/${split}_formatted.jsonl" \
      --output "$out/$split.jsonl" --add_bos --add_eos || { failed+=("$dataset/$split"); continue; }
  done
done

if (( ${#failed[@]} )); then
  echo "error: not built: ${failed[*]} (see the messages above for what to provide)" >&2
  exit 1
fi
echo "script complete!" >&2
