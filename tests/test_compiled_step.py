"""``environment.compile``: the compiled device step computes the same rollout as the eager one.

All three device types (battery, heat pump, generator) on a tiny IEEE 13 world, float64 on CPU
(inductor's C++ backend), closed loop through per-agent linear policies: every trajectory field,
the injections, the power flow and the gradients of a cost + voltage loss with respect to the
policy parameters agree to 1e-10.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import world_from_text

TEXT = """
name: tiny_compiled
seed: 5
feeder: {file: ieee13, taps: file, load_model: constant_pq}
data: {n_validation_days: 1, n_test_days: 1}
population: {households_per_kw: 0.1, pv_share: 0.4}
devices:
  - {type: battery, count: 4, params: {reactive_power: true}}
  - {type: heat_pump, count: 3}
  - {type: generator, count: 2, params: {reactive_power: true}}
environment: {regulated_evaluation: false}
target: {max_violation_rate: 0.5}
"""

FIELDS = ("states", "u", "actions", "observations", "cost", "residuals", "terminal", "p_kw", "q_kvar")


def _rollout(env, exo, params):
    def controller(f, t, obs, state, inputs):
        w, b = params[f]
        return torch.sigmoid(torch.einsum("bnk,nkd->bnd", obs, w) + b)

    rollout = env.rollout(exo, controller)
    cost = sum(tr.cost.sum() + tr.residuals.pow(2).sum() for tr in rollout.fleets)
    loss = cost + 1e3 * (rollout.flow.vm_pu - 1.0).pow(2).sum()
    grads = torch.autograd.grad(loss, [t for pair in params for t in pair])
    return rollout, grads


def test_compiled_device_steps_equal_the_eager_ones(tmp_path):
    _, _, _, eager = world_from_text(tmp_path, TEXT, name="eager")
    _, _, _, compiled = world_from_text(tmp_path, TEXT, name="compiled", overrides=["environment.compile=true"])
    assert compiled.env.compiled and not eager.env.compiled
    days = eager.data.split("train").get(np.arange(3))
    generator = torch.Generator().manual_seed(0)
    params = []
    for f, fleet in enumerate(eager.env.fleets):
        shape = (fleet.n_agents, eager.env.obs_dim(f), fleet.model.action_dim)
        params.append((torch.randn(shape, generator=generator, dtype=torch.float64).mul(0.1).requires_grad_(True),
                       torch.zeros(shape[0], shape[2], dtype=torch.float64, requires_grad=True)))
    ref, ref_grads = _rollout(eager.env, eager.env.exogenous(days), params)
    counters = torch._dynamo.utils.counters
    counters.clear()
    got, got_grads = _rollout(compiled.env, compiled.env.exogenous(days), params)
    # compiled for real (a graph per device type), not fallen back to eager
    assert counters["frames"]["ok"] >= len(eager.env.fleets), dict(counters["frames"])
    for a, b in zip(ref.fleets, got.fleets):
        for name in FIELDS:
            assert torch.allclose(getattr(a, name), getattr(b, name), rtol=0, atol=1e-10), name
    assert torch.allclose(ref.p_injection_kw, got.p_injection_kw, rtol=0, atol=1e-10)
    assert torch.allclose(ref.flow.v_pu, got.flow.v_pu, rtol=0, atol=1e-10)
    for a, b in zip(ref_grads, got_grads):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def test_compile_does_not_change_the_targets_key(tmp_path):
    from gridflex.learning.targets import targets_key
    from gridflex.plugins.registry import load_registry
    from gridflex.scenario import load_scenario

    path = tmp_path / "s.yaml"
    path.write_text(TEXT)
    _, registry = load_registry()
    plain = load_scenario(path, [], registry)
    switched = load_scenario(path, ["environment.compile=true"], registry)
    assert switched.config.environment.compile
    assert targets_key(plain) == targets_key(switched)
    other = load_scenario(path, ["environment.observe_voltage=true"], registry)
    assert targets_key(other) != targets_key(plain)


@pytest.mark.parametrize("value", ["yes please", 3])
def test_compile_takes_a_boolean(tmp_path, cli, value):
    path = tmp_path / "bad.yaml"
    path.write_text(TEXT.replace("environment: {regulated_evaluation: false}",
                                 f"environment: {{regulated_evaluation: false, compile: {value!r}}}"))
    code, out, err = cli("validate", str(path))
    assert code == 2 and "compile" in err and "Traceback" not in err


def test_compiled_acting_follows_the_policies_updates(tmp_path):
    """GradMAP acts through ``env.acting`` (compiled with ``environment.compile``): the same
    outputs as the eager policies, also after an in-place update of their parameters (no stale
    weights baked into the compiled graph), and no recompilation for it."""
    from gridflex.plugins.registry import load_registry

    _, _, _, world = world_from_text(tmp_path, TEXT, name="acting", overrides=["environment.compile=true"])
    _, registry = load_registry()
    cls = registry.get("learner", "gradmap")
    learner = cls(cls.Config.model_validate({}), world.env, seed=0)
    exo = world.env.exogenous(world.data.split("train").get(np.arange(2)))
    inputs = [world.env.step_inputs(exo, 7, f, torch.ones(2, fleet.n_agents, dtype=torch.float64))
              for f, fleet in enumerate(world.env.fleets)]
    obs = [world.env.observation(f, fleet.model.initial_state(2, exo.temp_out_c[:, 0]), inputs[f])
           for f, fleet in enumerate(world.env.fleets)]
    counters = torch._dynamo.utils.counters
    counters.clear()
    for update in range(2):
        with torch.no_grad():
            got = [learner.act(f, 7, o, None, None) for f, o in enumerate(obs)]
            want = [policy(o) for policy, o in zip(learner.policies, obs)]
            for a, b in zip(got, want):
                assert torch.allclose(a, b, rtol=0, atol=1e-6)
            for p in learner.policies.parameters():
                p.add_(0.05 * torch.randn_like(p))  # what an optimiser step does
        if update == 0:
            frames = counters["frames"]["ok"]
            assert frames >= len(obs), dict(counters["frames"])  # compiled for real
    assert counters["frames"]["ok"] == frames  # the update reused the graphs
