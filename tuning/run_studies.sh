#!/usr/bin/env bash
# The equal-budget tuning studies of the five gradient/MARL learners (docs/tuning.md, "The
# committed studies"). Every learner gets the same budget, fixed before the first trial:
#   TRIALS trials x 2 scenario files x 1 seed x BUDGET_S s of training clock (CPU time, one thread)
# Writes tuning/studies/<learner>/ (summary.json, PNGs, the journal) and tuning/tuned/<learner>.yaml.
# Run from the repository root with gridflex installed (python3 dev.py test sets up .venv).
set -euo pipefail
GRIDFLEX=${GRIDFLEX:-.venv/bin/gridflex}
TRIALS=${TRIALS:-8}          # finished trials per study (no pruning: every trial spends its full budget)
STARTUP=${STARTUP:-4}        # the defaults + 3 random trials before TPE models the space
BUDGET_S=${BUDGET_S:-20}     # training clock per scenario and seed (s of CPU time)
SEED=${SEED:-100}            # learner seed of every trial: outside the comparison's seeds 0-9
JOBS=${JOBS:-2}              # worker processes on this machine (one per core, one thread each)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
for learner in ${LEARNERS:-gradmap gradmap_e1 ssl_penalty ssl_pd ippo}; do
  mkdir -p tuning/studies tuning/tuned
  "$GRIDFLEX" tune scenarios/ieee13_small.yaml scenarios/ieee123_1000.yaml --learner "$learner" \
    --trials "$TRIALS" --budget-s "$BUDGET_S" --seeds "$SEED" --jobs "$JOBS" --pruner none \
    --startup-trials "$STARTUP" --study "tuned-$learner" \
    --storage "journal:tuning/studies/$learner.journal" --out "tuning/studies/$learner" \
    -o learner.params.training_clock=cpu
  cp "tuning/studies/$learner/tuned.yaml" "tuning/tuned/$learner.yaml"
done
