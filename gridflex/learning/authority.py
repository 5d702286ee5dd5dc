"""The fleet-authority bound: how much of ``no_control``'s violation a scenario's fleet could fix.

Benchmark calibration rule (``tuning/calibrate.py``): a scenario is *reachable* when
``no_control`` violates 2-10 % of validation node-hours under its own tap treatment while this
bound leaves at most 0.1 % of node-hours and of conductor-hours unfixable.

What the bound is
-----------------
1. Roll out ``no_control`` (every fleet's ``baseline_u("no_control", ...)``) on the days ``exo``
   and keep its nodal injections ``P_nc, Q_nc`` ``[B, T, n_inj]`` and device states.
2. Two *extreme* injections, per day and step: every device of every fleet at the extreme of
   its authority (:meth:`DeviceModel.authority_demand`; energy and comfort limits relaxed,
   power and inverter ratings kept), mapped to the injection nodes exactly as
   :meth:`Environment.rollout` does (``pv_injection_kw`` plus every fleet's :meth:`Environment.node_consumption`):
   ``down`` (``direction=+1``: most drawn, then most vars absorbed: lowers voltages) and ``up``
   (``direction=-1``: most injected, then most vars injected: raises them). Household load
   and PV are those of ``no_control`` (uncontrolled).
3. A one-dimensional sweep of ``points`` (odd, >= 3) injections along the segment
   ``down -> no_control -> up``: sweep position ``s`` in ``linspace(-1, 1, points)``, ``s < 0``
   a fraction ``|s|`` of the way from ``no_control`` to ``down``, ``s > 0`` a fraction ``s`` of
   the way to ``up`` (``points = 5``: ``-1, -0.5, 0, 0.5, 1``). Every point is solved with the
   exact AC power flow for all days and steps at once, at the environment's fixed regulator
   taps, or, when ``taps`` ``[B, T, n_reg]`` is given, at those per-sample taps (the taps of
   the ``no_control`` rollout under the scenario's tap treatment, via ``env.solve_at_taps``).
4. A monitored node-hour is **unfixable** when its voltage residual (evaluation limits
   ``v_limits_pu``) is > 0 at *every* sweep point; a rated conductor-hour is unfixable when its
   loading ``|I| / I_max`` is > 1 at every sweep point. A power flow that does not converge
   counts as violated at every monitored node and rated conductor (as in
   :func:`gridflex.learning.metrics.evaluation_metrics`), so a non-converged extreme never "fixes"
   anything.

What it is not
--------------
* Not a proof of reachability. It is a *per-element* best over a one-dimensional sweep of the
  *whole* fleet moving together: each node-hour (conductor-hour) may be fixed by a different
  sweep point, while one controller must pick a single fleet action per step that works for
  every element at once (and an action that fixes an over-voltage at one node may cause an
  overload on a conductor). In that sense it is **optimistic** per node-hour.
* Under a regulated tap treatment the taps stay those ``no_control`` ran at: the regulators do
  not react to the sweep (they might undo part of a fleet action, or help it).
* It ignores energy and comfort limits (a battery at ``+p_max`` every hour of the day; heat
  pumps on or off regardless of temperature), and a sweep of the fleet *at once*: devices may
  not move together in a decentralised policy.
* It is also not the best the fleet could do: only ``points`` points on one segment are tried
  (mixed actions, e.g. batteries absorbing vars while generators inject watts, or moving only
  the devices near a node, are not), so an element the sweep cannot fix might still be fixable.
  Its "unfixable" share is a screening figure: large values flag scenarios whose violations
  the fleet cannot touch (too few devices, in the wrong places, or a substation problem).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gridflex.learning.environment import Environment, Exogenous, Rollout


def no_control_rollout(env: Environment, exo: Exogenous) -> Rollout:
    """``no_control`` on ``exo``'s days (every fleet's ``baseline_u("no_control", ...)``), no grad."""
    def act(f, t, obs, state, inputs):
        return env.fleets[f].model.baseline_u("no_control", state, inputs)

    with torch.no_grad():
        return env.rollout(exo, act)


def extreme_injections(env: Environment, rollout: Rollout, direction: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodal injections ``p_kw, q_kvar`` ``[B, T, n_inj]`` (consumption sign) with every device at
    ``authority_demand(state, inputs, direction)``, the states and step inputs those of
    ``rollout`` (households and PV as in ``rollout``)."""
    exo = rollout.exogenous
    b, steps = exo.batch, exo.steps
    ones = [torch.ones(b, f.n_agents, device=env.device, dtype=env.dtype) for f in env.fleets]
    p_steps, q_steps = [], []
    with torch.no_grad():
        vm = rollout.flow.vm_pu
        for t in range(steps):
            v_prev = ones if t == 0 else env.agent_voltages(vm[:, t - 1])
            p_t = exo.pv_injection_kw[:, t]
            q_t = torch.zeros_like(p_t)
            for f, fleet in enumerate(env.fleets):
                inputs = env.step_inputs(exo, t, f, v_prev[f])
                p_kw, q_kvar = fleet.model.authority_demand(rollout.fleets[f].states[:, t], inputs, direction)
                p_node, q_node = env.node_consumption(f, p_kw.to(env.dtype), q_kvar.to(env.dtype))
                p_t, q_t = p_t + p_node, q_t + q_node
            p_steps.append(p_t)
            q_steps.append(q_t)
    return torch.stack(p_steps, 1), torch.stack(q_steps, 1)


