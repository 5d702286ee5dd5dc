"""Credit-aligned network rewards for the PPO learners, and the credit-share diagnostic.

**The problem** (issue #21). The team's network cost at step ``t`` is, with prices ``lam`` (fixed,
or the hourly duals of :mod:`gridflex_plugins.learners.gradmap.lagrangian`)::

    J_t = sum_m lam_V[h(t), m] g_V[t, m] + sum_r lam_I[h(t), r] g_I[t, r]

(``g_V`` the voltage residual at monitored node-phase ``m`` in units of ``voltage_scale_pu``,
``g_I = relu(|I_r|/I_max,r - 1)``). Agent ``i``'s true marginal effect on it is

    tau_i = dJ_t/dp_i = sum_m lam_V s_V[t,m] S_V[m,i] + sum_r lam_I s_I[t,r] S_I[r,i]

with ``s_V = +1/v_scale`` above ``v_max``, ``-1/v_scale`` below ``v_min``, 0 inside (``s_I = 1``
where overloaded) and the sensitivities ``S_V[m, i] = d|V_m|/dp_i`` (pu/kW), ``S_I[r, i] =
d(|I_r|/I_max,r)/dp_i`` (1/kW) of the agent's own demand ``p_i`` (kW). The **credit share** of an
agent's reward term ``R_i`` is ``dR_i/dp_i`` against ``tau_i`` (:func:`credit_shares`).

**Network rewards offered** (option ``reward_network``; each a per-agent cost, EUR per step):

* ``own_node`` (the original shaping): ``lam_V g_V`` averaged over the node-phases the agent sits
  on. Lines only through the global term.
* ``sensitivity``: every monitored node-phase and rated conductor, weighted by how strongly the
  agent moves it: ``sum_m W_V[m,i] lam_V g_V[t,m] + sum_r W_I[r,i] lam_I g_I[t,r]`` with
  ``W_V[m,i] = |S_V[m,i]| / max_m' |S_V[m',i]|`` (1 at the node the agent moves most, usually its
  own; ``W_I`` likewise over conductors: about 1 on the path to the source, 0 elsewhere).
* ``difference``: the first-order difference reward (Wolpert & Tumer 2002) ``D_i = J(p) - J(p_-i,
  p_i = 0, q_i = 0) ~ c^p_i p_i + c^q_i q_i`` with ``c^p_i = sum_m lam_V s_V S_V[m,i] + sum_r
  lam_I s_I S_I[r,i]`` (``c^q`` with the reactive sensitivities): ``dD_i/dp_i = c^p_i = tau_i``
  to first order, while the other agents' exploration enters only through the sign pattern ``s``,
  not additively. The own bill uses the marginal loss factor: ``price (dP_source/dp_i p_i +
  dP_source/dq_i q_i) dt`` instead of ``price p_i dt``, so losses are priced too.

The sensitivities come from the linearised network (:func:`gridflex.network.linearised.linearise`)
at the base case (nominal loads, no devices), computed **once** per learner inside the training
clock (:class:`Sensitivities`); the diagnostic measures every reward against the *exact* AC
sensitivities at the no-control operating points (:func:`exact_marginals`), so the base-case
linearisation error shows in the ``difference`` share.

Shapes: ``S_V [M, N_f]``, ``S_I [R, N_f]`` per fleet (agent-major columns); rewards ``[B, T, N_f]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gridflex.learning.environment import Environment

NETWORK_REWARDS = ("own_node", "sensitivity", "difference")


def agent_injection_maps(env: Environment) -> list[np.ndarray]:
    """Per fleet ``[N_f, n_inj]``: agent demand (kW) -> consumption at the injection nodes (split
    evenly over a multi-phase device's nodes), as the environment applies it (set-up only)."""
    col = {int(n): k for k, n in enumerate(env.injection_nodes)}
    maps = []
    for fleet in env.fleets:
        m = np.zeros((fleet.n_agents, len(env.injection_nodes)))
        for i, nodes in enumerate(fleet.placement.nodes):
            for n in nodes:
                m[i, col[int(n)]] += 1.0 / len(nodes)
        maps.append(m)
    return maps


@dataclass
class PointSensitivities:
    """Injection-node sensitivities at one operating point (numpy, float64): monitored magnitudes
    ``v_p, v_q [M, n_inj]`` (pu/kW, pu/kvar), rated loadings ``i_p, i_q [R, n_inj]`` (1/kW),
    source import ``src_p, src_q [n_inj]`` (kW/kW); the point's ``vm [M]`` and ``loading [R]``."""

    v_p: np.ndarray
    v_q: np.ndarray
    i_p: np.ndarray
    i_q: np.ndarray
    src_p: np.ndarray
    src_q: np.ndarray
    vm: np.ndarray
    loading: np.ndarray


def point_sensitivities(env: Environment, load_scale=None, p_kw=None, q_kvar=None,
                        line_limits: bool = True) -> PointSensitivities:
    """Exact first-order AC sensitivities at one point (default: the base case) of ``env``'s grid.

    ``load_scale [L]``, ``p_kw, q_kvar [n_inj]`` as :func:`gridflex.network.linearised.linearise`."""
    from gridflex.network.linearised import linearise
    from gridflex.network.powerflow import build_network

    net = build_network(env.grid, env.injection_nodes)
    lin = linearise(net, np.ones(net.n_loads) if load_scale is None else load_scale, p_kw, q_kvar)
    vmon = env.voltage_monitor
    v = lin.magnitudes(np.asarray(vmon.node_a), np.asarray(vmon.node_b))
    monitor = env.current_monitor
    n_inj = len(env.injection_nodes)
    if line_limits and len(monitor):
        cur = lin.currents(monitor.columns)
        mag = np.abs(cur.y0)
        unit = np.where(mag > 0, np.conj(cur.y0) / np.maximum(mag, 1e-12), 0.0)[:, None]
        rating = np.asarray(monitor.rating_a, dtype=float)[:, None]
        i_p, i_q = (unit * cur.d_p).real / rating, (unit * cur.d_q).real / rating
        loading = mag / rating[:, 0]
    else:
        i_p = i_q = np.zeros((0, n_inj))
        loading = np.zeros(0)
    return PointSensitivities(v.d_p, v.d_q, i_p, i_q, lin.source.d_p[0].real, lin.source.d_q[0].real,
                              v.y0, loading)


class Sensitivities:
    """Base-case per-agent sensitivities of every fleet, on the environment's device and dtype.

    Per fleet: ``v_p, v_q [M, N_f]`` (pu/kW), ``i_p, i_q [R, N_f]`` (1/kW), ``src_p, src_q [N_f]``
    (marginal loss factors, kW of import per kW or kvar), the ``sensitivity`` weights ``w_v [M,
    N_f]``, ``w_i [R, N_f]`` (in ``[0, 1]``) and per-agent static features ``static [N_f, 4]``
    (own-node ``|dV/dp|`` and ``|dV/dq|`` in pu/MW, the summed ``|dV/dp|`` over monitored nodes,
    phases used), for the shared networks' inputs."""

    def __init__(self, env: Environment, line_limits: bool = True):
        point = point_sensitivities(env, line_limits=line_limits)
        self.point = point
        kw = dict(device=env.device, dtype=env.dtype)
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), **kw)  # noqa: E731
        self.v_p, self.v_q, self.i_p, self.i_q, self.src_p, self.src_q = [], [], [], [], [], []
        self.w_v, self.w_i, self.static = [], [], []
        for fleet, amap in zip(env.fleets, agent_injection_maps(env)):
            v_p, v_q = point.v_p @ amap.T, point.v_q @ amap.T  # [M, N]
            i_p, i_q = point.i_p @ amap.T, point.i_q @ amap.T  # [R, N]
            self.v_p.append(t(v_p)); self.v_q.append(t(v_q)); self.i_p.append(t(i_p)); self.i_q.append(t(i_q))  # noqa: E702
            self.src_p.append(t(amap @ point.src_p)); self.src_q.append(t(amap @ point.src_q))  # noqa: E702
            self.w_v.append(t(np.abs(v_p) / np.maximum(np.abs(v_p).max(0, keepdims=True), 1e-15)))
            self.w_i.append(t(np.abs(i_p) / np.maximum(np.abs(i_p).max(0, keepdims=True), 1e-15)
                              if len(i_p) else i_p))
            own_p = np.abs(v_p).max(0) * 1e3
            own_q = np.abs(v_q).max(0) * 1e3
            phases = np.array([len(n) for n in fleet.placement.nodes], dtype=float)
            self.static.append(t(np.stack([own_p, own_q, np.abs(v_p).sum(0) * 1e3, phases], 1)))


