"""Sync-free power flow (``ac3ph`` ``sync_free: true``): the same answers without host syncs.

The adaptive fixed point drops finished rows from its working set, which asks the host every
iteration whether a row finished; the sync-free schedule iterates every row ``max_iter`` times
and freezes finished rows with masks, so a GPU can record it (issue 20, item 2). Checked here on
CPU:

1. both schedules give the same voltages, flags, iteration counts, residuals and implicit
   gradients, including rows that converge late, never converge within ``max_iter``, or diverge;
   also with per-sample regulator taps;
2. a closed-loop rollout and its environment gradient run with no host-synchronising operation at
   all (:class:`gridflex.testing.HostSyncs`), and the detector does see the adaptive path's;
3. an adjoint failure is still reported: deferred to the report's flush, never dropped;
4. the switch leaves the scenario's targets key alone (it changes how, not what).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from conftest import world_from_text
from gridflex.network.powerflow import AdjointReport, SolveOptions, build_network, solve_power_flow
from gridflex.testing import HostSyncs
from test_compiled_step import TEXT
from test_powerflow_gradients import IEEE13_INJECTIONS, make_grid

FIELDS = ("converged", "iterations")


def _solve(net, inputs, options, taps=None):
    scale, p_kw, q_kvar = (t.detach().clone().requires_grad_() for t in inputs)
    report = AdjointReport()
    flow = solve_power_flow(net, scale, p_kw, q_kvar, options=options, adjoint_report=report, taps=taps)
    # no branch currents: through a switch they amplify the last bits of v (docs/network.md), and
    # the two schedules' batched products may round differently once rows have left
    loss = (flow.vm_pu - 1.0).square().sum() + flow.source_power_kw.sum() / 1e3
    grads = torch.autograd.grad(loss, (scale, p_kw, q_kvar))
    return flow, grads, report


def _assert_same(adaptive, sync_free):
    (a, a_grads, a_report), (b, b_grads, b_report) = adaptive, sync_free
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.allclose(a.v_pu, b.v_pu, rtol=0, atol=1e-12)
    finite = torch.isfinite(a.residual_pu)
    assert torch.equal(finite, torch.isfinite(b.residual_pu))
    assert torch.allclose(a.residual_pu[finite], b.residual_pu[finite], rtol=1e-9, atol=1e-15)
    for x, y in zip(a_grads, b_grads):
        assert torch.allclose(x, y, rtol=1e-9, atol=1e-12 * max(float(x.abs().max()), 1.0))
    (a_hist,), (b_hist,) = a_report.history, b_report.history
    assert a_hist.pop("max_residual") == pytest.approx(b_hist.pop("max_residual"), rel=1e-5)
    assert a_hist == b_hist


def _inputs(net, batch: int, seed: int):
    """Rows from light to heavy load, some too heavy to converge within a few iterations."""
    gen = torch.Generator().manual_seed(seed)
    level = torch.linspace(0.2, 2.5, batch, dtype=torch.float64)[:, None]
    scale = level * (0.8 + 0.4 * torch.rand(batch, net.n_loads, generator=gen, dtype=torch.float64))
    p_kw = (torch.rand(batch, net.n_inj, generator=gen, dtype=torch.float64) - 0.3) * 80
    q_kvar = (torch.rand(batch, net.n_inj, generator=gen, dtype=torch.float64) - 0.5) * 30
    return scale, p_kw, q_kvar


@pytest.mark.parametrize("feeder, method", [("ieee13", "dense"), ("ieee13", "sparse"), ("ieee123", "dense")])
def test_sync_free_solve_equals_the_adaptive_one(feeder, method):
    grid = make_grid(feeder)
    net = build_network(grid, IEEE13_INJECTIONS if feeder == "ieee13" else None, method=method)
    inputs = _inputs(net, 24, seed=1)
    # a diverging row: far beyond the feeder's loadability
    inputs[0][-1] *= 40.0
    for max_iter in (9, 40):  # few: rows left unconverged at the cap; enough: all but the diverging
        options = dict(tol_pu=1e-10, max_iter=max_iter, adjoint_tol=1e-10, chunk_rows=10)
        adaptive = _solve(net, inputs, SolveOptions(**options))
        sync_free = _solve(net, inputs, SolveOptions(**options, sync_free=True))
        flow = adaptive[0]
        assert not bool(flow.converged[-1]) and not torch.isfinite(flow.residual_pu[-1])  # diverged
        if max_iter == 9:
            assert 0 < int(flow.converged.sum()) < 23  # some converged, some hit the cap
        else:
            assert bool(flow.converged[:-1].all()) and int(flow.iterations.min()) < int(flow.iterations[:-1].max())
        _assert_same(adaptive, sync_free)


def test_sync_free_with_per_sample_taps():
    from test_regulated_powerflow import Case

    case = Case("ieee13", samples=12, seed=3)
    inputs = (case.load_scale, case.p_kw, case.q_kvar)
    taps = torch.as_tensor(case.taps)
    options = dict(tol_pu=1e-10, max_iter=40, adjoint_tol=1e-10)
    adaptive = _solve(case.net, inputs, SolveOptions(**options), taps=taps)
    sync_free = _solve(case.net, inputs, SolveOptions(**options, sync_free=True), taps=taps)
    assert bool(adaptive[0].converged.all())
    _assert_same(adaptive, sync_free)


# ------------------------------------------------------------------------------ no host syncs
def _policy_rollout(world, days):
    """A closed-loop rollout through per-agent linear policies and its environment gradient
    (the policies act without a graph, as GradMAP's do; the gradient is taken at their outputs)."""
    env = world.env
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(f.n_agents, env.obs_dim(i), f.model.action_dim, generator=generator,
                           dtype=torch.float64) * 0.1 for i, f in enumerate(env.fleets)]
    leaves = []

    def controller(f, t, obs, state, inputs):
        with torch.no_grad():
            u = torch.sigmoid(torch.einsum("bnk,nkd->bnd", obs, weights[f]))
        leaves.append(u.requires_grad_())
        return u

    exo = env.exogenous(days)
    with HostSyncs() as syncs:
        rollout = env.rollout(exo, controller)
        flow = rollout.flow
        loss = (sum(tr.cost.sum() + tr.residuals.square().sum() for tr in rollout.fleets)
                + 1e3 * (flow.vm_pu - 1.0).square().sum() + flow.branch_currents_a.abs().sum() / 1e3)
        grads = torch.autograd.grad(loss, leaves)
    return rollout, grads, syncs


