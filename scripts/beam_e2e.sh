#!/usr/bin/env bash
# The E2E beam stage: scripts/beam.sh with --task e2e (its --help says everything).
exec bash "$(dirname "$0")/beam.sh" --task e2e "$@"
