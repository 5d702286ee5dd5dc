"""The learner contract suite: :class:`LearnerContract`.

Subclass it in a test module, name the learner class and its ``params`` (a tiny budget for one
that trains)::

    from gridflex.testing import LearnerContract

    class TestPriceThreshold(LearnerContract):
        learner_class = PriceThreshold
        config = {"threshold_eur_per_kwh": 0.3}

The learner is built as gridflex builds it, ``cls(Config, env, seed=...)``, on a tiny world made
from the shipped ``ieee13_small`` scenario with a small fleet (:attr:`LearnerContract.devices`,
default 4 batteries, 2 heat pumps and 2 generators; use your own device types there). The checks
use the public learner API only: ``act``, ``prepare`` and, when ``trains``, ``train`` with a
:class:`~gridflex.learning.training.Trainer`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch
from pydantic import ValidationError

from gridflex.plugins.contracts import Learner, StepInputs
from gridflex.testing._common import clone_inputs, differing_fields, per_agent_fields, per_day_fields

#: the default fleet of :class:`LearnerContract`: every built-in device type, inverters with ``q``
TINY_DEVICES: tuple[dict[str, Any], ...] = (
    {"type": "battery", "count": 4, "params": {"reactive_power": True}},
    {"type": "heat_pump", "count": 2},
    {"type": "generator", "count": 2, "params": {"reactive_power": True}},
)


def tiny_scenario(devices=TINY_DEVICES, *, name: str = "contract_tiny", learner: dict | None = None,
                  **sections: dict) -> dict:
    """The shipped ``ieee13_small`` scenario as a mapping, shrunk: ``devices`` replaced, few
    households (0.05 per kW of spot load), one validation and one test day, no regulated
    evaluation; ``learner`` (default ``no_control``) and any other top-level ``sections`` merged in."""
    from gridflex.scenario import default_scenario_path
    from gridflex.scenario.loading import read_yaml_mapping

    data = read_yaml_mapping(default_scenario_path())
    data["name"] = name
    data["devices"] = [copy.deepcopy(dict(d)) for d in devices]
    data["population"] = {**data.get("population", {}), "households_per_kw": 0.05}
    data["data"] = {**data.get("data", {}), "n_validation_days": 1, "n_test_days": 1}
    data["environment"] = {**data.get("environment", {}), "regulated_evaluation": False}
    data["learner"] = learner or {"type": "no_control"}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data


def tiny_world(devices=TINY_DEVICES, *, registry=None, pm=None, **sections):
    """A :class:`~gridflex.runs.world.World` of :func:`tiny_scenario` (built in well under a
    second), with the installed plugins unless ``registry``/``pm`` are given."""
    from gridflex.plugins.registry import load_registry
    from gridflex.runs.world import build_world
    from gridflex.scenario import default_scenario_path
    from gridflex.scenario.loading import validate_mapping

    if registry is None:
        pm, registry = load_registry()
    loaded = validate_mapping(tiny_scenario(devices, **sections), default_scenario_path(), registry)
    return build_world(loaded, registry, pm)


@dataclass
class ActCall:
    """One recorded ``act`` call: its arguments and the output ``u [B, N, d]``."""

    fleet_index: int
    t: int
    obs: torch.Tensor
    state: torch.Tensor
    inputs: StepInputs
    u: torch.Tensor


def record_days(world, learner: Learner, days: int = 2) -> tuple[list[ActCall], Any]:
    """Roll ``days`` fixed training days of ``world`` (evenly spread over the split) closed loop
    with ``learner.act`` (after ``prepare``), without gradient; returns every ``act`` call (in
    call order) and the rollout."""
    import numpy as np

    env = world.env
    split = world.data.split("train")
    exo = env.exogenous(split.get(np.linspace(0, len(split) - 1, num=days).round().astype(int)))
    learner.prepare(exo)
    calls: list[ActCall] = []

    def controller(f, t, obs, state, inputs):
        u = learner.act(f, t, obs, state, inputs)
        calls.append(ActCall(f, t, obs.clone(), state.clone(), clone_inputs(inputs), u))
        return u

    with torch.no_grad():
        rollout = env.rollout(exo, controller, voltage_feedback=bool(getattr(learner, "voltage_feedback", False)))
    return calls, rollout


class LearnerContract:
    """Contract tests for a :class:`~gridflex.plugins.contracts.Learner` subclass.

    Set :attr:`learner_class` and :attr:`config`; for a learner that trains, give ``config`` a
    tiny budget (e.g. ``budget_iterations: 1``, ``budget_seconds: null``) and
    ``select_best: false`` so the suite can see the policy move. Optionally :attr:`devices` (the
    tiny world's fleet) and :attr:`max_train_seconds`.
    """

    learner_class: ClassVar[type[Learner]]
    config: ClassVar[dict[str, Any]] = {}
    #: the tiny world's device groups (scenario ``devices`` entries)
    devices: ClassVar[tuple[dict[str, Any], ...]] = TINY_DEVICES
    seed: ClassVar[int] = 0
    #: a learner that trains must finish its configured budget within this many seconds
    max_train_seconds: ClassVar[float] = 60.0
    #: training must change ``act``'s output (set False for a learner whose budget is too small
    #: to move, or that keeps its initial policy by ``select_best``)
    expect_policy_change: ClassVar[bool] = True

    # ------------------------------------------------------------------ helpers
    @classmethod
    def make_world(cls):
        """The tiny world of :attr:`devices` (:func:`tiny_world`)."""
        return tiny_world(cls.devices)

    def make_learner(self, world) -> Learner:
        config = self.learner_class.Config.model_validate(dict(self.config))
        return self.learner_class(config, world.env, seed=self.seed)

    @pytest.fixture(scope="class")
    @classmethod
    def world(cls):
        """One tiny world per test class (built in well under a second)."""
        return cls.make_world()

    @pytest.fixture
    def learner(self, world) -> Learner:
        return self.make_learner(world)

    @pytest.fixture
    def calls(self, world, learner) -> list[ActCall]:
        return record_days(world, learner)[0]

    # ------------------------------------------------------------------ checks reused after training
    def check_outputs(self, env, calls: list[ActCall]) -> None:
        """Every ``u`` is ``[B, N_f, d_f]``, floating, finite and in ``[0, 1]``."""
        assert calls, "act was never called"
        for c in calls:
            fleet = env.fleets[c.fleet_index]
            want = (c.obs.shape[0], fleet.n_agents, int(fleet.model.action_dim))
            where = f"act(fleet {c.fleet_index} ({fleet.model.name}), t={c.t})"
            assert isinstance(c.u, torch.Tensor), f"{where} returned {type(c.u).__name__}, not a tensor"
            assert tuple(c.u.shape) == want, f"{where}: shape {tuple(c.u.shape)}, expected [B, N, d] = {want}"
            assert c.u.is_floating_point() and torch.isfinite(c.u).all(), f"{where}: non-finite or integer output"
            assert (c.u >= 0).all() and (c.u <= 1).all(), \
                f"{where}: u outside [0, 1] (min {float(c.u.min()):.3g}, max {float(c.u.max()):.3g})"

    def check_decentralised(self, learner: Learner, calls: list[ActCall]) -> None:
        """Perturbing agent ``j``'s observation, state and own inputs changes no other agent's
        ``u``; perturbing day ``b`` changes no other day's ``u``."""
        picked = {}
        for c in calls:  # one mid-day call per fleet, plus a second one to borrow other values from
            picked.setdefault(c.fleet_index, []).append(c)
        for f, fleet_calls in picked.items():
            assert len(fleet_calls) >= 2, "the decentralisation check needs two steps of a day"
            c, other = fleet_calls[len(fleet_calls) // 2 - 1], fleet_calls[len(fleet_calls) // 2]
            with torch.no_grad():
                base = learner.act(f, c.t, c.obs, c.state, c.inputs)
            b, n = c.obs.shape[:2]
            for j in sorted({0, n - 1}):
                obs, state, inputs = c.obs.clone(), c.state.clone(), clone_inputs(c.inputs)
                obs[:, j] = obs[:, j] + 0.5 + other.obs[:, j].abs()
                state[:, j] = other.state[:, j]
                for name in per_agent_fields():
                    getattr(inputs, name)[:, j] = getattr(other.inputs, name)[:, j] + 0.03
                with torch.no_grad():
                    u = learner.act(f, c.t, obs, state, inputs)
                keep = torch.arange(n) != j
                assert torch.allclose(u[:, keep], base[:, keep], rtol=1e-12, atol=1e-12), (
                    f"fleet {f}: changing agent {j}'s observation/state/own inputs changed other "
                    "agents' u: act must be decentralised (agent i's output from agent i's inputs only)")
            if b > 1:
                obs, state, inputs = c.obs.clone(), c.state.clone(), clone_inputs(c.inputs)
                obs[0] = obs[0] + 0.5
                state[0] = other.state[0]
                for name in per_agent_fields() + per_day_fields():
                    getattr(inputs, name)[0] = getattr(other.inputs, name)[0] + 0.03
                with torch.no_grad():
                    u = learner.act(f, c.t, obs, state, inputs)
                assert torch.allclose(u[1:], base[1:], rtol=1e-12, atol=1e-12), \
                    f"fleet {f}: changing day 0 changed the other days' u"

    # ------------------------------------------------------------------ tests
    def test_class_declarations(self, learner):
        """Subclasses ``Learner``; ``name``, ``Config`` (rejecting unknown keys), ``trains``."""
        cls = self.learner_class
        assert issubclass(cls, Learner), f"{cls.__name__} must subclass gridflex.plugins.contracts.Learner"
        assert isinstance(cls.name, str) and cls.name and cls.kind == "learner"
        assert isinstance(cls.trains, bool)
        if cls.trains:
            assert cls.train is not Learner.train, "a learner with trains = True must implement train()"
        with pytest.raises(ValidationError, match="unknown_key_for_the_contract_test"):
            cls.Config.model_validate({**self.config, "unknown_key_for_the_contract_test": 1})

    def test_act_shape_range_and_closed_loop(self, world, learner):
        """A closed-loop rollout of two days with ``act`` (after ``prepare``): every ``u`` is
        ``[B, N, d]`` in ``[0, 1]``; the day's cost and every fleet's trajectory are finite."""
        calls, rollout = record_days(world, learner)
        self.check_outputs(world.env, calls)
        steps = rollout.exogenous.steps
        assert len(calls) == steps * len(world.env.fleets), "act must be called once per fleet and step"
        for traj in rollout.fleets:
            assert torch.isfinite(traj.states).all() and torch.isfinite(traj.cost).all()
        assert torch.isfinite(rollout.flow.source_power_kw).all()

    def test_decentralised(self, learner, calls):
        """Agent i's ``u`` depends on agent i's inputs only; day b's on day b's only."""
        self.check_decentralised(learner, calls)

    def test_act_repeatable_and_pure(self, learner, calls):
        """``act`` gives the same ``u`` for the same arguments and changes none of them."""
        for c in calls[:: max(1, len(calls) // 8)]:
            obs, state, inputs = c.obs.clone(), c.state.clone(), clone_inputs(c.inputs)
            with torch.no_grad():
                again = learner.act(c.fleet_index, c.t, c.obs, c.state, c.inputs)
            assert torch.equal(again, c.u), f"act(fleet {c.fleet_index}, t={c.t}) is not repeatable"
            assert torch.equal(obs, c.obs) and torch.equal(state, c.state), "act changed obs or state in place"
            changed = differing_fields(inputs, c.inputs)
            assert not changed, f"act changed StepInputs.{changed} in place"

    def test_trains_within_a_tiny_budget(self, world):
        """If ``trains``: ``train`` with a :class:`~gridflex.learning.training.Trainer` finishes
        the configured budget within :attr:`max_train_seconds`, returns its result, moves the
        policy (unless :attr:`expect_policy_change` is False), and the trained ``act`` still
        passes the output and decentralisation checks."""
        from gridflex.learning.training import Trainer, TrainingResult

        if not self.learner_class.trains:  # the declaration holds: run() never calls train()
            learner = self.make_learner(world)
            assert type(learner).train is Learner.train, (
                f"{self.learner_class.__name__} implements train() but declares trains = False")
            with pytest.raises(NotImplementedError):
                learner.train(Trainer(world, progress=False, seed=self.seed))
            return

        learner = self.make_learner(world)
        before, _ = record_days(world, learner)
        trainer = Trainer(world, progress=False, seed=self.seed)
        t0 = time.perf_counter()
        result = learner.train(trainer)
        seconds = time.perf_counter() - t0
        assert seconds <= self.max_train_seconds, (
            f"training took {seconds:.1f} s > {self.max_train_seconds} s: give config a tiny budget "
            "(e.g. budget_iterations: 1, budget_seconds: null, small days_per_batch and networks)")
        assert isinstance(result, TrainingResult) and result.iterations >= 1, \
            f"train() must return the trainer's TrainingResult after >= 1 iteration, got {result!r}"
        after, _ = record_days(world, learner)
        self.check_outputs(world.env, after)
        self.check_decentralised(learner, after)
        if self.expect_policy_change:
            moved = any(not torch.equal(a.u, b.u) for a, b in zip(before, after))
            assert moved, ("training left act's outputs unchanged; set select_best: false (and a budget "
                           "that moves the policy) in config, or expect_policy_change = False")

