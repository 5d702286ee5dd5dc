"""``ippo``: independent PPO actors and critics for every agent (docs/design.md §3 baselines).

Modules, one job each: :mod:`.agents` (stacked per-agent Gaussian actors and critics, the
squashing and its log-probability), :mod:`.ppo` (GAE and the clipped update, vectorised over
agents), :mod:`.rewards` (the shaped per-agent reward from a rollout), :mod:`.learner` (the
learner on :mod:`gridflex.learning.training`'s loop), :mod:`.options` (the variants: network
reward, PPO-Lagrangian duals, sharing, schedules, warm start), :mod:`.credit` (credit-aligned
network rewards and the credit-share diagnostic), :mod:`.mappo` (``mappo``: the centralised
critic). Both learners are registered here. Documentation: docs/ippo.md.
"""

from __future__ import annotations

from gridflex.plugins.hookspecs import hookimpl

from .learner import LEARNERS
from .mappo import LEARNERS as MAPPO_LEARNERS


@hookimpl
def gridflex_register_learners(register) -> None:
    for cls in (*LEARNERS, *MAPPO_LEARNERS):
        register(cls)
