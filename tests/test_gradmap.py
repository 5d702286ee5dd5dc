"""GradMAP family: environment gradient, one outer iteration, smoke runs, comparison contract.

A tiny world (IEEE 13, 16 agents, 2-day batches) keeps the whole module in seconds.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from gridflex.plugins.registry import load_registry
from gridflex.scenario import load_scenario
from gridflex.learning.training import Trainer
from gridflex.runs.world import build_world

TINY = """
name: tiny13
feeder: {file: ieee13, taps: file}
solver: {type: ac3ph, params: {tol_pu: 1.0e-12, adjoint_tol: 1.0e-13}}
population: {households_per_kw: 0.05, pv_share: 0.4}
devices:
  - {type: battery, count: 8, params: {reactive_power: true}}
  - {type: heat_pump, count: 4}
  - {type: generator, count: 4}
learner: {type: gradmap, params: {days_per_batch: 2, hidden_sizes: [8], warm_start_epochs: 2,
          budget_iterations: 2, validation_interval_iterations: 1, budget_seconds: null}}
data: {n_validation_days: 2, n_test_days: 1}
environment: {regulated_evaluation: false}
target: {max_violation_rate: 0.5}
"""
FAST = ["learner.params.days_per_batch=2", "learner.params.hidden_sizes=[8]",
        "learner.params.warm_start_epochs=2", "learner.params.budget_iterations=2",
        "learner.params.budget_seconds=null", "learner.params.validation_interval_iterations=1"]
TRAINING_LEARNERS = ("gradmap", "gradmap_e1", "ssl_penalty", "ssl_pd")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = tmp_path_factory.mktemp("scenario") / "tiny13.yaml"
    path.write_text(TINY)
    pm, registry = load_registry()
    loaded = load_scenario(path, [], registry)
    world = build_world(loaded, registry, pm)
    return path, pm, registry, loaded, world


def make_learner(setup, name="gradmap", **params):
    _, _, registry, loaded, world = setup
    cls = registry.get("learner", name)
    config = cls.Config.model_validate({**loaded.component_config("learner").model_dump(), **params}
                                       if name == "gradmap" else
                                       {"days_per_batch": 2, "hidden_sizes": [8], **params})
    return cls(config, world.env, seed=0)


def _tensors(tree):
    """Every tensor in a nested state dict."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in _tensors(v)]
    if isinstance(tree, (list, tuple)):
        return [t for v in tree for t in _tensors(v)]
    return []


def fixed_days(world, n=2):
    return world.env.exogenous(world.data.split("train").get(np.array([3, 40])[:n]))


def test_environment_gradient_matches_finite_differences_and_open_loop(setup):
    _, _, _, loaded, world = setup
    env = world.env
    learner = make_learner(setup, dual_init_voltage=50.0)
    trainer = Trainer(world, progress=False)
    exo = fixed_days(world, 1)
    rollout, lag, g = learner.environment_gradient(trainer, exo)

    # literal open-loop re-simulation with u_fixed = the policies' outputs: same gradient
    u = [traj.u.detach().clone().requires_grad_(True) for traj in rollout.fleets]
    value = learner._lagrangian(trainer, env.rollout(exo, u_fixed=u)).value
    g_open = torch.autograd.grad(value, u)
    assert torch.allclose(value, lag.value, rtol=1e-12)
    for a, b in zip(g, g_open):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)

    # finite differences at random outputs near mid-range: away from the |p| kink of battery
    # degradation at p = 0 and from the energy limits (a battery pinned at a limit sits on a kink)
    gen = torch.Generator().manual_seed(1)
    u = [(0.4 + 0.2 * torch.rand(x.shape, generator=gen, dtype=x.dtype)).requires_grad_(True) for x in u]
    g = torch.autograd.grad(learner._lagrangian(trainer, env.rollout(exo, u_fixed=u)).value, u)

    def lagrangian_at(us):
        with torch.no_grad():
            return float(learner._lagrangian(trainer, env.rollout(exo, u_fixed=us)).value)

    h = 1e-4  # central differences; the solver tolerance limits smaller steps (noise ~1e-6)
    for fleet, t, i, k in ((0, 2, 3, 0), (0, 5, 5, 1), (2, 17, 1, 0)):
        plus = [x.detach().clone() for x in u]
        minus = [x.detach().clone() for x in u]
        plus[fleet][0, t, i, k] += h
        minus[fleet][0, t, i, k] -= h
        fd = (lagrangian_at(plus) - lagrangian_at(minus)) / (2 * h)
        assert fd == pytest.approx(float(g[fleet][0, t, i, k]), rel=2e-4, abs=2e-6)


