"""``reference``: the centralised perfect-foresight convex OPF (docs/design.md §1), registered as a learner.

Per day, one convex program over all devices and steps with full knowledge of the day
(:meth:`ReferenceLearner.prepare` is handed the days about to be rolled out):

    min  sum_t price_t dt P_src,t  +  device costs  +  w_V sum(sigma_V) dt + w_I sum(sigma_I) dt
         + w_comfort (discomfort degC h)
    s.t. every fleet's :meth:`~gridflex.plugins.contracts.DeviceModel.convex_model` (dynamics, local
         limits, end-of-day conditions);
         nodal injections P, Q [n_inj, T] = PV + sum_f A_f p_f (sparse agent -> node map);
         Y v_t + J_t (v_t - v*_t) + W_t (s_t - s*_t) = i_norton - drawn(v*_t, s*_t)   (all nodes)
         v_lo - sigma_V <= |V|_t ~ Re(conj(u*) u_t)/|u*| <= v_hi + sigma_V      (monitored, pu)
         || Yprim v_t / I_max ||_2 <= 1 + sigma_I                                  (rated conductors)
         P_src,t ~ P*_src,t + grad P*_src,t . (v_src,t - v*_src,t)                  (kW)

with the sparse linearised AC equations of :mod:`gridflex.network.equations` (node voltages as
variables, stiff switches and regulators eliminated as ideal). It is built **once** per
environment as a DPP cvxpy problem: the day's data (PV, temperatures, prices) and the operating
point's values (Jacobians, magnitude directions, offsets) enter only as Parameters, and each solve
(Clarabel) reuses the compiled problem. Above ``dpp_max_agent_steps`` (IEEE 123 x 1,000 agents)
the same problem is solved with ``ignore_dpp`` (Parameters as constants, recompiled per solve:
0.4 s there).

**AC loop.** The first operating point is the day's AC solution with idle devices; after each
solve the plan is replayed through the environment's exact AC solver and the model re-linearised
at that AC solution (a Newton step of the AC OPF). A voltage margin ``margin_step_pu`` is added
from the third iteration on while the AC plan violates, up to ``max_margin_pu``. Iteration stops
when the AC violation rate (voltage and line) is zero, when it is no more than the plan's own
priced slacks (nothing the devices can do removes the rest), when it stops improving with no
margin left, or after ``max_iterations``; the plan with the lowest (violation rate, AC cost) is
kept. The network is the environment's, at its fixed taps (``frozen`` or ``settled`` tap
treatment); a ``regulated`` scenario is refused. Where a battery plan charges and discharges at once, the minority direction is banned at
those agent-steps and the day re-solved (:meth:`ConvexFleet.exclude_simultaneous`).

:meth:`act` replays the plan: each fleet's ``to_u`` maps the planned action back to ``u`` through
the device's state-dependent action bounds. Per-day iterations, solve seconds and AC metrics are
in :meth:`ReferenceLearner.report` (``metrics.json`` keeps its contract).

cvxpy is imported lazily (in :meth:`prepare`): importing this module needs only torch.
"""

from __future__ import annotations

import time
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field

from gridflex.plugins.contracts import Learner, StepInputs, StrictConfig
from gridflex.errors import UserError
from gridflex.plugins.hookspecs import hookimpl


#: tolerances fit for a plan whose cost is in EUR/day and voltages in pu (Clarabel's defaults,
#: 1e-8, spend most iterations on digits that the AC re-evaluation discards anyway)
SOLVER_OPTIONS = {"CLARABEL": {"tol_gap_abs": 1e-4, "tol_gap_rel": 1e-6, "tol_feas": 1e-7, "max_iter": 150}}
#: tried in order when a solve fails numerically (seen on IEEE 123 x 1,000 agents, a high-PV
#: validation day: "Solver 'CLARABEL' failed" at the first solve): more iterations, looser
#: tolerances and a larger static regularisation, which Clarabel documents for ill-conditioned KKT
#: systems; the plan is re-checked on the AC solver anyway
SOLVER_RETRIES = {"CLARABEL": [
    {"tol_gap_abs": 1e-3, "tol_gap_rel": 1e-5, "tol_feas": 1e-6, "max_iter": 400,
     "static_regularization_constant": 1e-7},
    {"tol_gap_abs": 1e-2, "tol_gap_rel": 1e-4, "tol_feas": 1e-5, "max_iter": 800,
     "static_regularization_constant": 1e-6, "equilibrate_max_iter": 50},
]}


