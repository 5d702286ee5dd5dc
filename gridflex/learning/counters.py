"""The work a run spends, counted in one place.

Every environment owns one :class:`WorkCounters`; the environment counts its power-flow solves,
learners count the environment gradients they take and the optimiser steps they make. Work done
to *judge* a policy (validation, test days, targets) is not training work: it runs inside
:meth:`WorkCounters.paused`, so nothing outside has to reset a counter afterwards.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Iterator

COUNTER_NAMES = ("power_flow_solves", "env_gradient_evaluations", "policy_updates")


@dataclass
class WorkCounters:
    """Training work so far.

    * ``power_flow_solves``: AC (or linearised) power-flow samples solved for training, one per
      day-step (a tap controller's extra solves included);
    * ``env_gradient_evaluations``: backward passes through the environment (the expensive
      gradients GradMAP reuses);
    * ``policy_updates``: optimiser steps on the agents' parameters (warm start included).
    """

    power_flow_solves: int = 0
    env_gradient_evaluations: int = 0
    policy_updates: int = 0
    _paused: int = field(default=0, repr=False, compare=False)

    def count_solves(self, n: int) -> None:
        """Add ``n`` solved samples, unless counting is paused."""
        if not self._paused:
            self.power_flow_solves += int(n)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Solves inside the block are not training work (validation, evaluation, targets)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def as_dict(self) -> dict[str, int]:
        """The three counters, e.g. for a checkpoint or ``metrics.json``."""
        return {k: int(v) for k, v in asdict(self).items() if k in COUNTER_NAMES}

    def load(self, values: dict[str, int]) -> None:
        """Restore counters saved with :meth:`as_dict` (a resumed run keeps its work counted)."""
        for name in COUNTER_NAMES:
            setattr(self, name, int(values[name]))
