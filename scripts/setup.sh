#!/usr/bin/env bash
# Sets everything up on a fresh Linux machine with Python 3.10+ (and a JRE for METEOR / the PTB tokenizer):
#   bash scripts/setup.sh
# PYTHON picks the interpreter (default python3; use a venv or conda env you have activated).
# TORCH_VERSION picks the PyTorch release installed when none is there (default 2.13.0); an existing torch
# is kept.
#   bash scripts/setup.sh --dev      also what only the tests need: Triton, when this torch came without it
#                                    (CPU builds), for the tests of our GPU kernel in Triton's interpreter
set -euo pipefail
DEV=0
for arg in "$@"; do
  case $arg in
    --dev) DEV=1 ;;
    *) echo "usage: bash scripts/setup.sh [--dev]" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "error: LoRA-NLG needs Python 3.10 or newer; $("$PY" --version 2>&1) found (set PYTHON=...)" >&2
  exit 1
fi
# torch first: installed as a dependency of something else, pip could pick a different build.
if "$PY" -c 'import torch' 2>/dev/null; then
  echo "setup: keeping torch $("$PY" -c 'import torch; print(torch.__version__)')"
else
  echo "setup: installing torch==$TORCH_VERSION"
  "$PY" -m pip install "torch==$TORCH_VERSION"
fi
"$PY" -m pip install -r requirements.txt
if [ "$DEV" = 1 ] && ! "$PY" -c 'import triton' 2>/dev/null; then
  # Only where torch has no Triton of its own: a CUDA build pins the version it needs.
  echo "setup: installing triton (for the kernel tests; about 290 MB)"
  "$PY" -m pip install triton
fi
if ! command -v java >/dev/null 2>&1; then
  echo "setup: warning: no 'java' on PATH. METEOR and the PTB tokenizer of the E2E evaluator need a JRE" >&2
  echo "       (Debian/Ubuntu: sudo apt-get install default-jre-headless)." >&2
fi
echo "setup: done"