def test_one_outer_iteration_lowers_the_lagrangian(setup):
    _, _, _, _, world = setup
    learner = make_learner(setup, warm_start_epochs=0)
    trainer = Trainer(world, progress=False)
    exo = fixed_days(world)

    def closed_loop_lagrangian():
        with torch.no_grad():
            return float(learner._lagrangian(trainer, world.env.rollout(exo, learner.act)).value)

    before = closed_loop_lagrangian()
    duals = [t.clone() for t in learner.duals.tensors()]
    extras = learner.outer_iteration(trainer, exo, ascend=False)
    assert all(torch.equal(a, b) for a, b in zip(duals, learner.duals.tensors()))
    assert 0.0 <= extras["clipped_share"] <= 1.0
    assert closed_loop_lagrangian() < before


def test_learners_smoke_and_comparison_contract(setup, tmp_path):
    from gridflex.runs.compare import compare

    path, pm, registry, _, world = setup
    learners = ["no_control", *TRAINING_LEARNERS]
    result = compare(path, learners, [0], tmp_path, overrides=FAST, registry=registry, pm=pm,
                     progress=False, echo=lambda *_: None)
    on_disk = json.loads((tmp_path / "comparison.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert set(on_disk["target"]) >= {"max_violation_rate", "max_cost_per_day", "reference", "evaluated_on"}
    assert on_disk["target"]["evaluated_on"] == "validation"
    assert set(on_disk["learners"]) == set(learners)
    for name, entry in on_disk["learners"].items():
        assert set(entry) >= {"runs", "time_to_target_s", "median", "iqr"}
        assert len(entry["runs"]) == len(entry["time_to_target_s"]) == 1
        assert "cost_per_day" in entry["median"] and "time_to_target_s" in entry["median"]
        assert len(entry["iqr"]["voltage_violation_rate"]) == 2
    assert on_disk["learners"]["no_control"]["time_to_target_s"] == [None]

    for name in TRAINING_LEARNERS:
        run_dir = tmp_path / name / "seed0"
        rows = list(csv.DictReader((run_dir / "history.csv").open()))
        assert [int(r["iteration"]) for r in rows] == [0, 1, 2]
        assert int(rows[-1]["env_gradient_evaluations"]) == 2
        assert int(rows[-1]["power_flow_solves"]) > int(rows[0]["power_flow_solves"])
        assert rows[0]["lagrangian"] == "" and rows[-1]["lagrangian"] != ""
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["env_gradient_evaluations"] == 2 and metrics["policy_updates"] > 0

    # rescoring from the histories reproduces the run-time times; the loose (violation-only)
    # kind is never later than the full target
    from gridflex.runs.compare import rescore

    again = rescore(tmp_path, path, overrides=FAST, registry=registry)
    for name in TRAINING_LEARNERS:
        entry = again["learners"][name]
        before = on_disk["learners"][name]["time_to_target_s"][0]
        after = entry["time_to_target_s"][0]
        assert (after is None) == (before is None)  # history.csv keeps 6 significant digits
        assert after is None or after == pytest.approx(before, rel=1e-5)
        full, loose = entry["time_to_target_s"][0], entry["time_to_violation_target_s"][0]
        assert full is None or (loose is not None and loose <= full)
        grads, grads_loose = entry["gradients_to_target"][0], entry["gradients_to_violation_target"][0]
        assert (grads is None) == (full is None) and (grads_loose is None) == (loose is None)
        assert grads is None or 0 <= grads <= 2
        if name != "ssl_penalty":  # fixed penalties: no dual families to report
            assert "dual_voltage_at_max" in entry["runs"][0]["duals"]

        # this learner's own run folder (not the previous loop's last one)
        run_dir = tmp_path / name / "seed0"
        rows = list(csv.DictReader((run_dir / "history.csv").open()))
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["learner"] == name
        assert metrics["train_seconds"] == pytest.approx(float(rows[-1]["wall_s"]), rel=1e-5)
        state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        assert state["iteration"] == 2 and state["env_gradient_evaluations"] == 2  # counters live in the checkpoint
        assert [int(r["iteration"]) for r in state["history"]] == [0, 1, 2]
        fresh = make_learner(setup, name)
        untrained = {k: v.clone() for k, v in fresh.state_dict()["policies"].items()}
        fresh.load_state_dict(state["learner"])
        loaded = fresh.state_dict()["policies"]
        assert loaded.keys() == state["learner"]["policies"].keys()
        assert all(torch.equal(loaded[k], state["learner"]["policies"][k]) for k in loaded)
        assert any(not torch.equal(loaded[k], untrained[k]) for k in loaded)  # the load changed it
        policy = torch.load(run_dir / "policy.pt", weights_only=True)
        assert policy and all(torch.isfinite(t).all() for t in _tensors(policy))


# ---------------------------------------------------------------- feasibility network term (issue #6)
def _feasibility_term(world, v_limits, line_limits=True):
    pytest.importorskip("cvxpylayers")
    from plugins.learners.gradmap.lagrangian import FeasibilityTerm

    return FeasibilityTerm(world.env, v_limits, line_limits, 0.01)


def test_feasibility_term_screen_and_gradient(setup):
    """g_F is zero with zero gradient w.r.t. u on a feasible batch; on a mixed batch the numpy
    screen agrees with the layer, the gradient w.r.t. u is nonzero, and the layer gradient routed
    through the screen matches central differences in the injections."""
    _, _, _, _, world = setup
    env = world.env
    exo = fixed_days(world, 1)
    learner = make_learner(setup)
    with torch.no_grad():
        u0 = [traj.u for traj in env.rollout(exo, learner.act).fleets]

    def term_and_grad(term):
        us = [x.clone().requires_grad_(True) for x in u0]
        ro = env.rollout(exo, u_fixed=us)
        d = term(ro.p_injection_kw, ro.q_injection_kvar, exo.load_scale)
        g = torch.autograd.grad(d.sum(), us, allow_unused=True, materialize_grads=True)
        return ro, d, torch.cat([x.reshape(-1) for x in g])

    wide = _feasibility_term(world, (0.5, 1.5), line_limits=False)
    ro, d, g = term_and_grad(wide)
    assert d.shape == (1, 24) and wide.last_active_share == 0.0
    assert torch.equal(d, torch.zeros_like(d)) and torch.equal(g, torch.zeros_like(g))
    # the screen's premise: the layer itself gives ~0 distance and gradient at feasible points
    p = ro.p_injection_kw.detach()[0, :3].clone().requires_grad_(True)
    q, scale = ro.q_injection_kvar.detach()[0, :3], exo.load_scale[0, :3]
    d_layer = wide.layer.squared_distance(p, q, scale)
    (g_layer,) = torch.autograd.grad(d_layer.sum(), p)
    assert d_layer.abs().max() < 1e-6 and g_layer.abs().max() < 1e-4

    # upper limit at the median over steps of the linearised max |V|: about half the steps violate it
    p, q, scale = (x.detach()[0].numpy() for x in (ro.p_injection_kw, ro.q_injection_kvar, exo.load_scale))
    hi = float(np.median(wide.layer.v_model.evaluate(scale, p, q).max(-1)))
    mixed = _feasibility_term(world, (0.5, hi), line_limits=False)
    ro, d, g = term_and_grad(mixed)
    screened = torch.from_numpy(mixed.linear_feasible(p, q, scale))
    assert 0 < int(screened.sum()) < 24 and 0.0 < mixed.last_active_share < 1.0
    assert torch.equal(d[0, screened], torch.zeros(int(screened.sum()), dtype=d.dtype))
    assert d[0, ~screened].max() > 1e-3
    p_t, q_t, s_t = (torch.from_numpy(x) for x in (p, q, scale))
    with torch.no_grad():
        assert mixed.layer.squared_distance(p_t[screened], q_t[screened], s_t[screened]).abs().max() < 1e-6
    assert g.abs().max() > 0

    x = p_t.clone().requires_grad_(True)
    (g_p,) = torch.autograd.grad(mixed(x, q_t, s_t).sum(), x)
    # KKT adjoint vs the closed form 2 (x - y*) / s^2 of a squared distance to a convex set
    with torch.no_grad():
        y = mixed.layer.project(p_t, q_t, s_t).p_kw
    closed = 2 * (p_t - y) / mixed.scale_kw ** 2
    assert torch.equal(g_p[screened], torch.zeros_like(g_p[screened]))
    assert float((g_p - closed).norm()) < 1e-3 * float(closed.norm())
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    h = 0.1  # kW (s ~ 35 kW: curvature negligible; smaller h meets the solver noise)
    with torch.no_grad():
        fd = (mixed(p_t + h * direction, q_t, s_t).sum() - mixed(p_t - h * direction, q_t, s_t).sum()) / (2 * h)
    assert float(fd) == pytest.approx(float((g_p * direction).sum()), rel=1e-3, abs=1e-6)


def test_gradmap_feasibility_network_term_smoke(setup, tmp_path):
    pytest.importorskip("cvxpylayers")
    _, _, _, _, world = setup
    learner = make_learner(setup, network_term="feasibility_distance", budget_iterations=2)
    assert learner.duals.uses_feasibility and learner.duals.network() == [learner.duals.feasibility]
    voltage_before = learner.duals.voltage.clone()
    feasibility_before = learner.duals.feasibility.clone()
    grads_before = world.env.counters.env_gradient_evaluations  # the module's world is shared
    result = Trainer(world, out_dir=tmp_path, progress=False).fit(learner)
    assert result.iterations == 2 and world.env.counters.env_gradient_evaluations - grads_before == 2
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    distances = [float(r["train_feasibility_distance"]) for r in rows[1:]]
    assert len(distances) == 2 and all(np.isfinite(distances))
    # the tiny world's no-control days sag below the training limit: the hourly dual ascends,
    # the (unused) AC voltage duals do not
    assert max(distances) > 0
    assert not torch.equal(learner.duals.feasibility, feasibility_before)
    assert torch.equal(learner.duals.voltage, voltage_before)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    fresh = make_learner(setup, network_term="feasibility_distance")
    fresh.load_state_dict(state["learner"])
    assert torch.equal(fresh.duals.feasibility, learner.duals.feasibility)


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_training_clock_reads_wall_or_cpu_time(setup, tmp_path, clock):
    """``training_clock: cpu`` counts the process's CPU time: an iteration that waits (another
    process on the core, here a sleep) does not advance it; ``wall`` does."""
    import time

    learner = make_learner(setup, budget_iterations=2, validation_interval_iterations=1, training_clock=clock)
    inner = learner.train_iteration
    sleep_s = 0.5

    def waiting_iteration(trainer):
        time.sleep(sleep_s)
        return inner(trainer)

    learner.train_iteration = waiting_iteration
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the cpu clock sums threads' time: one thread, as documented
    try:
        started = time.perf_counter()
        result = Trainer(setup[4], out_dir=tmp_path, progress=False).fit(learner)
        elapsed_s = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    if clock == "wall":
        assert result.train_seconds >= 2 * sleep_s
    else:  # CPU time <= wall time, and the sleeps are not in it
        assert result.train_seconds <= elapsed_s - 2 * sleep_s
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert float(rows[-1]["wall_s"]) == pytest.approx(result.train_seconds, abs=1e-3)  # 4 decimals
