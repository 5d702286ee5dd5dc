"""The dual update that can fall (docs/design.md §3 step 4): :func:`dual_step`, ``Duals.ascend`` with both
measures, the per-family report, a primal-dual loop that reaches known KKT points, and the
per-family columns of ``history.csv``.

Everything but the last test runs on hand-made tensors (a stand-in environment with 3 monitored
node-phases, 2 rated conductors and two fleets); the last reuses ``test_gradmap``'s tiny world.
"""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
import torch

from plugins.learners.gradmap.lagrangian import (
    FAMILIES, DualAscent, DualInit, Duals, ResidualMeans, dual_step)
from plugins.learners.gradmap.learners import GradMAP, PolicyLearnerConfig, dual_ascent_rule

from test_gradmap import fixed_days, make_learner, setup  # noqa: F401  (setup: fixture)

LAM_MAX = 1000.0


def stand_in_env():
    """What :class:`Duals` reads of an environment: 3 node-phases, 2 conductors, fleets with
    (agents, local residuals, end-of-day residuals) = (4, 1, 1) and (2, 0, 1)."""
    def fleet(n, r_loc, r_end):
        return SimpleNamespace(n_agents=n, model=SimpleNamespace(
            residual_names=["comfort"] * r_loc, terminal_residual_names=["energy"] * r_end))

    return SimpleNamespace(device=torch.device("cpu"), voltage_monitor=SimpleNamespace(names=["a", "b", "c"]),
                           current_monitor=[0, 1], fleets=[fleet(4, 1, 1), fleet(2, 0, 1)])


def make_duals(init=100.0, feasibility=False) -> Duals:
    return Duals(stand_in_env(), 24, 1.0, DualInit(init, init, init, init, init), feasibility=feasibility)


def measures(duals: Duals, residual=0.0, voltage_signed=-2.0, line_signed=-0.5) -> ResidualMeans:
    """Every mean residual ``residual``; signed measures as given (negative: slack)."""
    full = lambda lam, x: torch.full_like(lam, x)  # noqa: E731
    return ResidualMeans(voltage=full(duals.voltage, residual), line=full(duals.line, residual),
                         local=[full(x, residual) for x in duals.local],
                         terminal=[full(x, residual) for x in duals.terminal],
                         feasibility=full(duals.feasibility, residual),
                         voltage_signed=full(duals.voltage, voltage_signed), line_signed=full(duals.line, line_signed))


def rule(measure="violation", rho=10.0, allowed=None) -> DualAscent:
    allowed = allowed or {"voltage": 1e-3, "line": 2e-3, "local": 1e-2, "terminal": 2e-2, "feasibility": 3e-3}
    return DualAscent(rho={f: rho for f in FAMILIES}, allowed=allowed, lam_max=LAM_MAX, measure=measure)


def test_dual_step_falls_rises_and_clips_in_place():
    lam = torch.tensor([0.5, 50.0, 999.0, 10.0], dtype=torch.float64)
    out = dual_step(lam, torch.tensor([-1.0, -1.0, 5.0, 0.0]), rho=1.0, allowed=0.0, lam_max=LAM_MAX)
    assert out is lam and lam.dtype == torch.float64
    assert lam.tolist() == [0.0, 49.0, LAM_MAX, 10.0]
    dual_step(lam, torch.zeros(4), rho=100.0, allowed=0.01, lam_max=LAM_MAX)  # satisfied: falls by rho eps
    assert lam.tolist() == pytest.approx([0.0, 48.0, LAM_MAX - 1.0, 9.0])


@pytest.mark.parametrize("measure", ["violation", "signed"])
def test_satisfied_constraints_lower_their_duals(measure):
    duals = make_duals(100.0)
    r = rule(measure)
    duals.ascend(measures(duals), r)
    if measure == "signed":  # |V| 0.02 pu inside the band, lines at half rating: fall with the slack
        assert torch.allclose(duals.voltage, torch.full_like(duals.voltage, 100.0 - 10.0 * (2.0 + 1e-3)))
        assert torch.allclose(duals.line, torch.full_like(duals.line, 100.0 - 10.0 * (0.5 + 2e-3)))
    else:  # zero residual: fall by rho * eps
        assert torch.allclose(duals.voltage, torch.full_like(duals.voltage, 100.0 - 10.0 * 1e-3))
        assert torch.allclose(duals.line, torch.full_like(duals.line, 100.0 - 10.0 * 2e-3))
    # device-local and end-of-day duals always move with violation - allowed
    assert all(torch.allclose(x, torch.full_like(x, 100.0 - 10.0 * 1e-2)) for x in duals.local)
    assert all(torch.allclose(x, torch.full_like(x, 100.0 - 10.0 * 2e-2)) for x in duals.terminal)
    assert duals.feasibility.eq(100.0).all()  # not in use with the AC network term

    fast = rule(measure, rho=1e6)
    for _ in range(2):  # never below 0 ...
        duals.ascend(measures(duals), fast)
    assert all(bool(t.eq(0.0).all()) for t in duals.tensors())
    for _ in range(2):  # ... nor above lam_max
        duals.ascend(measures(duals, residual=5.0, voltage_signed=5.0, line_signed=5.0), fast)
    assert all(bool(t.eq(LAM_MAX).all()) for t in duals.tensors())


