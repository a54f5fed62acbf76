#!/usr/bin/env bash
# The E2E run stage: scripts/run.sh with --task e2e (its --help says everything).
exec bash "$(dirname "$0")/run.sh" --task e2e "$@"
