"""The objective of one trial: a censored time to target, per (scenario, seed), validation only.

For every scenario file given and every seed, the trial's learner params (its search space) are
applied to the scenario, the learner trains under the study's budget with the run's
:class:`~gridflex.learning.training.Trainer` (validation on the validation days only; the test
days are never touched: no test evaluation is called and nothing is written), and the history is
scored against the scenario's absolute target (:func:`gridflex.learning.targets.read_target`):

    value = t*                                   if the target is met, t* the clock at the first
                                                 validation point meeting it
    value = B * (1 + d_min)                      otherwise (censored)

    d(row) = max(0, v - v*) / s_v + max(0, c - c_max) / s_c
    s_v = v* (or 0.01 when v* = 0);  s_c = C_no_control - C_ref (or |c_max| when not positive)
    d_min = min of d(row) over the validation rows after iteration 0 (the closest approach to
            the target once training began; the row at iteration 0, the untrained policy, is
            the same for every trial of a seed and would tie them; it counts only when it is
            the only row)

with ``B`` the budget and ``t*`` in the budget's unit: training-clock seconds
(``budget_seconds``, the fair equal-clock mode) or iterations (``budget_iterations``, the
reproducible mode for tests); the cost term is absent for a violation-only target. A value
below ``B`` means "reached", above ``B`` "not reached, this far away". The trial's value is the
mean over its (scenario, seed) instances, each reported as an intermediate value (step = the
instance's index) so that a pruner can stop a bad trial early. The multi-objective mode returns
``(mean value, mean validation cost per day at the best validation point)``.

Validation cadence: a tenth of the budget (``validation_interval_s = B/10``, or every
``max(1, B/10)`` iterations), the same for every learner and trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gridflex.errors import UserError
from gridflex.learning.targets import Target, read_target
from gridflex.learning.training import Trainer
from gridflex.runs.world import World, build_world
from gridflex.scenario import LoadedScenario, load_scenario


@dataclass(frozen=True)
class Budget:
    """The training budget of every instance: seconds of training clock or iterations."""

    seconds: float | None = None
    iterations: int | None = None

    def __post_init__(self):
        if (self.seconds is None) == (self.iterations is None):
            raise UserError("give exactly one budget: --budget-s SECONDS (training clock, the fair "
                            "timing mode) or --budget-iterations N (reproducible, for tests)")
        if (self.seconds is not None and not self.seconds > 0) or (
                self.iterations is not None and self.iterations < 1):
            raise UserError("the budget must be positive (--budget-s > 0 or --budget-iterations >= 1)")

    @property
    def amount(self) -> float:
        return float(self.seconds if self.seconds is not None else self.iterations)

    @property
    def unit(self) -> str:
        return "s" if self.seconds is not None else "iterations"

    @property
    def column(self) -> str:
        """The history column time to target is read from."""
        return "wall_s" if self.seconds is not None else "iteration"

    def overrides(self) -> list[str]:
        """Scenario overrides that set this budget and the validation cadence (a tenth of it)."""
        if self.seconds is not None:
            return [f"learner.params.budget_seconds={self.seconds!r}", "learner.params.budget_iterations=null",
                    f"learner.params.validation_interval_s={self.seconds / 10!r}",
                    "learner.params.validation_interval_iterations=null"]
        return [f"learner.params.budget_iterations={self.iterations}", "learner.params.budget_seconds=null",
                f"learner.params.validation_interval_iterations={max(1, self.iterations // 10)}"]

    def as_dict(self) -> dict:
        return {"seconds": self.seconds, "iterations": self.iterations}


def target_distance(violation_rate: float | None, cost_per_day: float | None, target: Target) -> float:
    """``d`` of the module docstring (0 when the point meets the target; inf when unmeasured)."""
    if violation_rate is None or (isinstance(violation_rate, float) and math.isnan(violation_rate)):
        return math.inf
    scale_v = target.max_violation_rate if target.max_violation_rate > 0 else 0.01
    d = max(0.0, violation_rate - target.max_violation_rate) / scale_v
    if target.max_cost_per_day is not None:
        if cost_per_day is None or math.isnan(cost_per_day):
            return math.inf
        spread = (target.c_no_control or 0.0) - (target.c_ref or 0.0)
        scale_c = spread if spread > 0 else max(abs(target.max_cost_per_day), 1e-9)
        d += max(0.0, cost_per_day - target.max_cost_per_day) / scale_c
    return d


def censored_value(history: list[dict], target: Target, budget: Budget) -> tuple[float, float | None, float]:
    """``(value, time to target or None, d_min)`` of one training history (module docstring)."""
    for row in history:
        if target.met(row.get("val_violation_rate"), row.get("val_cost_per_day")):
            reached = float(row[budget.column])
            return reached, reached, 0.0
    trained = [r for r in history if r.get("iteration", 0) > 0] or history
    d_min = min((target_distance(r.get("val_violation_rate"), r.get("val_cost_per_day"), target)
                 for r in trained), default=math.inf)
    if not math.isfinite(d_min):
        d_min = 1e6  # no measurable validation point: far away, but a finite number for the sampler
    return budget.amount * (1.0 + d_min), None, d_min


@dataclass
class InstanceResult:
    """One (scenario, seed) of one trial."""

    scenario: str
    seed: int
    value: float
    time_to_target: float | None
    distance: float
    val_cost_per_day: float | None
    val_violation_rate: float | None
    train_seconds: float
    iterations: int
    curve: list = field(default_factory=list)  # [clock, d] per validation row (d None: unmeasured)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Problem:
    """One scenario file of the study, prepared once per worker process: its validated base
    (``-o`` overrides, ``--learner``, the budget), target and world (built on first use)."""

    path: Path
    base_overrides: list[str]
    loaded: LoadedScenario
    target: Target
    _world: World | None = field(default=None, repr=False)

    def world(self, registry, pm) -> World:
        if self._world is None:
            self._world = build_world(self.loaded, registry, pm)
        return self._world


def prepare_problems(paths: list[str], overrides: list[str], learner: str, budget: Budget,
                     registry) -> list[Problem]:
    """Validate every scenario with the study's learner and budget (before any training)."""
    learner_cls = registry.get("learner", learner)
    problems = []
    for path in paths:
        scenario_learner = load_scenario(path, list(overrides), registry).config.learner
        base = [f"learner.type={learner_cls.name}"]
        if scenario_learner is None or scenario_learner.type != learner_cls.name:
            base.append("learner.params={}")  # before -o, so `-o learner.params.X=...` survives it
        base += list(overrides) + budget.overrides()
        loaded = load_scenario(path, base, registry)
        problems.append(Problem(Path(path), base, loaded, read_target(loaded)))
    return problems