@dataclass
class NetworkPrices:
    """Per-step prices ``voltage [T, M]`` (EUR per unit of ``g_V`` per node-phase-step) and
    ``line [T, R]`` (EUR per unit overload per conductor-step): fixed, or hourly duals expanded."""

    voltage: torch.Tensor
    line: torch.Tensor


def network_reward_costs(kind: str, sens: Sensitivities, node_maps: list[torch.Tensor], g_v: torch.Tensor,
                         g_i: torch.Tensor, sign_v: torch.Tensor, sign_i: torch.Tensor,
                         prices: NetworkPrices, p_kw: list[torch.Tensor], q_kvar: list[torch.Tensor]
                         ) -> list[torch.Tensor]:
    """Per fleet, the network cost ``[B, T, N_f]`` (EUR) of each agent under reward ``kind``.

    ``g_v [B, T, M]`` normalised voltage residuals, ``g_i [B, T, R]`` overloads, ``sign_v [B, T, M]``
    and ``sign_i [B, T, R]`` their derivatives (``s`` of the module docstring, per unit of
    ``g``), ``p_kw, q_kvar`` per fleet ``[B, T, N_f]``; ``node_maps`` as
    :func:`gridflex.learning.rewards.agent_monitor_maps` (``own_node``)."""
    priced_v = g_v * prices.voltage  # [B, T, M]
    priced_i = g_i * prices.line if g_i.shape[-1] else None
    out = []
    for f, node_map in enumerate(node_maps):
        if kind == "own_node":
            cost = priced_v @ node_map.T
        elif kind == "sensitivity":
            cost = priced_v @ sens.w_v[f]
            if priced_i is not None:
                cost = cost + priced_i @ sens.w_i[f]
        elif kind == "difference":
            marg_v = sign_v * prices.voltage  # [B, T, M], EUR per pu... per unit of |V|/v_scale
            c_p = marg_v @ sens.v_p[f]
            c_q = marg_v @ sens.v_q[f]
            if priced_i is not None:
                marg_i = sign_i * prices.line
                c_p = c_p + marg_i @ sens.i_p[f]
                c_q = c_q + marg_i @ sens.i_q[f]
            cost = c_p * p_kw[f] + c_q * q_kvar[f]
        else:
            raise ValueError(f"reward_network must be one of {NETWORK_REWARDS}, not {kind!r}")
        out.append(cost)
    return out


