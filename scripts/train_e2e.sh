#!/usr/bin/env bash
# The E2E train stage: scripts/train.sh with --task e2e (its --help says everything).
exec bash "$(dirname "$0")/train.sh" --task e2e "$@"
