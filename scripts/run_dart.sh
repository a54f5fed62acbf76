#!/usr/bin/env bash
# The whole DART chain: scripts/run.sh with --task dart (its --help says everything), e.g.
#   bash scripts/run_dart.sh --demo      offline on the CPU in minutes
exec bash "$(dirname "$0")/run.sh" --task dart "$@"
