"""The contract suites of gridflex.testing on every built-in device, solver and learner."""

from __future__ import annotations

from gridflex.plugins.registry import load_registry
from gridflex.testing import DeviceContract, LearnerContract, SolverContract

_, REGISTRY = load_registry()


def builtin(kind: str, name: str) -> type:
    """A built-in component class, looked up through the registry (as a user's scenario would)."""
    return REGISTRY.get(kind, name)


# ============================================================================ devices
class TestBattery(DeviceContract):
    device_class = builtin("device", "battery")
    demand_sign = "bidirectional"


class TestBatteryReactive(DeviceContract):
    device_class = builtin("device", "battery")
    config = {"reactive_power": True, "three_phase": True}
    demand_sign = "bidirectional"


class TestHeatPump(DeviceContract):
    device_class = builtin("device", "heat_pump")
    demand_sign = "load"


class TestGenerator(DeviceContract):
    device_class = builtin("device", "generator")
    demand_sign = "generation"


class TestGeneratorReactive(DeviceContract):
    device_class = builtin("device", "generator")
    config = {"reactive_power": True}
    demand_sign = "generation"


# ============================================================================ solvers
class TestAC3Ph(SolverContract):
    solver_class = builtin("solver", "ac3ph")
    config = {"tol_pu": 1e-10}
    v_tolerance_pu = 1e-8  # the reference itself: agreement up to the fixed point's tolerance
    source_power_rtol = 1e-8


class TestLinear3Ph(SolverContract):
    solver_class = builtin("solver", "linear3ph")
    # first-order model around the base case: 4e-3 pu and 1.3 % from ac3ph on this batch
    v_tolerance_pu = 0.01
    source_power_rtol = 0.03


# ============================================================================ learners
# Tiny budgets: one iteration on 1-2 days with 8-unit networks and one validation day; select_best
# off so that the suite sees the policy move.
TINY_TRAINING = {"budget_iterations": 1, "budget_seconds": None, "validation_interval_iterations": 1,
                 "select_best": False, "days_per_batch": 1, "hidden_sizes": [8], "warm_start_epochs": 1}


class TestNoControl(LearnerContract):
    learner_class = builtin("learner", "no_control")


class TestRuleBased(LearnerContract):
    learner_class = builtin("learner", "rule_based")


class TestDroop(LearnerContract):
    learner_class = builtin("learner", "droop")


class TestGradMAP(LearnerContract):
    learner_class = builtin("learner", "gradmap")
    config = {**TINY_TRAINING, "epochs": 2}


class TestGradMAPE1(LearnerContract):
    learner_class = builtin("learner", "gradmap_e1")
    config = TINY_TRAINING


class TestSSLPenalty(LearnerContract):
    learner_class = builtin("learner", "ssl_penalty")
    config = TINY_TRAINING


class TestSSLPD(LearnerContract):
    learner_class = builtin("learner", "ssl_pd")
    config = TINY_TRAINING


class TestIPPO(LearnerContract):
    learner_class = builtin("learner", "ippo")
    config = {**TINY_TRAINING, "critic_hidden_sizes": [8], "epochs": 1, "minibatches": 1}


class TestMAPPO(LearnerContract):
    learner_class = builtin("learner", "mappo")
    config = {**TINY_TRAINING, "critic_hidden_sizes": [8], "epochs": 1, "minibatches": 1,
              "warm_start_max_epochs": 5}


#: learners the suite does not apply to, with the reason
NOT_DECENTRALISED = {"reference": "the centralised perfect-foresight planner (role 'planner'): it "
                                  "plans every agent from all days' data in prepare(), by design"}


def test_every_builtin_component_runs_its_contract_suite():
    """A new built-in device, solver or learner cannot silently miss the suites above."""
    covered = {suite.device_class for suite in DeviceContract.__subclasses__()}
    covered |= {suite.solver_class for suite in SolverContract.__subclasses__()}
    covered |= {suite.learner_class for suite in LearnerContract.__subclasses__()}
    missing = [(kind, name) for kind in ("device", "solver", "learner") for name, info in
               REGISTRY.components[kind].items()
               if info.distribution == "gridflex" and info.cls not in covered and name not in NOT_DECENTRALISED]
    assert not missing, f"built-in components without a contract test class here: {missing}"


