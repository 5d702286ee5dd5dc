"""``battery``: residential battery storage behind its own inverter (docs/design.md §1).

Energy balance per step (``dt`` in h, ``p`` in kW at the AC terminals, ``p > 0`` charges)::

    e_next = e + (eta_c * max(p, 0) - max(-p, 0) / eta_d) * dt      (kWh)

with ``e_min <= e <= e_max`` kept *hard* by state-dependent power limits::

    p in [max(-p_max, -(e - e_min) * eta_d / dt),  min(p_max, (e_max - e) / (eta_c * dt))]

Optional reactive power ``q`` (kvar, demand convention: ``q > 0`` absorbs) lies in the inverter
circle ``p^2 + q^2 <= s_max^2`` given the chosen ``p``. Degradation costs ``c_deg * |p| * dt``
(EUR). The soft end-of-day condition ``e_T >= e_0`` is a terminal residual in kWh.

Layouts (``B`` days, ``N`` agents):

* state ``[B, N, 2]``: ``e_kwh`` (stored energy), ``e_start_kwh`` (energy at the start of the day)
* action ``[B, N, d]``: ``p_kw`` (+ charge), and ``q_kvar`` (+ absorb) when ``reactive_power``
* observation ``[B, N, 2]``: state of charge within ``[e_min, e_max]`` (0..1), and
  ``(e - e_start) / (e_max - e_min)`` (the end-of-day condition's slack, -1..1)
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from pydantic import Field, model_validator

from gridflex.plugins.contracts import ConvexFleet, DeviceModel, StepInputs, StrictConfig

from ._inverter import q_from_u, reactive_limit_kvar, u_from_q, volt_var_injection_frac
from ._sampling import (EfficiencyRange, FractionRange, NonNegativeRange, OversizeRange,
                        PositiveRange, Range, check_below, safe_unit_interval, sample_ranges)

SocMinRange = Range(ge=0, lt=1)

CONTROLLERS = ("no_control", "rule_based", "droop")


def next_energy_kwh(e_kwh: torch.Tensor, p_kw: torch.Tensor, eta_charge: torch.Tensor,
                    eta_discharge: torch.Tensor, dt_h: float) -> torch.Tensor:
    """Stored energy after one step of AC power ``p_kw`` (+ charge); all ``[B, N]``, kWh."""
    charge_kw = torch.relu(p_kw)
    discharge_kw = torch.relu(-p_kw)
    return e_kwh + (eta_charge * charge_kw - discharge_kw / eta_discharge) * dt_h


def power_limits_kw(e_kwh: torch.Tensor, e_min_kwh: torch.Tensor, e_max_kwh: torch.Tensor,
                    p_max_kw: torch.Tensor, eta_charge: torch.Tensor, eta_discharge: torch.Tensor,
                    dt_h: float) -> tuple[torch.Tensor, torch.Tensor]:
    """AC power limits ``lo <= 0 <= hi`` (kW, ``[B, N]``) keeping ``e_next`` in ``[e_min, e_max]``.

    The energy headroom is clipped at zero, so a state that rounding left a hair outside its
    limits still yields ``lo <= 0 <= hi``.
    """
    discharge_room_kwh = torch.relu(e_kwh - e_min_kwh)
    charge_room_kwh = torch.relu(e_max_kwh - e_kwh)
    lo = -torch.minimum(p_max_kw, discharge_room_kwh * eta_discharge / dt_h)
    hi = torch.minimum(p_max_kw, charge_room_kwh / (eta_charge * dt_h))
    return lo, hi


class Battery(DeviceModel):
    """Residential battery storage with optional reactive power from its inverter."""

    name: ClassVar[str] = "battery"
    state_dim: ClassVar[int] = 2
    obs_dim: ClassVar[int] = 2
    residual_names: ClassVar[tuple[str, ...]] = ()
    terminal_residual_names: ClassVar[tuple[str, ...]] = ("end_energy_shortfall_kwh",)
    state_names: ClassVar[tuple[str, ...]] = ("e_kwh", "e_start_kwh")
    observation_names: ClassVar[tuple[str, ...]] = ("soc_frac", "energy_slack_frac")
    action_names: ClassVar[tuple[str, ...]] = ("p_kw", "q_kvar")
    action_meanings: ClassVar[tuple[str, ...]] = (
        "active power at the AC terminals, + charging (drawn from the grid), - discharging",
        "reactive power, + absorbed from the grid, - injected (inside the inverter circle)")

    class Config(StrictConfig):
        capacity_kwh: PositiveRange = Field(
            (5.0, 13.5), description="usable energy capacity (kWh)")
        p_max_kw: PositiveRange = Field(
            (2.5, 5.0), description="rated charge and discharge power at the AC terminals (kW)")
        s_max_over_p_max: OversizeRange = Field(
            (1.1, 1.1), description="inverter apparent-power rating over p_max (-)")
        eta_charge: EfficiencyRange = Field(
            (0.94, 0.96), description="charging efficiency, AC to stored energy (-)")
        eta_discharge: EfficiencyRange = Field(
            (0.94, 0.96), description="discharging efficiency, stored energy to AC (-)")
        soc_min: SocMinRange = Field(
            (0.0, 0.1), description="lower energy limit as a fraction of capacity (backup reserve) (-)")
        soc_max: EfficiencyRange = Field(
            (1.0, 1.0), description="upper energy limit as a fraction of capacity (-)")
        soc_init: FractionRange = Field(
            (0.3, 0.7), description="energy at the start of each day as a fraction of capacity (-)")
        degradation_eur_per_kwh: NonNegativeRange = Field(
            (0.02, 0.04), description="degradation cost per kWh of AC throughput, both directions (EUR/kWh)")
        reactive_power: bool = Field(
            False, description="the policy also sets reactive power q (action_dim 2)")
        three_phase: bool = Field(
            False, description="three-phase inverter: placed on three-phase buses, split equally")
        rule_charge_below_eur_per_kwh: float = Field(
            0.27, ge=0, description="rule_based: charge at full power when price <= this (EUR/kWh)")
        rule_discharge_above_eur_per_kwh: float = Field(
            0.33, ge=0, description="rule_based: discharge down to the start energy when price >= this (EUR/kWh)")

        @model_validator(mode="after")
        def _consistent(self):
            check_below(self, "soc_min", "soc_max")
            check_below(self, "soc_min", "soc_init", strict=False)
            check_below(self, "soc_init", "soc_max", strict=False)
            if self.rule_charge_below_eur_per_kwh >= self.rule_discharge_above_eur_per_kwh:
                raise ValueError("rule_charge_below_eur_per_kwh must be < rule_discharge_above_eur_per_kwh")
            return self

    _SAMPLED = ("capacity_kwh", "p_max_kw", "s_max_over_p_max", "eta_charge", "eta_discharge",
                "soc_min", "soc_max", "soc_init", "degradation_eur_per_kwh")

    def __init__(self, config, n_agents: int, generator: torch.Generator, *, dt_h: float,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64):
        config = config if isinstance(config, self.Config) else self.Config.model_validate(config)
        super().__init__(config, n_agents, generator, dt_h=dt_h, device=device, dtype=dtype)
        self.three_phase = config.three_phase
        self.reactive_power = config.reactive_power
        self.action_dim = 2 if config.reactive_power else 1
        params = sample_ranges(config, self._SAMPLED, n_agents, generator, dtype=dtype,
                               device=self.device)
        self.capacity_kwh = params["capacity_kwh"]  # [N]
        self.p_max_kw = params["p_max_kw"]  # [N]
        self.s_max_kva = params["s_max_over_p_max"] * self.p_max_kw  # [N]
        self.eta_charge = params["eta_charge"]  # [N]
        self.eta_discharge = params["eta_discharge"]  # [N]
        self.e_min_kwh = params["soc_min"] * self.capacity_kwh  # [N]
        self.e_max_kwh = params["soc_max"] * self.capacity_kwh  # [N]
        self.e_init_kwh = params["soc_init"] * self.capacity_kwh  # [N]
        self.degradation_eur_per_kwh = params["degradation_eur_per_kwh"]  # [N]

    # ------------------------------------------------------------------ state and observation
    def initial_state(self, batch: int, temp_out_c: torch.Tensor) -> torch.Tensor:
        """``[B, N, 2]``: energy and start-of-day energy, both the sampled initial energy."""
        e0 = self.e_init_kwh.expand(batch, self.n_agents)
        return torch.stack([e0, e0], dim=-1)

    def observation(self, state: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """``[B, N, 2]``: state of charge in ``[e_min, e_max]`` and the start-energy slack."""
        e_kwh, e_start_kwh = state.unbind(-1)
        span_kwh = self.e_max_kwh - self.e_min_kwh
        soc = (e_kwh - self.e_min_kwh) / span_kwh
        slack = (e_kwh - e_start_kwh) / span_kwh
        return torch.stack([soc, slack], dim=-1)

    # ------------------------------------------------------------------ actions
    def _p_limits_kw(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return power_limits_kw(state[..., 0], self.e_min_kwh, self.e_max_kwh, self.p_max_kw,
                               self.eta_charge, self.eta_discharge, self.dt_h)

    def action_bounds(self, state: torch.Tensor, inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """``lo, hi`` ``[B, N, d]``. For ``q`` these are the outer limits ``-/+ s_max``; the
        applied ``q`` is further limited to the circle given ``p`` (see :meth:`action`)."""
        p_lo, p_hi = self._p_limits_kw(state)
        if not self.reactive_power:
            return p_lo.unsqueeze(-1), p_hi.unsqueeze(-1)
        s_max = self.s_max_kva.expand_as(p_lo)
        return torch.stack([p_lo, -s_max], dim=-1), torch.stack([p_hi, s_max], dim=-1)

    def action(self, u: torch.Tensor, state: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """``[B, N, d]``: ``p = lo + (hi - lo) u_p``; ``q = q_lim(p) (2 u_q - 1)`` inside the circle."""
        p_lo, p_hi = self._p_limits_kw(state)
        p_kw = p_lo + (p_hi - p_lo) * u[..., 0]
        if not self.reactive_power:
            return p_kw.unsqueeze(-1)
        q_kvar = q_from_u(u[..., 1], reactive_limit_kvar(p_kw, self.s_max_kva))
        return torch.stack([p_kw, q_kvar], dim=-1)

    # ------------------------------------------------------------------ dynamics, cost, residuals
    def step(self, state: torch.Tensor, action: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        e_next = next_energy_kwh(state[..., 0], action[..., 0], self.eta_charge,
                                 self.eta_discharge, self.dt_h)
        return torch.stack([e_next, state[..., 1]], dim=-1)

    def cost(self, state: torch.Tensor, action: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """Degradation ``c_deg |p| dt`` (EUR, ``[B, N]``)."""
        return self.degradation_eur_per_kwh * action[..., 0].abs() * self.dt_h

    def residuals(self, state, action, next_state, inputs) -> torch.Tensor:
        """None per step (energy limits are hard): ``[B, N, 0]``."""
        return state.new_zeros(*state.shape[:-1], 0)

    def terminal_residuals(self, first_state: torch.Tensor, last_state: torch.Tensor) -> torch.Tensor:
        """``[B, N, 1]``: ``max(e_start - e_T, 0)`` in kWh (``e_start`` is carried in the state)."""
        shortfall_kwh = torch.relu(last_state[..., 1] - last_state[..., 0])
        return shortfall_kwh.unsqueeze(-1)

    def demand(self, action: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``p_kw`` (+ charging) and ``q_kvar`` (+ absorbing) drawn from the grid, ``[B, N]``."""
        p_kw = action[..., 0]
        q_kvar = action[..., 1] if self.reactive_power else torch.zeros_like(p_kw)
        return p_kw, q_kvar

    # ------------------------------------------------------------------ reference controllers
    def rule_based_p_kw(self, state: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """Price-following ``p`` (kW, ``[B, N]``) from the broadcast price and own state only.

        Charge at ``p_max`` when the price is at or below the low threshold; discharge when it
        is at or above the high threshold, but never below the start-of-day energy, so the day
        always ends with ``e_T >= e_start``; idle otherwise. The caller clips to the limits.
        """
        cfg = self.config
        price = inputs.price_per_kwh.to(self.dtype).unsqueeze(-1)  # [B, 1]
        e_kwh, e_start_kwh = state.unbind(-1)
        above_start_kw = torch.relu(e_kwh - e_start_kwh) * self.eta_discharge / self.dt_h
        discharge_kw = torch.minimum(self.p_max_kw, above_start_kw)
        charge = price <= cfg.rule_charge_below_eur_per_kwh
        discharge = price >= cfg.rule_discharge_above_eur_per_kwh
        zero = torch.zeros_like(e_kwh)
        return torch.where(charge, self.p_max_kw.expand_as(e_kwh),
                           torch.where(discharge, -discharge_kw, zero))

    def u_for(self, p_kw: torch.Tensor, q_kvar: torch.Tensor | None, state: torch.Tensor,
              inputs: StepInputs) -> torch.Tensor:
        """Policy output ``u`` ``[B, N, d]`` that gives ``p_kw`` and ``q_kvar`` (demand sign),
        each clipped to its feasible range (``q`` to the circle at the resulting ``p``)."""
        p_lo, p_hi = self._p_limits_kw(state)
        u_p = safe_unit_interval(p_kw - p_lo, p_hi - p_lo)
        if not self.reactive_power:
            return u_p.unsqueeze(-1)
        p_applied = p_lo + (p_hi - p_lo) * u_p
        q_target = torch.zeros_like(p_kw) if q_kvar is None else q_kvar
        u_q = u_from_q(q_target, reactive_limit_kvar(p_applied, self.s_max_kva))
        return torch.stack([u_p, u_q], dim=-1)

    def baseline_u(self, controller: str, state: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """``no_control``: idle (p = q = 0). ``rule_based``: :meth:`rule_based_p_kw`, q = 0.
        ``droop``: p = 0 (Volt-Watt only limits export, which an idle battery has none of) and,
        with ``reactive_power``, IEEE 1547 Cat B Volt-VAR from ``inputs.v_prev_pu``."""
        if controller not in CONTROLLERS:
            raise ValueError(f"unknown controller {controller!r}; expected one of {CONTROLLERS}")
        zero = torch.zeros_like(state[..., 0])
        if controller == "rule_based":
            return self.u_for(self.rule_based_p_kw(state, inputs), None, state, inputs)
        if controller == "droop" and self.reactive_power:
            v_pu = inputs.v_prev_pu.to(self.dtype)
            q_demand_kvar = -volt_var_injection_frac(v_pu) * self.s_max_kva
            return self.u_for(zero, q_demand_kvar, state, inputs)
        return self.u_for(zero, None, state, inputs)

    def authority_demand(self, state: torch.Tensor, inputs: StepInputs,
                         direction: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rated extreme ``p_kw, q_kvar`` ``[B, N]`` (demand sign), state of charge ignored.

        ``direction = +1`` (lowers the voltage): charge at ``+p_max`` and, with
        ``reactive_power``, absorb the ``q`` the inverter circle leaves at that ``p``;
        ``direction = -1`` (raises it): discharge at ``-p_max`` and inject that ``q``. Without
        ``reactive_power``, ``q = 0``. See :meth:`DeviceModel.authority_demand`.
        """
        if direction not in (1, -1):
            raise ValueError(f"direction must be +1 or -1, got {direction!r}")
        p_kw = direction * self.p_max_kw.expand(state.shape[:-1])
        if not self.reactive_power:
            return p_kw, torch.zeros_like(p_kw)
        return p_kw, direction * reactive_limit_kvar(p_kw, self.s_max_kva)

    # ------------------------------------------------------------------ convex model (reference)
    def convex_model(self, cp, steps: int) -> ConvexFleet:
        """One day as a convex program (exact): separate charge/discharge powers ``p+ , p- >= 0``
        ``[N, T]`` (kW), energy ``e [N, T+1]`` (kWh) with the efficiency balance, ``e_min <= e <=
        e_max``, ``p+, p- <= p_max``, ``e_0`` = the initial energy, and the end-of-day condition
        ``e_T >= e_0`` hard. Degradation ``c_deg (p+ + p-) dt`` on both, so simultaneous charge
        and discharge always costs; it can still pay where wasting energy relieves the network
        (a priced voltage slack), so ``exclude_simultaneous`` bans the minority direction at
        those agent-steps (0/1 Parameters on the power limits) for the caller's re-solve, and
        :meth:`ConvexFleet.diagnostics` counts what is left. Optional ``q`` within the inverter
        circle (SOC).
        """
        n, dt = self.n_agents, self.dt_h
        col = lambda x: x.detach().cpu().numpy()[:, None]  # noqa: E731  [N, 1]
        p_max, e_min, e_max, e0 = col(self.p_max_kw), col(self.e_min_kwh), col(self.e_max_kwh), col(self.e_init_kwh)
        eta_c, eta_d, c_deg = col(self.eta_charge), col(self.eta_discharge), col(self.degradation_eur_per_kwh)
        charge = cp.Variable((n, steps), nonneg=True, name="battery_charge_kw")
        discharge = cp.Variable((n, steps), nonneg=True, name="battery_discharge_kw")
        energy = cp.Variable((n, steps + 1), name="battery_energy_kwh")
        ones = np.ones((1, steps))
        allow_charge = cp.Parameter((n, steps), nonneg=True, name="battery_allow_charge", value=np.ones((n, steps)))
        allow_discharge = cp.Parameter((n, steps), nonneg=True, name="battery_allow_discharge",
                                       value=np.ones((n, steps)))
        constraints = [
            charge <= cp.multiply(p_max * ones, allow_charge), discharge <= cp.multiply(p_max * ones, allow_discharge),
            energy[:, 0] == e0[:, 0],
            energy[:, 1:] == energy[:, :-1] + dt * (cp.multiply(eta_c * ones, charge)
                                                    - cp.multiply(ones / eta_d, discharge)),
            energy >= e_min * np.ones((1, steps + 1)), energy <= e_max * np.ones((1, steps + 1)),
            energy[:, steps] >= energy[:, 0],
        ]
        p_kw = charge - discharge
        q_kvar = 0 * p_kw
        if self.reactive_power:
            q_kvar = cp.Variable((n, steps), name="battery_q_kvar")
            s_max = np.repeat(self.s_max_kva.detach().cpu().numpy(), steps)  # C-order [N*T]
            constraints.append(cp.SOC(s_max, cp.vstack([cp.reshape(p_kw, (n * steps,), order="C"),
                                                         cp.reshape(q_kvar, (n * steps,), order="C")]), axis=0))
        cost = cp.sum(cp.multiply(c_deg * dt * ones, charge + discharge))

        def actions():
            p = (charge.value - discharge.value).T[..., None]
            return p if not self.reactive_power else np.concatenate([p, q_kvar.value.T[..., None]], -1)

        def to_u(action, state, inputs):
            return self.u_for(action[..., 0], action[..., 1] if self.reactive_power else None, state, inputs)

        def diagnostics():
            both = np.minimum(charge.value, discharge.value)
            return {"simultaneous_charge_discharge": int((both > 1e-2).sum()),  # > 10 W: beyond solver tolerance
                    "max_simultaneous_kw": float(both.max()) if both.size else 0.0}

        def set_day(temp, price):
            allow_charge.value, allow_discharge.value = np.ones((n, steps)), np.ones((n, steps))

        def exclude_simultaneous() -> int:
            both = np.minimum(charge.value, discharge.value) > 1e-2
            net = charge.value - discharge.value
            allow_charge.value = np.where(both & (net < 0), 0.0, allow_charge.value)
            allow_discharge.value = np.where(both & (net >= 0), 0.0, allow_discharge.value)
            return int(both.sum())

        return ConvexFleet(constraints, cost, 0.0, p_kw, q_kvar, set_day, actions, to_u, diagnostics,
                           exclude_simultaneous)