def run_instance(problem: Problem, seed: int, params: dict[str, Any], budget: Budget, registry, pm,
                 hook=None) -> InstanceResult:
    """Train the learner with ``params`` on one scenario and seed; score its validation history.

    ``hook`` (optional) is called with each validation row (the ``gridflex_on_iteration`` record),
    e.g. to report progress; nothing is written to disk and the test days are never used."""
    import json

    overrides = problem.base_overrides + [f"learner.params.{k}={json.dumps(v)}" for k, v in params.items()]
    loaded = load_scenario(problem.path, overrides, registry)
    world = problem.world(registry, pm)
    learner_cls = registry.get("learner", loaded.config.learner.type)
    learner = learner_cls(loaded.component_config("learner"), world.env, seed=seed)
    relay = None if hook is None and pm is None else _HookRelay(pm, hook)
    trainer = Trainer(world, out_dir=None, pm=relay, target=problem.target, seed=seed, progress=False)
    result = learner.train(trainer)
    value, reached, d_min = censored_value(result.history, problem.target, budget)
    best = result.history[result.best_index] if result.best_index is not None else result.history[-1]
    curve = []
    for row in result.history:
        d = target_distance(row.get("val_violation_rate"), row.get("val_cost_per_day"), problem.target)
        curve.append([float(row[budget.column]), d if math.isfinite(d) else None])
    return InstanceResult(problem.loaded.config.name, seed, value, reached, d_min,
                          best.get("val_cost_per_day"), best.get("val_violation_rate"),
                          float(result.train_seconds), int(result.iterations), curve)


class _HookRelay:
    """Stands in for the plugin manager in the Trainer: calls the installed plugins'
    ``gridflex_on_iteration`` hooks and then ``hook(record)``."""

    def __init__(self, pm, hook):
        self._pm, self._hook = pm, hook
        self.hook = self

    def gridflex_on_iteration(self, run, record):
        if self._pm is not None:
            self._pm.hook.gridflex_on_iteration(run=run, record=record)
        if self._hook is not None:
            self._hook(record)