# ============================================================================ diagnostic
@dataclass
class CreditShares:
    """Credit shares of one reward at a set of operating points: ``share`` = least-squares slope of
    the agents' own-term marginals on the exact team marginals ``sum rho tau / sum tau^2``;
    ``median_ratio`` = median of ``rho/tau`` over agents with ``|tau|`` above 1 % of its max;
    ``cosine`` between the two vectors; ``global_share`` the same slope for the global term."""

    share: float
    median_ratio: float
    cosine: float
    global_share: float


def exact_marginals(env: Environment, point: PointSensitivities, v_limits_pu: tuple[float, float],
                    voltage_scale_pu: float, price_v: np.ndarray, price_i: np.ndarray
                    ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """``tau`` per fleet ``[N_f]`` (EUR per kW of the agent's demand, exact AC sensitivities at
    ``point``) and the sign patterns ``s_V [M]`` (per unit of ``g_V``), ``s_I [R]``.
    ``price_v [M]``, ``price_i [R]``: the step's prices."""
    v_min, v_max = v_limits_pu
    s_v = (np.where(point.vm > v_max, 1.0, 0.0) - np.where(point.vm < v_min, 1.0, 0.0)) / voltage_scale_pu
    s_i = (point.loading > 1.0).astype(float)
    grad_inj = (s_v * price_v) @ point.v_p + ((s_i * price_i) @ point.i_p if len(s_i) else 0.0)  # [n_inj]
    return [amap @ grad_inj for amap in agent_injection_maps(env)], s_v, s_i


def own_marginals(kind: str, env: Environment, point: PointSensitivities, base: Sensitivities,
                  node_maps: list[np.ndarray], s_v: np.ndarray, s_i: np.ndarray, price_v: np.ndarray,
                  price_i: np.ndarray) -> list[np.ndarray]:
    """``rho_i = dR_i/dp_i`` per fleet ``[N_f]`` of reward ``kind``'s own network term at
    ``point`` (exact AC sensitivities there; ``difference`` uses its base-case coefficient, which
    is what the reward pays per kW)."""
    out = []
    for f, amap in enumerate(agent_injection_maps(env)):
        v_p, i_p = point.v_p @ amap.T, point.i_p @ amap.T  # exact [M, N], [R, N]
        mv, mi = s_v * price_v, s_i * price_i
        if kind == "own_node":
            rho = np.einsum("nm,m,mn->n", node_maps[f], mv, v_p)
        elif kind == "sensitivity":
            rho = np.einsum("mn,m,mn->n", base.w_v[f].cpu().numpy(), mv, v_p)
            if len(mi):
                rho = rho + np.einsum("rn,r,rn->n", base.w_i[f].cpu().numpy(), mi, i_p)
        elif kind == "difference":
            rho = mv @ base.v_p[f].cpu().numpy() + (mi @ base.i_p[f].cpu().numpy() if len(mi) else 0.0)
        elif kind == "team":
            rho = mv @ v_p + (mi @ i_p if len(mi) else 0.0)
        else:
            raise ValueError(kind)
        out.append(rho)
    return out


def credit_shares(rho: np.ndarray, tau: np.ndarray, global_weight_per_agent: float) -> CreditShares:
    """:class:`CreditShares` of own-term marginals ``rho`` against team marginals ``tau`` (any
    equal shapes, flattened); the global term's marginal is ``global_weight_per_agent * tau``."""
    rho, tau = np.ravel(rho), np.ravel(tau)
    denom = float(tau @ tau)
    if denom == 0.0:
        return CreditShares(float("nan"), float("nan"), float("nan"), float("nan"))
    big = np.abs(tau) > 0.01 * np.abs(tau).max()
    cos = float(rho @ tau / np.sqrt(denom * max(float(rho @ rho), 1e-300)))
    return CreditShares(float(rho @ tau / denom), float(np.median(rho[big] / tau[big])), cos,
                        float(global_weight_per_agent))


REWARDS_DIAGNOSED = ("own_node", "sensitivity", "difference", "team")


def credit_diagnostic(env: Environment, rollout, v_limits_pu: tuple[float, float], line_limits: bool,
                      voltage_scale_pu: float = 0.01, price_voltage: float = 20.0, price_line: float = 20.0,
                      global_weight: float = 1.0, max_points: int = 6,
                      base: Sensitivities | None = None) -> dict[str, dict]:
    """Credit shares of every reward in :data:`REWARDS_DIAGNOSED` at the ``max_points`` day-steps
    of ``rollout`` (e.g. no control) with the most violated node-phases and conductors.

    At each point the exact AC sensitivities are computed (:func:`point_sensitivities`, one
    linearisation per point), ``tau`` and every reward's ``rho`` with fixed prices. Returns
    ``{reward: {"all": CreditShares, fleet name: CreditShares, ...}}`` plus ``"_points"``: the
    ``(day, step, violated node-phases, overloaded conductors)`` used. ``team`` (the full team
    network cost for every agent) is the reference: share 1 by construction.
    """
    from gridflex.learning.metrics import network_terms
    from gridflex.learning.rewards import agent_monitor_maps

    with torch.no_grad():
        terms = network_terms(env, rollout, v_limits_pu, line_limits)
    count = (terms.v_residual_pu > 0).sum(-1) + (terms.line_residual > 0).sum(-1)  # [B, T]
    count = torch.where(terms.converged, count, 0)
    flat = count.reshape(-1)
    order = torch.argsort(flat, descending=True, stable=True)[:max_points]
    order = [int(k) for k in order if int(flat[k]) > 0]
    steps = count.shape[1]
    base = base or Sensitivities(env, line_limits)
    node_maps = [m.cpu().numpy() for m in agent_monitor_maps(env)]
    names = [f.model.name for f in env.fleets]
    rhos = {k: [[] for _ in env.fleets] for k in REWARDS_DIAGNOSED}
    taus = [[] for _ in env.fleets]
    points = []
    exo = rollout.exogenous
    for k in order:
        b, t = divmod(k, steps)
        point = point_sensitivities(env, exo.load_scale[b, t].cpu().numpy(), rollout.p_injection_kw[b, t].cpu().numpy(),
                                    rollout.q_injection_kvar[b, t].cpu().numpy(), line_limits)
        price_v = np.full(len(point.vm), price_voltage)
        price_i = np.full(len(point.loading), price_line)
        tau, s_v, s_i = exact_marginals(env, point, v_limits_pu, voltage_scale_pu, price_v, price_i)
        for f in range(len(env.fleets)):
            taus[f].append(tau[f])
        for kind in REWARDS_DIAGNOSED:
            for f, rho in enumerate(own_marginals(kind, env, point, base, node_maps, s_v, s_i, price_v, price_i)):
                rhos[kind][f].append(rho)
        points.append((b, t, int((s_v != 0).sum()), int((s_i != 0).sum())))
    out: dict[str, dict] = {"_points": points}
    if not points:
        return out
    per_agent_global = global_weight / env.n_agents
    for kind in REWARDS_DIAGNOSED:
        row = {}
        for f, name in enumerate(names):
            row[name] = credit_shares(np.concatenate(rhos[kind][f]), np.concatenate(taus[f]), per_agent_global)
        row["all"] = credit_shares(np.concatenate([np.concatenate(r) for r in rhos[kind]]),
                                   np.concatenate([np.concatenate(t) for t in taus]), per_agent_global)
        out[kind] = row
    return out