# ============================================================================ the suites catch bugs
BROKEN_COMPONENTS = '''
import torch
from gridflex.testing import DeviceContract, LearnerContract
from toy_plugin import ToyLearner, ToyStore


class CoupledStore(ToyStore):
    """Observes the fleet's mean energy: couples agents."""
    def observation(self, state, inputs):
        return state / self.config.e_max_kwh - state.mean(1, keepdim=True) / self.config.e_max_kwh


class MutatingStore(ToyStore):
    """Clamps its state in place."""
    def step(self, state, action, inputs):
        state.clamp_(max=0.9 * self.config.e_max_kwh)
        return super().step(state, action, inputs)


class GlobalRandomStore(ToyStore):
    """Draws its sizes from torch's global generator."""
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.size = torch.rand(self.n_agents)


class OverreachingStore(ToyStore):
    """Maps u beyond its upper bound."""
    def action(self, u, state, inputs):
        lo, hi = self.action_bounds(state, inputs)
        return lo + (hi - lo) * 1.1 * u


class WrongCostShape(ToyStore):
    """Cost [B, N, 1] instead of [B, N]."""
    def cost(self, state, action, inputs):
        return torch.zeros_like(action)


class DetachedStore(ToyStore):
    """Demand that no gradient reaches."""
    def demand(self, action, state):
        p_kw, q_kvar = super().demand(action, state)
        return p_kw.detach(), q_kvar


class WrongSignStore(ToyStore):
    """Reports generation as positive demand."""
    def demand(self, action, state):
        p_kw, q_kvar = super().demand(action, state)
        return -p_kw.abs(), q_kvar


class TestToyStore(DeviceContract):
    device_class = ToyStore
    demand_sign = "bidirectional"

class TestCoupledStore(TestToyStore):
    device_class = CoupledStore

class TestMutatingStore(TestToyStore):
    device_class = MutatingStore

class TestGlobalRandomStore(TestToyStore):
    device_class = GlobalRandomStore

class TestOverreachingStore(TestToyStore):
    device_class = OverreachingStore

class TestWrongCostShape(TestToyStore):
    device_class = WrongCostShape

class TestDetachedStore(TestToyStore):
    device_class = DetachedStore

class TestWrongSignStore(TestToyStore):
    device_class = WrongSignStore


class CoupledLearner(ToyLearner):
    """Acts on the fleet's mean observation."""
    def act(self, fleet_index, t, obs, state, inputs):
        u = super().act(fleet_index, t, obs, state, inputs)
        return (u + 0.1 * torch.tanh(obs.mean((1, 2)))[:, None, None]).clamp(0, 1)


class OutOfRangeLearner(ToyLearner):
    """Outputs 1.5."""
    def act(self, fleet_index, t, obs, state, inputs):
        return super().act(fleet_index, t, obs, state, inputs) * 3.0


class TestToyLearner(LearnerContract):
    learner_class = ToyLearner
    devices = ({"type": "battery", "count": 3}, {"type": "heat_pump", "count": 2})

class TestCoupledLearner(TestToyLearner):
    learner_class = CoupledLearner

class TestOutOfRangeLearner(TestToyLearner):
    learner_class = OutOfRangeLearner
'''

#: (test class, test) pairs the run of BROKEN_COMPONENTS must fail, and no others
MUST_FAIL = {
    ("TestCoupledStore", "test_agents_and_days_are_independent"),
    ("TestMutatingStore", "test_no_in_place_mutation_of_inputs"),
    ("TestGlobalRandomStore", "test_deterministic_given_the_generator"),
    ("TestOverreachingStore", "test_bounds_ordered_and_actions_inside"),
    ("TestWrongCostShape", "test_shapes_dtypes_and_finite_values[float64]"),
    ("TestWrongCostShape", "test_shapes_dtypes_and_finite_values[float32]"),
    ("TestDetachedStore", "test_gradient_reaches_u"),
    ("TestWrongSignStore", "test_demand_sign_convention"),
    ("TestCoupledLearner", "test_decentralised"),
    ("TestOutOfRangeLearner", "test_act_shape_range_and_closed_loop"),
}


def test_the_suites_catch_broken_components(tmp_path):
    """Known-good toy components pass; each deliberately broken variant fails exactly the check
    aimed at its bug (a subprocess pytest run of BROKEN_COMPONENTS)."""
    import os
    import re
    import subprocess
    import sys

    from conftest import TESTS_DIR

    (tmp_path / "test_broken.py").write_text(BROKEN_COMPONENTS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider",
         "test_broken.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    failed = set(re.findall(r"^FAILED test_broken\.py::(\w+)::(\S+)", run.stdout, re.M))
    assert failed, run.stdout[-3000:] + run.stderr[-2000:]
    broken = {cls for cls, _ in MUST_FAIL}
    # every planted bug is caught by its check ...
    assert MUST_FAIL <= failed, f"not caught: {sorted(MUST_FAIL - failed)}\n{run.stdout[-3000:]}"
    # ... the known-good toys pass everything, and no check fails where no bug was planted there
    assert not {f for f in failed if f[0] in ("TestToyStore", "TestToyLearner")}, sorted(failed)
    assert {f[0] for f in failed} <= broken


def test_pytest_plugin_is_declared_and_light():
    """pyproject declares the pytest11 entry point; the module it names imports without torch
    (pytest loads it in every session of an environment with gridflex) and provides the fixtures."""
    import subprocess
    import sys
    import tomllib

    from conftest import REPO_ROOT

    entry_points = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert entry_points["pytest11"] == {"gridflex": "gridflex.testing.pytest_plugin"}
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, gridflex.testing.pytest_plugin as p; "
         "print('torch' in sys.modules, hasattr(p, 'gridflex_registry'), hasattr(p, 'gridflex_tiny_world'))"],
        capture_output=True, text=True, timeout=60)
    assert probe.stdout.split() == ["False", "True", "True"], probe.stdout + probe.stderr