def test_feasibility_family_uses_violation_and_leaves_ac_duals():
    duals = make_duals(100.0, feasibility=True)
    duals.ascend(measures(duals), rule("signed"))
    assert torch.allclose(duals.feasibility, torch.full_like(duals.feasibility, 100.0 - 10.0 * 3e-3))
    assert duals.voltage.eq(100.0).all() and duals.line.eq(100.0).all()


def test_rule_from_config_per_family_rates():
    cfg = PolicyLearnerConfig(rho=10.0, rho_line=3.0, rho_terminal=0.0, dual_measure="signed")
    r = dual_ascent_rule(cfg)
    assert r.rho == {"voltage": 10.0, "line": 3.0, "local": 10.0, "terminal": 0.0, "feasibility": 10.0}
    assert r.measure == "signed" and r.lam_max == cfg.lambda_max
    assert all(r.allowed[f] == getattr(cfg, f"dual_allowed_{f}") > 0 for f in FAMILIES)


def test_family_report_means_and_shares_at_lambda_max():
    duals = make_duals(10.0)
    duals.voltage[:6] = LAM_MAX  # 6 of 24 hours x 3 node-phases = 18 of 72 entries
    duals.voltage[6, 0] = LAM_MAX * (1 - 1e-12)  # within the tolerance: counts
    duals.voltage[6, 1] = LAM_MAX * (1 - 1e-6)  # not at the clip
    duals.terminal[1][:] = LAM_MAX  # 2 of 4 + 2 end-of-day entries
    report = duals.family_report(LAM_MAX)
    assert set(report) == {f"dual_{f}_{k}" for f in ("voltage", "line", "local", "terminal")
                           for k in ("mean", "at_max")}
    assert report["dual_voltage_at_max"] == pytest.approx(19 / 72)
    assert report["dual_voltage_mean"] == pytest.approx(float(duals.voltage.mean()))
    assert report["dual_line_at_max"] == 0.0 and report["dual_line_mean"] == pytest.approx(10.0)
    assert report["dual_local_at_max"] == 0.0 and report["dual_local_mean"] == pytest.approx(10.0)
    assert report["dual_terminal_at_max"] == pytest.approx(2 / 6)
    assert report["dual_terminal_mean"] == pytest.approx((4 * 10.0 + 2 * LAM_MAX) / 6)

    feasible = make_duals(10.0, feasibility=True)
    feasible.feasibility[:3] = LAM_MAX
    report = feasible.family_report(LAM_MAX)
    assert "dual_voltage_mean" not in report and report["dual_feasibility_at_max"] == pytest.approx(3 / 24)


# minimise |x - c|^2 s.t. A x <= b: (c, A, b, x*, lam*) with active and inactive constraints
KKT_PROBLEMS = {
    "one_active": ([2.0, 1.0], [[1.0, 1.0], [1.0, -1.0], [0.0, -1.0]], [2.0, 5.0, 0.0],
                   [1.5, 0.5], [1.0, 0.0, 0.0]),
    "two_active": ([2.0, 2.0], [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [1.0, 1.5, 3.0],
                   [1.0, 1.5], [2.0, 1.0, 0.0]),
}


@pytest.mark.parametrize("name", KKT_PROBLEMS)
def test_primal_dual_loop_reaches_the_kkt_point(name):
    """Gradient descent on x, :func:`dual_step` on lam with the signed measure ``A x - b`` and
    ``eps = 0``: the KKT point is the limit; duals of inactive constraints (started at 5) fall to 0."""
    c, a, b, x_star, lam_star = (torch.tensor(v, dtype=torch.float64) for v in KKT_PROBLEMS[name])
    x = torch.zeros(2, dtype=torch.float64)
    lam = torch.full((3,), 5.0, dtype=torch.float64)
    for _ in range(3000):
        x = x - 0.1 * (2 * (x - c) + a.T @ lam)
        dual_step(lam, a @ x - b, rho=0.1, allowed=0.0, lam_max=1e3)
    assert (x - x_star).abs().max() < 1e-3
    assert (lam - lam_star).abs().max() < 1e-3
    assert lam[lam_star == 0].eq(0.0).all()


def test_history_has_the_per_family_columns(setup, tmp_path):  # noqa: F811
    from gridflex.learning.training import BASE_COLUMNS, Trainer

    _, _, _, _, world = setup
    learner = make_learner(setup, dual_measure="signed", budget_iterations=1)
    trainer = Trainer(world, out_dir=tmp_path, progress=False)
    with torch.no_grad():  # the signed means: negative with slack, never above the violation means
        means = learner._lagrangian(trainer, world.env.rollout(fixed_days(world, 1), learner.act)).means
    assert means.voltage_signed.shape == means.voltage.shape and means.line_signed.shape == means.line.shape
    assert bool((means.voltage_signed <= means.voltage + 1e-12).all())
    assert bool((means.voltage_signed[means.voltage == 0] < 0).all())
    assert bool((means.line_signed <= means.line).all())

    trainer.fit(learner)
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert list(rows[0]) == [*BASE_COLUMNS, *GradMAP.dual_columns, *GradMAP.history_extras, "meets_target"]
    assert len(rows) == 2
    for row in rows:
        for family in ("voltage", "line", "local", "terminal"):
            assert float(row[f"dual_{family}_mean"]) >= 0.0
            assert 0.0 <= float(row[f"dual_{family}_at_max"]) <= 1.0
        assert row["dual_feasibility_mean"] == row["dual_feasibility_at_max"] == ""
    assert float(rows[-1]["dual_voltage_mean"]) == pytest.approx(float(learner.duals.voltage.mean()), rel=1e-5)
