"""``generator``: gas-engine micro-CHP units (1.5-5.5 kWe class) run electricity-led.

Physically a natural-gas internal-combustion micro-CHP in a multi-family house or small business
(e.g. Senertec Dachs G5.5, 5.5 kWe; Vaillant ecoPOWER 3.0 / 4.7, modulating to 3.0 / 4.7 kWe),
connected through a grid interface that can supply reactive power. 200 units of 2-5.5 kWe are
0.4-1.1 MW, a high but plausible micro-CHP share of a 3.5 MW feeder's peak.

Output ``0 <= p_out <= p_max`` (kW), continuous (minimum stable load and start-up are not
modelled); optional injected reactive power ``q_out`` within ``p_out^2 + q_out^2 <= s_max^2``.
Fuel cost per step ``(c2 p_out^2 + c1 p_out) dt`` (EUR) with ``c1 = fuel price / eta_el``; the
co-produced heat is not credited (an electricity-led unit whose heat goes to a store or is
dumped). Demand is ``-p_out`` and ``-q_out`` (docs/design.md §1 sign convention).

Layouts (``B`` days, ``N`` agents):

* state ``[B, N, 1]``: ``p_out_prev_kw`` (output of the previous step; 0 at the start of the day)
* action ``[B, N, d]``: ``p_out_kw`` (+ generation), and ``q_out_kvar`` (+ injection) when
  ``reactive_power``
* observation ``[B, N, 1]``: ``p_out_prev / p_max`` (0..1)
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from pydantic import Field

from gridflex.plugins.contracts import ConvexFleet, DeviceModel, StepInputs, StrictConfig

from ._inverter import (q_from_u, reactive_limit_kvar, u_from_q, volt_var_injection_frac,
                        volt_watt_limit_frac)
from ._sampling import (EfficiencyRange, NonNegativeRange, OversizeRange, PositiveRange,
                        safe_unit_interval, sample_ranges)

CONTROLLERS = ("no_control", "rule_based", "droop")


def fuel_cost_eur(p_out_kw: torch.Tensor, c1_eur_per_kwh: torch.Tensor,
                  c2_eur_per_kw2h: torch.Tensor, dt_h: float) -> torch.Tensor:
    """Fuel cost ``(c2 p^2 + c1 p) dt`` of one step (EUR); broadcasts."""
    return (c2_eur_per_kw2h * p_out_kw**2 + c1_eur_per_kwh * p_out_kw) * dt_h


def price_following_output_kw(price_per_kwh: torch.Tensor, c1_eur_per_kwh: torch.Tensor,
                              c2_eur_per_kw2h: torch.Tensor, p_max_kw: torch.Tensor) -> torch.Tensor:
    """Output where marginal cost ``c1 + 2 c2 p`` equals the price, clipped to ``[0, p_max]``.

    With ``c2 = 0`` the unit is off below ``c1`` and at ``p_max`` above it.
    """
    margin = price_per_kwh - c1_eur_per_kwh
    slope = 2.0 * c2_eur_per_kw2h
    has_slope = slope > 0
    interior = margin / torch.where(has_slope, slope, torch.ones_like(slope))
    bang_bang = torch.where(margin > 0, p_max_kw, torch.zeros_like(p_max_kw))
    p_kw = torch.where(has_slope, interior, bang_bang)
    return torch.minimum(torch.clamp(p_kw, min=0.0), p_max_kw)


class Generator(DeviceModel):
    """Gas-engine micro-CHP units (electricity-led) with optional reactive power."""

    name: ClassVar[str] = "generator"
    state_dim: ClassVar[int] = 1
    obs_dim: ClassVar[int] = 1
    residual_names: ClassVar[tuple[str, ...]] = ()
    terminal_residual_names: ClassVar[tuple[str, ...]] = ()
    state_names: ClassVar[tuple[str, ...]] = ("p_out_prev_kw",)
    observation_names: ClassVar[tuple[str, ...]] = ("p_out_prev_frac",)
    action_names: ClassVar[tuple[str, ...]] = ("p_out_kw", "q_out_kvar")
    action_meanings: ClassVar[tuple[str, ...]] = (
        "electric output, + generation (the grid sees -p_out as demand)",
        "reactive power, + injected into the grid (inside the inverter circle)")

    class Config(StrictConfig):
        p_max_kw: PositiveRange = Field(
            (2.0, 5.5), description="rated electrical output (kW)")
        s_max_over_p_max: OversizeRange = Field(
            (1.1, 1.1), description="apparent-power rating of the grid interface over p_max (-)")
        eta_el: EfficiencyRange = Field(
            (0.25, 0.30), description="electrical efficiency on the fuel's energy content (-)")
        fuel_price_eur_per_kwh: NonNegativeRange = Field(
            (0.07, 0.10), description="natural-gas price per kWh of fuel (EUR/kWh)")
        c2_eur_per_kw2h: NonNegativeRange = Field(
            (0.002, 0.005), description="quadratic fuel-cost coefficient (EUR/(kW^2 h))")
        reactive_power: bool = Field(
            False, description="the policy also sets reactive power q_out (action_dim 2)")
        three_phase: bool = Field(
            False, description="three-phase unit: placed on three-phase buses, split equally")

    _SAMPLED = ("p_max_kw", "s_max_over_p_max", "eta_el", "fuel_price_eur_per_kwh",
                "c2_eur_per_kw2h")

    def __init__(self, config, n_agents: int, generator: torch.Generator, *, dt_h: float,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64):
        config = config if isinstance(config, self.Config) else self.Config.model_validate(config)
        super().__init__(config, n_agents, generator, dt_h=dt_h, device=device, dtype=dtype)
        self.three_phase = config.three_phase
        self.reactive_power = config.reactive_power
        self.action_dim = 2 if config.reactive_power else 1
        params = sample_ranges(config, self._SAMPLED, n_agents, generator, dtype=dtype,
                               device=self.device)
        self.p_max_kw = params["p_max_kw"]  # [N]
        self.s_max_kva = params["s_max_over_p_max"] * self.p_max_kw  # [N]
        self.c1_eur_per_kwh = params["fuel_price_eur_per_kwh"] / params["eta_el"]  # [N]
        self.c2_eur_per_kw2h = params["c2_eur_per_kw2h"]  # [N]

    # ------------------------------------------------------------------ state and observation
    def initial_state(self, batch: int, temp_out_c: torch.Tensor) -> torch.Tensor:
        """``[B, N, 1]`` zeros: the unit was off."""
        return torch.zeros(batch, self.n_agents, 1, dtype=self.dtype, device=self.device)

    def observation(self, state: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """``[B, N, 1]``: previous output over rated output."""
        return state / self.p_max_kw.unsqueeze(-1)

    # ------------------------------------------------------------------ actions and dynamics
    def action_bounds(self, state: torch.Tensor, inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, N, d]``: ``0 <= p_out <= p_max``; for ``q_out`` the outer limits ``-/+ s_max``
        (the applied ``q_out`` is limited to the circle given ``p_out``, see :meth:`action`)."""
        p_max = self.p_max_kw.expand(state.shape[:-1])
        if not self.reactive_power:
            return torch.zeros_like(p_max).unsqueeze(-1), p_max.unsqueeze(-1)
        s_max = self.s_max_kva.expand_as(p_max)
        return (torch.stack([torch.zeros_like(p_max), -s_max], dim=-1),
                torch.stack([p_max, s_max], dim=-1))

    def action(self, u: torch.Tensor, state: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """``p_out = p_max u_p``; ``q_out = q_lim(p_out) (2 u_q - 1)`` inside the circle."""
        p_out_kw = self.p_max_kw * u[..., 0]
        if not self.reactive_power:
            return p_out_kw.unsqueeze(-1)
        q_out_kvar = q_from_u(u[..., 1], reactive_limit_kvar(p_out_kw, self.s_max_kva))
        return torch.stack([p_out_kw, q_out_kvar], dim=-1)

    def step(self, state: torch.Tensor, action: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """The state remembers this step's output."""
        return action[..., :1]

    def cost(self, state: torch.Tensor, action: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """Fuel ``(c2 p_out^2 + c1 p_out) dt`` (EUR, ``[B, N]``)."""
        return fuel_cost_eur(action[..., 0], self.c1_eur_per_kwh, self.c2_eur_per_kw2h, self.dt_h)

    def residuals(self, state, action, next_state, inputs) -> torch.Tensor:
        """None: ``[B, N, 0]``."""
        return state.new_zeros(*state.shape[:-1], 0)

    def terminal_residuals(self, first_state: torch.Tensor, last_state: torch.Tensor) -> torch.Tensor:
        """None: ``[B, N, 0]``."""
        return last_state.new_zeros(*last_state.shape[:-1], 0)

    def demand(self, action: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drawn power ``-p_out`` (kW) and ``-q_out`` (kvar), ``[B, N]``."""
        p_out_kw = action[..., 0]
        q_out_kvar = action[..., 1] if self.reactive_power else torch.zeros_like(p_out_kw)
        return -p_out_kw, -q_out_kvar

    # ------------------------------------------------------------------ reference controllers
    def rule_based_p_out_kw(self, inputs: StepInputs) -> torch.Tensor:
        """Price-following output ``[B, N]`` (kW): marginal cost = broadcast price, clipped."""
        price = inputs.price_per_kwh.to(self.dtype).unsqueeze(-1)  # [B, 1]
        return price_following_output_kw(price, self.c1_eur_per_kwh, self.c2_eur_per_kw2h,
                                         self.p_max_kw)

    def u_for(self, p_out_kw: torch.Tensor, q_out_kvar: torch.Tensor | None) -> torch.Tensor:
        """Policy output ``u`` ``[B, N, d]`` giving ``p_out_kw`` and ``q_out_kvar`` (injection
        sign), each clipped to its feasible range (``q`` to the circle at the resulting ``p``)."""
        u_p = safe_unit_interval(p_out_kw, self.p_max_kw.expand_as(p_out_kw))
        if not self.reactive_power:
            return u_p.unsqueeze(-1)
        q_target = torch.zeros_like(p_out_kw) if q_out_kvar is None else q_out_kvar
        u_q = u_from_q(q_target, reactive_limit_kvar(self.p_max_kw * u_p, self.s_max_kva))
        return torch.stack([u_p, u_q], dim=-1)

    def baseline_u(self, controller: str, state: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """``no_control``: off. ``rule_based``: :meth:`rule_based_p_out_kw`, no q. ``droop``: the
        rule-based output capped by IEEE 1547 Volt-Watt and, with ``reactive_power``, Cat B
        Volt-VAR (watt priority: q is clipped to the circle), both from ``inputs.v_prev_pu``."""
        if controller not in CONTROLLERS:
            raise ValueError(f"unknown controller {controller!r}; expected one of {CONTROLLERS}")
        if controller == "no_control":
            return self.u_for(torch.zeros_like(state[..., 0]), None)
        p_out_kw = self.rule_based_p_out_kw(inputs).expand_as(state[..., 0])
        if controller == "rule_based":
            return self.u_for(p_out_kw, None)
        v_pu = inputs.v_prev_pu.to(self.dtype)
        p_out_kw = torch.minimum(p_out_kw, volt_watt_limit_frac(v_pu) * self.p_max_kw)
        q_out_kvar = volt_var_injection_frac(v_pu) * self.s_max_kva if self.reactive_power else None
        return self.u_for(p_out_kw, q_out_kvar)

    def authority_demand(self, state: torch.Tensor, inputs: StepInputs,
                         direction: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rated extreme ``p_kw, q_kvar`` ``[B, N]`` (demand sign: ``-p_out``, ``-q_out``).

        ``direction = +1`` (lowers the voltage): off and, with ``reactive_power``, absorbing
        its full circle ``q = +s_max``; ``direction = -1`` (raises it): at ``p_max``
        (``p = -p_max``) injecting the vars its circle leaves there. Without
        ``reactive_power``, ``q = 0``. See :meth:`DeviceModel.authority_demand`.
        """
        if direction not in (1, -1):
            raise ValueError(f"direction must be +1 or -1, got {direction!r}")
        p_max = self.p_max_kw.expand(state.shape[:-1])
        p_out_kw = torch.zeros_like(p_max) if direction == 1 else p_max
        if not self.reactive_power:
            return -p_out_kw, torch.zeros_like(p_out_kw)
        q_limit_kvar = reactive_limit_kvar(p_out_kw, self.s_max_kva)
        return -p_out_kw, direction * q_limit_kvar

    # ------------------------------------------------------------------ convex model (reference)
    def convex_model(self, cp, steps: int) -> ConvexFleet:
        """One day as a convex QP (exact): ``0 <= p_out <= p_max`` ``[N, T]`` (kW), fuel cost
        ``(c2 p_out^2 + c1 p_out) dt``, optional injected ``q_out`` within the circle (SOC);
        demand ``-p_out``, ``-q_out``."""
        n, dt = self.n_agents, self.dt_h
        col = lambda x: x.detach().cpu().numpy()[:, None]  # noqa: E731
        ones = np.ones((1, steps))
        p_out = cp.Variable((n, steps), nonneg=True, name="gen_p_out_kw")
        constraints = [p_out <= col(self.p_max_kw) * ones]
        q_out = 0 * p_out
        if self.reactive_power:
            q_out = cp.Variable((n, steps), name="gen_q_out_kvar")
            s_max = np.repeat(self.s_max_kva.detach().cpu().numpy(), steps)
            constraints.append(cp.SOC(s_max, cp.vstack([cp.reshape(p_out, (n * steps,), order="C"),
                                                         cp.reshape(q_out, (n * steps,), order="C")]), axis=0))
        cost = (cp.sum(cp.multiply(col(self.c2_eur_per_kw2h) * dt * ones, cp.square(p_out)))
                + cp.sum(cp.multiply(col(self.c1_eur_per_kwh) * dt * ones, p_out)))

        def actions():
            p = p_out.value.T[..., None]
            return p if not self.reactive_power else np.concatenate([p, q_out.value.T[..., None]], -1)

        def to_u(action, state, inputs):
            return self.u_for(action[..., 0], action[..., 1] if self.reactive_power else None)

        return ConvexFleet(constraints, cost, 0.0, -p_out, -q_out, lambda temp, price: None, actions, to_u)
