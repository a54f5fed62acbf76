#!/usr/bin/env bash
# The E2E eval stage: scripts/eval.sh with --task e2e (its --help says everything).
exec bash "$(dirname "$0")/eval.sh" --task e2e "$@"
