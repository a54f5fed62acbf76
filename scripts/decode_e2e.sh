#!/usr/bin/env bash
# The E2E decode stage: scripts/decode.sh with --task e2e (its --help says everything).
exec bash "$(dirname "$0")/decode.sh" --task e2e "$@"