def _solver_at(env: Environment, taps):
    """``solve(load_scale, p, q)`` at the fixed taps (``taps is None``) or per-sample ``taps``."""
    if taps is None:
        return env.solver.solve
    return lambda load_scale, p, q: env.solve_at_taps(load_scale, p, q, taps)


def authority_bound(
    env: Environment,
    exo: Exogenous,
    v_limits_pu: tuple[float, float],
    line_limits: bool = True,
    taps: np.ndarray | torch.Tensor | None = None,
    points: int = 5,
    *,
    rollout: Rollout | None = None,
    worst: int = 10,
) -> dict[str, Any]:
    """The fleet-authority bound on ``exo``'s days (module docstring).

    Args:
        env: the environment (fleets, solver, monitors).
        exo: the days (``B`` days of ``T`` steps).
        v_limits_pu: evaluation voltage limits ``(v_min, v_max)`` (pu).
        line_limits: check rated conductors (the scenario's ``limits.line_limits``).
        taps: per-sample regulator taps ``[B, T, n_reg]`` of the ``no_control`` rollout under the
            scenario's tap treatment, or ``None`` for the environment's fixed taps.
        points: sweep points on ``down -> no_control -> up`` (odd, >= 3; 5: ``s = -1, -0.5, 0,
            0.5, 1``).
        rollout: ``no_control``'s rollout of ``exo`` if already computed (else rolled out here).
        worst: how many of the worst unfixable conductors / nodes to list.

    Returns a dict (rates are shares of samples; "hours" are steps):

    * ``voltage_violation_rate``, ``undervoltage_rate``, ``overvoltage_rate``: ``no_control``'s;
    * ``unfixable_node_hours``: share of monitored node-hours violated at every sweep point,
      split into ``unfixable_undervoltage`` / ``unfixable_overvoltage`` by ``no_control``'s side;
    * ``line_overload_rate``: ``no_control``'s share of rated conductor-hours above rating;
    * ``unfixable_conductor_hours``: share overloaded at every sweep point;
    * ``max_line_loading`` / ``max_loading_conductor``: ``no_control``'s largest ``|I|/I_max``
      (converged samples) and its conductor;
    * ``worst_unfixable_conductors`` / ``worst_unfixable_nodes``: lists of dicts, most
      unfixable hours first;
    * per sweep point: ``points`` (``s``), ``mean_vm_pu``, ``violation_rate_per_point``,
      ``line_overload_rate_per_point``, ``nonconverged_per_point``;
    * ``n_days``, ``steps``, ``n_monitored``, ``n_rated``, ``taps`` (``"fixed"``/``"given"``).
    """
    if points < 3 or points % 2 == 0:
        raise ValueError(f"points must be odd and >= 3 (no_control and both extremes), got {points}")
    solve = _solver_at(env, taps)
    if taps is not None and tuple(np.shape(taps)[:2]) != (exo.batch, exo.steps):
        raise ValueError(f"taps must be [B, T, n_reg] = [{exo.batch}, {exo.steps}, ...], got {tuple(np.shape(taps))}")
    if rollout is None:
        rollout = no_control_rollout(env, exo)
    v_min, v_max = v_limits_pu
    check_lines = bool(line_limits) and len(env.current_monitor) > 0
    with torch.no_grad():
        p_nc, q_nc = rollout.p_injection_kw.detach(), rollout.q_injection_kvar.detach()
        p_down, q_down = extreme_injections(env, rollout, +1)
        p_up, q_up = extreme_injections(env, rollout, -1)
        positions = np.linspace(-1.0, 1.0, points)
        positions[points // 2] = 0.0  # exactly no_control
        unfixable_v = unfixable_i = None
        best_loading = None
        mean_vm, v_rates, i_rates, nonconverged = [], [], [], []
        nc = {}
        for k, s in enumerate(positions):
            if s < 0:
                p, q = p_nc + (-s) * (p_down - p_nc), q_nc + (-s) * (q_down - q_nc)
            else:
                p, q = p_nc + s * (p_up - p_nc), q_nc + s * (q_up - q_nc)
            flow = solve(exo.load_scale, p, q)
            if taps is None:
                env.counters.count_solves(exo.batch * exo.steps)
            ok = flow.converged  # [B, T]
            vm = env.voltage_monitor.magnitudes_pu(flow.v_pu)  # [B, T, M]
            violated = (vm > v_max) | (vm < v_min) | ~ok[..., None]
            unfixable_v = violated if unfixable_v is None else unfixable_v & violated
            ok_f = ok[..., None].to(vm.dtype)
            mean_vm.append(float((vm * ok_f).sum() / (ok_f.sum() * vm.shape[-1]).clamp_min(1)))
            v_rates.append(float(violated.double().mean()))
            nonconverged.append(int((~ok).sum()))
            if check_lines:
                loading = env.current_monitor.loading(flow.branch_currents_a)  # [B, T, R]
                overloaded = (loading > 1.0) | ~ok[..., None]
                unfixable_i = overloaded if unfixable_i is None else unfixable_i & overloaded
                masked = torch.where(ok[..., None], loading, torch.full_like(loading, torch.inf))
                best_loading = masked if best_loading is None else torch.minimum(best_loading, masked)
                i_rates.append(float(overloaded.double().mean()))
            else:
                loading = overloaded = None
                i_rates.append(0.0)
            if k == points // 2:
                nc = {"vm": vm, "ok": ok, "violated": violated, "loading": loading, "overloaded": overloaded}

        names_v = env.voltage_monitor.names
        under_nc = (nc["vm"] < v_min) & nc["ok"][..., None]
        over_nc = (nc["vm"] > v_max) & nc["ok"][..., None]
        result: dict[str, Any] = {
            "n_days": exo.batch,
            "steps": exo.steps,
            "n_monitored": len(names_v),
            "n_rated": len(env.current_monitor) if check_lines else 0,
            "taps": "fixed" if taps is None else "given",
            "points": [float(s) for s in positions],
            "voltage_violation_rate": float(nc["violated"].double().mean()),
            "undervoltage_rate": float(under_nc.double().mean()),
            "overvoltage_rate": float(over_nc.double().mean()),
            "unfixable_node_hours": float(unfixable_v.double().mean()),
            "unfixable_undervoltage": float((unfixable_v & under_nc).double().mean()),
            "unfixable_overvoltage": float((unfixable_v & over_nc).double().mean()),
            "mean_vm_pu": mean_vm,
            "violation_rate_per_point": v_rates,
            "line_overload_rate_per_point": i_rates,
            "nonconverged_per_point": nonconverged,
        }
        per_node = unfixable_v.sum((0, 1))
        order = torch.argsort(per_node, descending=True)[:worst]
        result["worst_unfixable_nodes"] = [
            {"node": names_v[k], "unfixable_hours": int(per_node[k]),
             "under": int((unfixable_v & under_nc)[..., k].sum()), "over": int((unfixable_v & over_nc)[..., k].sum())}
            for k in order.tolist() if int(per_node[k]) > 0]
        if check_lines:
            names_i = env.current_monitor.names
            loading_nc = torch.where(nc["ok"][..., None], nc["loading"], torch.zeros_like(nc["loading"]))
            per_conductor_max = loading_nc.amax((0, 1))
            k_max = int(per_conductor_max.argmax())
            per_conductor = unfixable_i.sum((0, 1))
            order = torch.argsort(per_conductor, descending=True)[:worst]
            best_when_unfixable = torch.where(unfixable_i & torch.isfinite(best_loading), best_loading,
                                              torch.zeros_like(best_loading)).amax((0, 1))
            result.update({
                "line_overload_rate": float(nc["overloaded"].double().mean()),
                "unfixable_conductor_hours": float(unfixable_i.double().mean()),
                "max_line_loading": float(per_conductor_max[k_max]),
                "max_loading_conductor": names_i[k_max],
                "worst_unfixable_conductors": [
                    {"conductor": names_i[k], "unfixable_hours": int(per_conductor[k]),
                     "max_loading_no_control": float(per_conductor_max[k]),
                     "max_best_loading": float(best_when_unfixable[k])}
                    for k in order.tolist() if int(per_conductor[k]) > 0],
            })
        else:
            result.update({"line_overload_rate": 0.0, "unfixable_conductor_hours": 0.0,
                           "max_line_loading": 0.0, "max_loading_conductor": None,
                           "worst_unfixable_conductors": []})
    return result


def describe(bound: dict[str, Any]) -> str:
    """A few human-readable lines of a bound's headline numbers."""
    lines = [
        f"no_control: voltage violation {bound['voltage_violation_rate']:.3%} "
        f"(under {bound['undervoltage_rate']:.3%} / over {bound['overvoltage_rate']:.3%}), "
        f"line overload {bound['line_overload_rate']:.3%}, max loading {bound['max_line_loading']:.3f} "
        f"({bound['max_loading_conductor']})",
        f"authority bound ({len(bound['points'])} points, taps {bound['taps']}): unfixable node-hours "
        f"{bound['unfixable_node_hours']:.3%} (under {bound['unfixable_undervoltage']:.3%} / over "
        f"{bound['unfixable_overvoltage']:.3%}), unfixable conductor-hours {bound['unfixable_conductor_hours']:.3%}",
        "per point s=" + ", ".join(f"{s:+.2f}: mean |V| {v:.4f}, viol. {r:.2%}, overload {i:.2%}"
                                   for s, v, r, i in zip(bound["points"], bound["mean_vm_pu"],
                                                         bound["violation_rate_per_point"],
                                                         bound["line_overload_rate_per_point"])),
    ]
    if bound["worst_unfixable_conductors"]:
        lines.append("worst unfixable conductors: " + ", ".join(
            f"{c['conductor']} ({c['unfixable_hours']} h, no-control max {c['max_loading_no_control']:.2f}, "
            f"best {c['max_best_loading']:.2f})" for c in bound["worst_unfixable_conductors"]))
    if bound["worst_unfixable_nodes"]:
        lines.append("worst unfixable nodes: " + ", ".join(
            f"{n['node']} ({n['unfixable_hours']} h: {n['under']} under / {n['over']} over)"
            for n in bound["worst_unfixable_nodes"]))
    return "\n".join(lines)
