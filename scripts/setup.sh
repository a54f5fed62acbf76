#!/usr/bin/env bash
# Sets everything up on a fresh Linux machine with Python 3.10+ (and a JRE for METEOR / the PTB tokenizer), in a
# virtual environment inside the repository, .venv (created when missing; the system Python is left alone):
#   bash scripts/setup.sh            torch, then requirements.txt
#   bash scripts/setup.sh --dev      also what only the tests need (requirements-dev.txt)
# PYTHON picks the interpreter the environment is made from (default python3). TORCH_VERSION picks the PyTorch
# release installed when the environment has none (default 2.13.0; any torch >= 2.4 works); an existing torch is
# kept. LORANLG_VENV=DIR puts the environment elsewhere. A second run installs nothing unless requirements changed.
# The scripts and commands use .venv/bin/python when it exists (PYTHON=... overrides).
set -euo pipefail
DEV=0
for arg in "$@"; do
  case $arg in
    --dev) DEV=1 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option '$arg' (usage: bash scripts/setup.sh [--dev])" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
BASE_PY=${PYTHON:-python3}
VENV=${LORANLG_VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

command -v "$BASE_PY" >/dev/null 2>&1 || { echo "error: no '$BASE_PY' on PATH: LoRA-NLG needs Python 3.10+ (set PYTHON=...)" >&2; exit 1; }
if ! "$BASE_PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "error: LoRA-NLG needs Python 3.10 or newer; $("$BASE_PY" --version 2>&1) found (set PYTHON=...)" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating the virtual environment $VENV"
  "$BASE_PY" -m venv "$VENV" || { echo "error: '$BASE_PY -m venv' failed: install the venv module" \
    "(Debian/Ubuntu: sudo apt-get install python3-venv) or set PYTHON to another Python 3.10+" >&2; exit 1; }
fi
PY=$VENV/bin/python

# What an install holds, as a checksum of its requirements: a second run with the same one skips pip.
install_key() {  # install_key DEV
  { echo "torch=$TORCH_VERSION"; cat requirements.txt; if [ "$1" = 1 ]; then cat requirements-dev.txt; fi; } \
    | sha256sum | cut -d' ' -f1
}
stamp=$VENV/.loranlg-installed
if grep -qsx "$(install_key "$DEV")" "$stamp"; then
  echo "setup: $VENV is up to date"
else
  # torch first: installed as a dependency of something else, pip could pick a different build.
  if "$PY" -c 'import torch' 2>/dev/null; then
    echo "setup: keeping torch $("$PY" -c 'import torch; print(torch.__version__)')"
  else
    echo "setup: installing torch==$TORCH_VERSION (a few minutes the first time)"
    "$PY" -m pip install -q "torch==$TORCH_VERSION"
  fi
  echo "setup: installing requirements.txt"
  "$PY" -m pip install -q -r requirements.txt
  if [ "$DEV" = 1 ]; then
    echo "setup: installing requirements-dev.txt"
    "$PY" -m pip install -q -r requirements-dev.txt
  fi
  install_key "$DEV" >> "$stamp"
  [ "$DEV" = 0 ] || install_key 0 >> "$stamp"  # a --dev install holds a plain one
fi
if ! command -v java >/dev/null 2>&1; then
  echo "setup: warning: no 'java' on PATH. METEOR and the PTB tokenizer of the evaluators need a JRE" >&2
  echo "       (Debian/Ubuntu: sudo apt-get install default-jre-headless)." >&2
fi
echo "setup: done ($PY)"
