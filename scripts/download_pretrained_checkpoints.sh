#!/usr/bin/env bash
# Downloads the GPT-2 checkpoints the experiments start from, and the GPT-2 vocabulary:
#   bash scripts/download_pretrained_checkpoints.sh [sm|md|lg|all] [--format bin|safetensors] [--dir DIR] [--force]
# into pretrained_checkpoints/ under the original's names (gpt2-pytorch_model.bin, gpt2-medium-pytorch_model.bin,
# gpt2-large-pytorch_model.bin) plus vocab.json and merges.txt (what --vocab pretrained_checkpoints reads).
# Sources: the Hugging Face hub repositories openai-community/gpt2{,-medium,-large}. LORANLG_HUB_URL (or
# HF_ENDPOINT) replaces https://huggingface.co, e.g. with a mirror. Interrupted downloads resume from
# <file>.part when run again; each file is checked against its size and the hub's checksum before it gets
# its final name. Offline, the error lists the URLs to fetch by hand and where to put them.
# PYTHON picks the interpreter (default .venv/bin/python, else python3). Default: all three sizes.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
# The repository's .venv (scripts/setup.sh) when there is one; PYTHON overrides.
PY=${PYTHON:-$(if [ -x "$REPO/.venv/bin/python" ]; then echo "$REPO/.venv/bin/python"; else echo python3; fi)}
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  echo
  PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m loranlg.download checkpoints --help
fi
has_dir=0
for arg in "$@"; do [[ $arg == --dir || $arg == --dir=* ]] && has_dir=1; done
extra=()
(( has_dir )) || extra=(--dir "$REPO/pretrained_checkpoints")
echo "downloading pretrained model checkpoints..." >&2
PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m loranlg.download checkpoints "${extra[@]}" "$@"
echo "script complete!" >&2
