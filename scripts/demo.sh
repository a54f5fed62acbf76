#!/usr/bin/env bash
# The main job, offline on the CPU, with its own setup: .venv (created and filled when missing, as
# scripts/setup.sh does), then the whole chain of one task with a small model: data, training, beam search,
# decoding, the scores and the comparison with the paper (results.md, results.png, losses.png).
#   bash scripts/demo.sh [e2e|webnlg|dart]       default e2e; a few minutes on 2 cores
# Inputs are found by themselves: $LORANLG_SHARED (default ../shared beside the repository), then data/ and
# pretrained_checkpoints/, else the few small files needed are downloaded (the vocabulary; E2E valid and test).
# Every setting of scripts/run.sh --demo applies (see bash scripts/run.sh --help), e.g. DEMO_STEPS=100.
set -euo pipefail
cd "$(dirname "$0")/.."
TASK=${1:-e2e}
case "$TASK" in
  -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  e2e|webnlg|dart) ;;
  *) echo "error: unknown task '$TASK' (expected e2e, webnlg or dart)" >&2; exit 2 ;;
esac
bash scripts/setup.sh
exec bash scripts/run.sh --task "$TASK" --demo
