"""The learning floor: the batched environment, the agents' policies, training and its measures.

``environment`` steps every device of the fleet and solves the AC power flow for a batch of days;
``policies`` holds one network per agent, evaluated as a stacked batch; ``training`` is the loop
every trainable learner runs in (budgets, validation, checkpoints); ``metrics`` and ``targets``
score a rollout and decide when a target is met; ``authority`` bounds what the fleet can reach.
``crash_safety`` stops training cleanly on Ctrl-C and reads policy files safely; ``rewards`` is the
shaped per-agent reward (IPPO, PettingZoo); ``agent_ids`` names the agents; ``parallel_env`` is the
PettingZoo adapter (optional extra, imported by nothing else).
"""
