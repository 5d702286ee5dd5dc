#!/bin/bash
# issue #21 item 7: one seed, ieee13_small; GradMAP 100 s, MARL variants 1000 s (10x), two at a time
cd /work/main
OUT=runs/issue21
S=scenarios/ieee13_small.yaml
COMMON="-o learner.params.budget_iterations=null -o learner.params.validation_interval_iterations=null"
PRACTICE="-o learner.params.reward_network=difference -o learner.params.dual_ascent=true -o learner.params.reward_global=0 -o learner.params.days_per_batch=16 -o learner.params.epochs=10 -o learner.params.minibatches=1 -o learner.params.learning_rate=7e-4 -o learner.params.critic_learning_rate=7e-4 -o learner.params.lr_annealing=true -o learner.params.value_normalisation=running -o learner.params.max_grad_norm=10 -o learner.params.hidden_sizes=[64,64] -o learner.params.critic_hidden_sizes=[64,64]"
run() { # core name args...
  local core=$1 name=$2; shift 2
  OMP_NUM_THREADS=1 taskset -c $core .venv/bin/gridflex run $S $COMMON "$@" --out $OUT/$name --force > $OUT/$name.log 2>&1
}
(
  run 0 gradmap -o learner.type=gradmap -o learner.params.budget_seconds=100 -o learner.params.validation_interval_s=5
  run 0 ippo_independent -o learner.type=ippo $PRACTICE -o learner.params.shared=false -o learner.params.budget_seconds=1000 -o learner.params.validation_interval_s=50
  run 0 mappo_shared -o learner.type=mappo -o learner.params.budget_seconds=1000 -o learner.params.validation_interval_s=50
) &
(
  run 1 ippo_shared -o learner.type=ippo $PRACTICE -o learner.params.shared=true -o learner.params.budget_seconds=1000 -o learner.params.validation_interval_s=50
  run 1 mappo_independent -o learner.type=mappo -o learner.params.shared=false -o learner.params.budget_seconds=1000 -o learner.params.validation_interval_s=50
) &
wait