def test_a_sync_free_rollout_and_its_gradient_never_wait_for_the_host(tmp_path):
    overrides = ["solver.type=ac3ph", "solver.params.max_iter=30"]
    _, _, _, adaptive = world_from_text(tmp_path, TEXT, name="adaptive", overrides=overrides)
    _, _, _, sync_free = world_from_text(tmp_path, TEXT, name="sync_free",
                                         overrides=overrides + ["solver.params.sync_free=true"])
    assert sync_free.env.solver.options.sync_free and not adaptive.env.solver.options.sync_free
    days = adaptive.data.split("train").get(np.arange(3))
    ref, ref_grads, ref_syncs = _policy_rollout(adaptive, days)
    got, got_grads, syncs = _policy_rollout(sync_free, days)
    assert ref_syncs.found, "the detector sees the adaptive schedule's syncs"
    assert not syncs.found, syncs.report()
    assert bool(got.flow.converged.all())
    assert torch.equal(ref.flow.iterations, got.flow.iterations)
    assert torch.allclose(ref.flow.v_pu, got.flow.v_pu, rtol=0, atol=1e-12)
    for a, b in zip(ref_grads, got_grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_host_sync_detector():
    x = torch.arange(6.0)
    mask = x > 2
    cases = {
        "bool": lambda: bool(mask.any()),
        "item": lambda: x.sum().item(),
        "mask index": lambda: x[mask],
        "nonzero": lambda: mask.nonzero(),
        "mask assign": lambda: x.clone().__setitem__(mask, 0.0),
    }
    for name, fn in cases.items():
        with HostSyncs() as syncs:
            fn()
        assert len(syncs.found) >= 1, name
        assert "test_sync_free.py" in syncs.found[0].where, syncs.report()
    with HostSyncs() as syncs:  # device-side equivalents
        torch.where(mask, x, 0.0).sum()
        x[torch.tensor([1, 3])]
        x.clone().index_put_((torch.tensor([0]),), torch.tensor(1.0))
    assert not syncs.found, syncs.report()


# ------------------------------------------------------------------------------ reporting
def test_an_unconverged_adjoint_is_reported_at_the_flush():
    grid = make_grid("ieee13")
    net = build_network(grid, IEEE13_INJECTIONS)
    inputs = _inputs(net, 4, seed=2)
    options = SolveOptions(tol_pu=1e-10, max_iter=60, adjoint_tol=1e-14, adjoint_max_iter=2, sync_free=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is read, so nothing is warned, during backward
        flow, _, report = _solve(net, inputs, options)
    assert bool(flow.converged.all())
    with pytest.warns(RuntimeWarning, match="adjoint did not converge for 4 sample"):
        history = report.history
    assert history == [{"rows": 4, "converged": 0, "max_iterations": 2, "max_residual": history[0]["max_residual"]}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # flushed once: read again, no second warning
        assert report.history == history


def test_sync_free_does_not_change_the_targets_key(tmp_path):
    from gridflex.learning.targets import targets_key
    from gridflex.plugins.registry import load_registry
    from gridflex.scenario import load_scenario

    path = tmp_path / "s.yaml"
    path.write_text(TEXT)
    _, registry = load_registry()
    plain = load_scenario(path, ["solver.type=ac3ph"], registry)
    switched = load_scenario(path, ["solver.type=ac3ph", "solver.params.sync_free=true"], registry)
    assert switched.config.solver.params == {"sync_free": True}
    assert targets_key(plain) == targets_key(switched)
    other = load_scenario(path, ["solver.type=ac3ph", "solver.params.max_iter=30"], registry)
    assert targets_key(other) != targets_key(plain)


def test_training_reports_deferred_adjoint_failures_every_iteration(tmp_path):
    """A sync-free training solver's adjoint failures reach the user from ``Trainer.fit`` (it
    flushes the report after each iteration), not only when someone reads the report."""
    from gridflex.learning.training import Trainer
    from gridflex.plugins.registry import load_registry

    overrides = ["solver.type=ac3ph", "solver.params.sync_free=true", "solver.params.adjoint_max_iter=1",
                 "solver.params.adjoint_tol=1e-14"]
    _, _, _, world = world_from_text(tmp_path, TEXT, name="flush", overrides=overrides)
    _, registry = load_registry()
    cls = registry.get("learner", "gradmap")
    config = cls.Config.model_validate({"budget_iterations": 2, "budget_seconds": None, "warm_start_epochs": 0,
                                        "days_per_batch": 2})
    learner = cls(config, world.env, seed=0)
    with pytest.warns(RuntimeWarning, match="adjoint did not converge") as caught:
        Trainer(world, progress=False).fit(learner)
    assert sum("adjoint did not converge" in str(w.message) for w in caught) == 2  # one per iteration
    assert not world.env.solver.adjoint_report._pending
