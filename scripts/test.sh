#!/usr/bin/env bash
# The test suite, with its own setup: .venv (created and filled when missing, as scripts/setup.sh --dev does),
# then pytest. CI runs exactly this.
#   bash scripts/test.sh [pytest arguments]      e.g. bash scripts/test.sh -x tests/test_beam.py
# The tests read the shared data (E2E valid/test, WebNLG and DART dev, the vocabulary, the evaluators' cases) from
# $LORANLG_SHARED, default ../shared beside the repository; tests that need it are skipped without it.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
bash scripts/setup.sh --dev
if [ -z "${LORANLG_SHARED:-}" ] && [ -d ../shared ]; then
  LORANLG_SHARED=$(cd ../shared && pwd)
  export LORANLG_SHARED
fi
exec "${LORANLG_VENV:-.venv}/bin/python" -m pytest -q "$@"
