#!/usr/bin/env bash
# The whole WebNLG 2017 chain: scripts/run.sh with --task webnlg (its --help says everything), e.g.
#   bash scripts/run_webnlg.sh --demo      offline on the CPU in minutes
exec bash "$(dirname "$0")/run.sh" --task webnlg "$@"
