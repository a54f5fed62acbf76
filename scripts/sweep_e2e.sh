#!/usr/bin/env bash
# The E2E sweep: scripts/sweep.sh with --task e2e (its --help says everything), e.g.
#   bash scripts/sweep_e2e.sh --seeds 110,111,112 [--ngpu N]     the paper's recipe once per seed, mean ± std
#   bash scripts/sweep_e2e.sh [--ranks 1,2,4,8,16,64] [--targets "q;v;q,v;q,k,v,o;all"]   the rank x targets grid
exec bash "$(dirname "$0")/sweep.sh" --task e2e "$@"