class ReferenceLearner(Learner):
    """Centralised perfect-foresight convex OPF on the linearised network, AC re-linearised."""

    name: ClassVar[str] = "reference"
    trains: ClassVar[bool] = False
    role: ClassVar[str] = "planner"

    class Config(StrictConfig):
        v_limits_pu: tuple[float, float] = Field(
            (0.95, 1.05), description="voltage limits the plan must meet (pu); match the scenario's limits.v_limits_pu")
        line_limits: bool = Field(True, description="impose line ratings (match the scenario's limits.line_limits)")
        max_iterations: int = Field(6, ge=1, le=50, description="cap on AC re-evaluations (re-linearisations) per day")
        margin_step_pu: float = Field(0.002, ge=0, le=0.05, description="voltage margin added per iteration while the AC plan violates (pu)")
        max_margin_pu: float = Field(0.01, ge=0, le=0.1, description="largest voltage margin (pu)")
        min_improvement: float = Field(
            1e-4, ge=0, description="stop re-linearising when the AC violation rate (voltage + line) improves by less than this")
        voltage_slack_eur_per_pu_h: float = Field(1e5, gt=0, description="price of the voltage slack (EUR per pu per node-hour)")
        line_slack_eur_per_h: float = Field(1e4, gt=0, description="price of the line slack (EUR per unit overload per conductor-hour)")
        discomfort_eur_per_degc_h: float = Field(50.0, gt=0, description="price of soft device residuals, e.g. heat-pump discomfort (EUR per degC h)")
        solver: str = Field("CLARABEL", description="cvxpy conic solver")
        max_current_coefficient: float = Field(
            1e3, gt=0, description="rated conductors whose current changes by more than this many ratings per pu of "
            "voltage (regulator windings) are checked on the AC replay only (ratings per pu)")
        dpp_max_agent_steps: int = Field(
            20000, ge=0, description="above this many agent-steps, solve with parameters as constants (recompile per solve): "
            "cvxpy's DPP parameter tensor grows with rows x variables and exhausts memory on IEEE 123 x 1,000 agents")

    def __init__(self, config, env, *, seed: int = 0):
        config = config if isinstance(config, self.Config) else self.Config.model_validate(config or {})
        super().__init__(config, env, seed=seed)
        self._opf = None
        self._plans: list[torch.Tensor] | None = None
        self._report: dict = {}

    # ------------------------------------------------------------------ planning
    def prepare(self, exogenous, on_day=None) -> None:
        """Plan every day of ``exogenous`` (perfect foresight), see the module docstring."""
        if self.env.tap_treatment == "regulated":
            raise UserError(
                "the reference plans on one fixed network, and this scenario's feeder.tap_treatment is "
                "'regulated' (taps chosen by the tap controller inside the rollout, an integer decision "
                "the convex plan cannot make); use tap_treatment 'settled' or 'frozen' for a scenario "
                "that needs C_ref (docs/network.md, Regulators)")
        if self._opf is None:
            self._opf = ReferenceOPF(self.env, self.config, exogenous.steps, exogenous.dt_h)
        plans = [[] for _ in self.env.fleets]
        days = []
        for b in range(exogenous.batch):
            actions, report = self._opf.plan_day(exogenous, b)
            for f, a in enumerate(actions):
                plans[f].append(a)
            days.append(report)
            if on_day is not None:
                on_day(b, self.describe_day(report))
        tensor = dict(device=self.env.device, dtype=self.env.dtype)
        self._plans = [torch.as_tensor(np.stack(p), **tensor) for p in plans]  # [B, T, N, d]
        self._report = {
            "days": days,
            "solve_seconds_per_day": float(np.mean([d["solve_seconds"] for d in days])),
            "wall_seconds_per_day": float(np.mean([d["wall_seconds"] for d in days])),
            "iterations_per_day": float(np.mean([d["iterations"] for d in days])),
            "ac_violation_rate": float(np.mean([d["ac_violation_rate"] for d in days])),
            "ac_line_overload_rate": float(np.mean([d["ac_line_overload_rate"] for d in days])),
            "build_seconds": self._opf.build_seconds,
            "solver_retries": self._opf.retries,
        }

    def report(self) -> dict:
        """The last :meth:`prepare`'s per-day plan report (iterations, solve seconds, AC metrics)
        and its means, written to ``learner_extras.json``."""
        return self._report

    @staticmethod
    def describe_day(day: dict) -> str:
        """One line on a planned day's report (progress output of ``gridflex run`` / ``targets``)."""
        return (f"{day['iterations']} iterations, {day['solve_seconds']:.0f} s solve, AC violation "
                f"{day['ac_violation_rate']:.4f}, line overload {day['ac_line_overload_rate']:.4f}")

    def act(self, fleet_index: int, t: int, obs: torch.Tensor, state: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        if self._plans is None:
            raise RuntimeError("the reference plans with perfect foresight: call prepare(exogenous) first")
        action = self._plans[fleet_index][:, t]
        return self._opf.fleets[fleet_index].to_u(action, state, inputs)


class ReferenceOPF:
    """The DPP problem of one environment (module docstring) and its AC re-linearisation loop."""

    def __init__(self, env, config: ReferenceLearner.Config, steps: int, dt_h: float):
        import cvxpy as cp
        import scipy.sparse as sp

        from gridflex.network.equations import NetworkEquations
        from gridflex.network.powerflow import build_network

        t0 = time.perf_counter()
        self.env, self.config, self.steps, self.dt_h, self.cp = env, config, steps, dt_h, cp
        n_inj = len(env.injection_nodes)
        vmon, imon = env.voltage_monitor, env.current_monitor
        self.use_lines = bool(config.line_limits and len(imon))
        columns = np.asarray(imon.columns if self.use_lines else [], dtype=np.int64)
        self.eq = eq = NetworkEquations(build_network(env.grid, env.injection_nodes), env.grid,
                                        vmon.node_a, vmon.node_b, columns)
        self.rating_a = np.asarray(imon.rating_a, dtype=float) if self.use_lines else np.zeros(0)

        # fleets and the sparse agent -> node maps
        self.fleets, p_nodes, q_nodes = [], 0, 0
        col = {int(n): k for k, n in enumerate(env.injection_nodes)}
        cost, penalty, constraints = 0, 0, []
        for fleet in env.fleets:
            cf = fleet.model.convex_model(cp, steps)
            if cf is None:
                raise UserError(f"device type {fleet.model.name!r} has no convex_model: the reference cannot plan it")
            rows, cols, vals = [], [], []
            for i, nodes in enumerate(fleet.placement.nodes):
                for node in nodes:
                    rows.append(col[int(node)]), cols.append(i), vals.append(1.0 / len(nodes))
            a = sp.csr_matrix((vals, (rows, cols)), shape=(n_inj, fleet.n_agents))
            p_nodes = p_nodes + a @ cf.p_kw
            q_nodes = q_nodes + a @ cf.q_kvar
            cost, penalty, constraints = cost + cf.cost, penalty + cf.penalty, constraints + cf.constraints
            self.fleets.append(cf)
        self.p_nodes = cp.Variable((n_inj, steps), name="p_nodes_kw")  # device consumption
        self.q_nodes = cp.Variable((n_inj, steps), name="q_nodes_kvar")
        constraints += [self.p_nodes == p_nodes, self.q_nodes == q_nodes]

        # network: sparse linearised equations in the node voltages x [2n, T] (gridflex.network.equations);
        # operating-point values and the day's data are Parameters
        self.n_lines_dropped, self.i_slack = 0, None
        par = lambda shape, name: cp.Parameter(shape, name=name)  # noqa: E731
        jp, dp, mp = eq.jac_pattern, eq.dev_pattern, eq.mag_pattern
        nz2 = 2 * eq.n_merged
        self.jac, self.dev = par((jp.nnz, steps), "jacobian"), par((dp.nnz, steps), "device_sensitivity")
        self.rhs, self.mag = par((nz2, steps), "rhs"), par((mp.nnz, steps), "magnitude_direction")
        self.src_price = par((2 * eq.n_src, steps), "price_x_source_gradient")
        self.src_const = cp.Parameter(name="source_energy_constant")
        self.v_lo, self.v_hi = cp.Parameter(name="v_lo_pu"), cp.Parameter(name="v_hi_pu")
        z = cp.Variable((nz2, steps), name="z_pu")  # real-stacked merged node voltages
        s = cp.vstack([self.p_nodes, self.q_nodes])
        # rows scaled to unit largest admittance: regulator and source rows are ~1e5 pu, a line's ~1e2
        self.row_scale = 1.0 / np.maximum(abs(eq.y).max(axis=1).toarray().ravel(), 1.0)
        d = sp.diags(self.row_scale)
        constraints.append((d @ eq.y) @ z + (d @ eq.jac_rows) @ cp.multiply(self.jac, eq.jac_cols @ z)
                           + (d @ eq.dev_rows) @ cp.multiply(self.dev, eq.dev_cols @ s) == self.rhs)
        m = len(vmon)
        self.v_offset = par((m, steps), "v_offset_pu")  # eliminated elements' drops (NetworkEquations.merged_offsets)
        vm = eq.mag_rows @ cp.multiply(self.mag, eq.mag_cols @ z) + self.v_offset  # [m, T]
        v_slack = self.v_slack = cp.Variable((m, steps), nonneg=True, name="v_slack_pu")
        constraints += [vm >= self.v_lo - v_slack, vm <= self.v_hi + v_slack]
        slack_cost = config.voltage_slack_eur_per_pu_h * dt_h * cp.sum(v_slack)
        if self.use_lines:
            # currents in units of each rating; conductors whose current is the difference of two
            # nearly equal voltages (regulator windings: ~1e5 ratings per pu) are left to the AC check
            scale = sp.diags(np.concatenate([1.0 / self.rating_a] * 2))
            per = scale @ eq.current
            coef = abs(scale @ eq.current_real).max(axis=1).toarray().ravel()
            r_all = len(self.rating_a)
            keep = np.flatnonzero(np.maximum(coef[:r_all], coef[r_all:]) <= config.max_current_coefficient)
            self.n_lines_dropped = r_all - len(keep)
            r = len(keep)
            i_ri = cp.Variable((2 * r, steps), name="currents_per_rating")  # [Re I; Im I] / I_max
            # the equality rows carry the large coefficients (equilibrated per row); the cones stay clean
            self.current_rows = np.concatenate([keep, r_all + keep])
            self.i_offset = par((2 * r, steps), "i_offset_per_rating")
            constraints.append(i_ri == per[self.current_rows] @ z + self.i_offset)
            i_slack = self.i_slack = cp.Variable((r, steps), nonneg=True, name="i_slack")
            flat = lambda e: cp.reshape(e, (r * steps,), order="C")  # noqa: E731
            constraints.append(cp.SOC(flat(1 + i_slack), cp.vstack([flat(i_ri[:r]), flat(i_ri[r:])]), axis=0))
            slack_cost = slack_cost + config.line_slack_eur_per_h * dt_h * cp.sum(i_slack)
        energy = cp.sum(cp.multiply(self.src_price, eq.src_select @ z)) + self.src_const
        objective = energy + cost + slack_cost + config.discomfort_eur_per_degc_h * penalty
        self.problem = cp.Problem(cp.Minimize(objective), constraints)
        assert self.problem.is_dpp()
        self.ignore_dpp = env.n_agents * steps > config.dpp_max_agent_steps
        self.retries = 0  # solves that needed a retry with looser settings
        self.build_seconds = time.perf_counter() - t0

    # ------------------------------------------------------------------ one day
    def _solve(self) -> float:
        """Solve the day's problem; on a numerical failure retry with :data:`SOLVER_RETRIES`
        (counted in ``self.retries``) before giving up."""
        t0 = time.perf_counter()
        name = self.config.solver.upper()
        attempts = [SOLVER_OPTIONS.get(name, {}), *SOLVER_RETRIES.get(name, [])]
        for k, options in enumerate(attempts):
            try:
                self.problem.solve(solver=self.config.solver, ignore_dpp=self.ignore_dpp, **options)
            except Exception as error:  # noqa: BLE001 - cvxpy raises SolverError and others
                failure = error
            else:
                if self.problem.status in ("optimal", "optimal_inaccurate"):
                    self.retries += k
                    return time.perf_counter() - t0
                failure = RuntimeError(f"solver status {self.problem.status}")
        raise RuntimeError(f"reference OPF: {failure} (after {len(attempts)} attempts)")

    def _solve_physical(self, max_rounds: int = 3) -> tuple[float, int]:
        """Solve; where a plan charges and discharges one device at once, ban the minority
        direction there and re-solve (at most ``max_rounds`` more). Returns (seconds, agent-steps banned)."""
        seconds, banned = self._solve(), 0
        for _ in range(max_rounds):
            changed = sum(cf.exclude_simultaneous() for cf in self.fleets)
            if not changed:
                break
            banned += changed
            seconds += self._solve()
        return seconds, banned

    def _ac(self, load_scale, p_inj, q_inj):
        """AC solution of one day's nodal injections [T, n_inj] (numpy) with the env's solver."""
        env = self.env
        tensor = dict(device=env.device, dtype=env.dtype)
        with torch.no_grad():
            flow = env.solver.solve(torch.as_tensor(load_scale, **tensor), torch.as_tensor(p_inj, **tensor),
                                    torch.as_tensor(q_inj, **tensor))
            vm = env.voltage_monitor.magnitudes_pu(flow.v_pu).cpu().numpy()  # [T, m]
            currents = (flow.branch_currents_a[..., torch.as_tensor(env.current_monitor.columns, device=env.device)]
                        .cpu().numpy() if self.use_lines else None)
        return flow, vm, currents

    def _linearise_at(self, flow, load_scale, p_inj, q_inj, price_dt) -> None:
        """Set the network Parameters to the linearisation at the AC solution ``flow``."""
        point = self.eq.at(flow.v_pu.cpu().numpy(), load_scale, p_inj, q_inj)
        self.jac.value, self.dev.value, self.mag.value = point.jac_values, point.dev_values, point.mag_values
        # PV is data: its share of the device term moves to the right-hand side
        dp = self.eq.dev_pattern
        pv = np.concatenate([p_inj - self._p_dev, np.zeros_like(q_inj)], axis=1).T  # [2 n_inj, T]
        self.rhs.value = self.row_scale[:, None] * (self.eq.merge.T @ (point.rhs - dp.rows @ (point.dev_values * (dp.cols @ pv))))
        self.src_price.value = point.src_grad * price_dt[None, :]
        v_off, i_off, p_off = self.eq.merged_offsets(point, p_inj, q_inj)
        self.v_offset.value = v_off
        if self.use_lines:
            per = np.concatenate([i_off.real, i_off.imag]) / np.concatenate([self.rating_a] * 2)[:, None]
            self.i_offset.value = per[self.current_rows]
        self.src_const.value = float(((point.src_const + p_off) * price_dt).sum())

    def _planned_violation_rate(self) -> float:
        """Share of node-steps plus conductor-steps (each over its own count, as the AC rates)
        that the solved plan leaves outside the limits (slack above 1e-6 pu or rating units)."""
        rate = float((self.v_slack.value > 1e-6).mean())
        if self.use_lines and self.i_slack is not None and self.i_slack.size:
            rate += float((self.i_slack.value > 1e-6).sum()) / (len(self.rating_a) * self.steps)
        return rate

    def plan_day(self, exo, b: int) -> tuple[list[np.ndarray], dict]:
        """Plan day ``b`` of ``exo``; returns per-fleet actions ``[T, N, d]`` and a report."""
        cfg, t_start = self.config, time.perf_counter()
        load_scale = exo.load_scale[b].cpu().numpy()  # [T, L]
        pv = exo.pv_injection_kw[b].cpu().numpy()  # [T, n_inj] (consumption sign)
        temp, price = exo.temp_out_c[b].cpu().numpy(), exo.price_per_kwh[b].cpu().numpy()
        for cf in self.fleets:
            cf.set_day(temp, price)
        price_dt = price * exo.dt_h
        v_min, v_max = cfg.v_limits_pu
        # first operating point: the day's loads and PV, devices idle
        p_inj, q_inj = pv.copy(), np.zeros_like(pv)
        self._p_dev = np.zeros_like(pv)
        flow, _, _ = self._ac(load_scale, p_inj, q_inj)
        margin, solve_s, best, history = 0.0, 0.0, None, []
        for k in range(cfg.max_iterations):
            self._linearise_at(flow, load_scale, p_inj, q_inj, price_dt)
            self.v_lo.value, self.v_hi.value = v_min + margin, v_max - margin
            try:
                seconds, excluded = self._solve_physical()
                solve_s += seconds
            except Exception as error:  # noqa: BLE001 - cvxpy raises SolverError and others
                if best is None:
                    raise RuntimeError(f"reference OPF, day {b}: the first convex solve failed ({error})") from error
                history.append({"iteration": k + 1, "solver_failed": str(error)})
                break
            self._p_dev, q_dev = self.p_nodes.value.T, self.q_nodes.value.T  # [T, n_inj]
            p_inj, q_inj = pv + self._p_dev, q_dev
            flow, vm_ac, i_ac = self._ac(load_scale, p_inj, q_inj)
            v_rate = float(((vm_ac < v_min) | (vm_ac > v_max)).mean())
            i_rate = float((np.abs(i_ac) > self.rating_a).mean()) if self.use_lines else 0.0
            converged = bool(flow.converged.all())
            cost = float((price * flow.source_power_kw.real.cpu().numpy()).sum() * exo.dt_h
                         + sum(float(np.asarray(cf.cost.value if hasattr(cf.cost, "value") else cf.cost))
                               for cf in self.fleets))
            record = {"iteration": k + 1, "ac_violation_rate": v_rate, "ac_line_overload_rate": i_rate,
                      "ac_cost": cost, "margin_pu": margin, "objective": float(self.problem.value),
                      "simultaneous_banned": excluded,
                      "converged": converged}
            history.append(record)
            score = (not converged, v_rate + i_rate, cost)
            # settled: the AC violations are those the plan itself accepts (priced slack: no
            # device schedule removes them), or no progress and no margin left to try
            planned = self._planned_violation_rate()
            record["planned_violation_rate"] = planned
            stalled = v_rate + i_rate <= planned + cfg.min_improvement or (
                best is not None and v_rate + i_rate > best[0][1] - cfg.min_improvement
                and (v_rate == 0.0 or margin >= cfg.max_margin_pu))
            if best is None or score < best[0]:
                best = (score, [cf.actions() for cf in self.fleets], record,
                        [cf.diagnostics() for cf in self.fleets])
            if converged and v_rate == 0.0 and i_rate == 0.0:
                break
            if not converged or stalled:  # no AC point to re-linearise at / Newton has settled
                break
            if k >= 1:
                margin = min(margin + cfg.margin_step_pu, cfg.max_margin_pu)
        _, actions, final, diagnostics = best
        report = {"iterations": len(history), "solve_seconds": solve_s,
                  "wall_seconds": time.perf_counter() - t_start, **{k: final[k] for k in (
                      "ac_violation_rate", "ac_line_overload_rate", "ac_cost", "margin_pu")},
                  "history": history, "diagnostics": diagnostics}
        return actions, report


@hookimpl
def gridflex_register_learners(register) -> None:
    register(ReferenceLearner)
