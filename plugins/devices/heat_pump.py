"""``heat_pump``: air-source heat pumps heating single-family houses (first-order RC building).

Building (one thermal resistance ``R`` in degC/kW, one capacitance ``C`` in kWh/degC), heat
input ``COP(theta_out) * p`` held constant over the step (exact zero-order hold)::

    C dtheta/dt = (theta_out - theta) / R + COP(theta_out) * p
    theta_next  = a * theta + (1 - a) * (theta_out + R * COP(theta_out) * p),  a = exp(-dt / (R C))

COP: Staffell et al. (2012) air-source fit ``6.81 - 0.121 dT + 0.000630 dT^2`` in the temperature
lift ``dT = t_supply - theta_out`` (clipped to the fit's 15..60 K), times a field derating; it
rises monotonically with the outdoor temperature. ``0 <= p <= p_max`` with ``p_max`` sized per
agent to hold the band's mid temperature at the design outdoor temperature, times an oversize
factor. The comfort band ``[theta_min, theta_max]`` is soft (residual in degC per step, reported as
degC h by the environment), and so is the end-of-day temperature.

Layouts (``B`` days, ``N`` agents):

* state ``[B, N, 2]``: ``theta_c`` (indoor temperature), ``thermostat_on`` (0/1; the hysteresis
  memory of the thermostat baseline, set in :meth:`step` to ``p > 0``; no gradient)
* action ``[B, N, 1]``: ``p_kw`` (electric power drawn)
* observation ``[B, N, 1]``: ``(theta - theta_mid) / (theta_max - theta_min)`` (+-0.5 at the band edges)
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from pydantic import Field, model_validator

from gridflex.plugins.contracts import ConvexFleet, DeviceModel, StepInputs, StrictConfig

from ._sampling import (EfficiencyRange, OversizeRange, PositiveRange, Range, check_below,
                        sample_ranges)

CONTROLLERS = ("no_control", "rule_based", "droop")

# Staffell, Brett, Brandon, Hawkes (2012), Energy Environ. Sci. 5, 9291: air-source heat pump COP
# regression on the temperature lift dT (K), valid for 15 <= dT <= 60.
STAFFELL_ASHP_COEFFS = (6.81, -0.121, 0.000630)
STAFFELL_LIFT_RANGE_K = (15.0, 60.0)

ComfortRange = Range(ge=5, le=35)
SupplyRange = Range(ge=25, le=75)


def cop_air_source(temp_out_c: torch.Tensor, t_supply_c: torch.Tensor,
                   derate: torch.Tensor) -> torch.Tensor:
    """Coefficient of performance (-) of an air-source heat pump; broadcasts its inputs.

    ``derate * (6.81 - 0.121 dT + 0.000630 dT^2)`` with ``dT = t_supply - temp_out`` clipped to
    15..60 K, floored at 1 (never worse than a resistive heater). Non-decreasing in ``temp_out``.
    """
    c0, c1, c2 = STAFFELL_ASHP_COEFFS
    lift_k = torch.clamp(t_supply_c - temp_out_c, *STAFFELL_LIFT_RANGE_K)
    return torch.clamp(derate * (c0 + c1 * lift_k + c2 * lift_k**2), min=1.0)


def rc_step_c(theta_c: torch.Tensor, temp_out_c: torch.Tensor, heat_kw: torch.Tensor,
              r_c_per_kw: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    """Indoor temperature after one step of constant heat input ``heat_kw`` (exact ZOH, degC).

    ``decay = exp(-dt / (R C))``; the steady state for that input is ``temp_out + R * heat``.
    """
    steady_c = temp_out_c + r_c_per_kw * heat_kw
    return decay * theta_c + (1.0 - decay) * steady_c


def thermostat_on(theta_c: torch.Tensor, theta_free_c: torch.Tensor, was_on: torch.Tensor,
                  lower_c: torch.Tensor, upper_c: torch.Tensor, tol_c: float = 1e-6) -> torch.Tensor:
    """Hysteresis switch of the discrete-time thermostat, 0/1 in the dtype of ``theta_c``.

    Switches on when the temperature would fall below ``lower_c`` by the end of the step with
    the heat pump off (``theta_free_c``), off once the temperature has reached ``upper_c``, and
    otherwise keeps its state ``was_on`` (on wins when both hold).
    """
    on = torch.where(theta_c >= upper_c - tol_c, torch.zeros_like(theta_c), was_on)
    return torch.where(theta_free_c < lower_c, torch.ones_like(theta_c), on)


class HeatPump(DeviceModel):
    """Air-source heat pumps heating houses modelled as first-order RC circuits."""

    name: ClassVar[str] = "heat_pump"
    state_dim: ClassVar[int] = 2
    action_dim: ClassVar[int] = 1
    obs_dim: ClassVar[int] = 1
    residual_names: ClassVar[tuple[str, ...]] = ("discomfort_c",)
    terminal_residual_names: ClassVar[tuple[str, ...]] = ("end_discomfort_c",)
    state_names: ClassVar[tuple[str, ...]] = ("theta_c", "thermostat_on_flag")
    observation_names: ClassVar[tuple[str, ...]] = ("theta_offset_band_frac",)
    action_names: ClassVar[tuple[str, ...]] = ("p_kw",)
    action_meanings: ClassVar[tuple[str, ...]] = (
        "electric power drawn by the compressor, + consumption (reactive power follows at its power factor)",)

    class Config(StrictConfig):
        r_c_per_kw: PositiveRange = Field(
            (4.0, 7.0), description="thermal resistance indoor to outdoor, 1/UA (degC/kW)")
        c_kwh_per_c: PositiveRange = Field(
            (5.0, 12.0), description="effective thermal capacitance of the house (kWh/degC)")
        theta_min_c: ComfortRange = Field(
            (19.5, 20.5), description="lower edge of the comfort band (degC)")
        theta_max_c: ComfortRange = Field(
            (23.0, 24.0), description="upper edge of the comfort band (degC)")
        t_supply_c: SupplyRange = Field(
            (35.0, 45.0), description="heating flow (supply) temperature used in the COP lift (degC)")
        cop_derate: EfficiencyRange = Field(
            (0.85, 0.85), description="field over datasheet COP factor applied to the Staffell fit (-)")
        oversize: OversizeRange = Field(
            (1.1, 1.3), description="p_max over the electric power holding mid-band at design temperature (-)")
        design_temp_out_c: float = Field(
            -14.0, ge=-40, le=10, description="design outdoor temperature for sizing (degC)")
        power_factor: EfficiencyRange = Field(
            (0.95, 0.99), description="displacement power factor of the unit, lagging (-)")
        thermostat_deadband_c: float = Field(
            0.5, gt=0, le=5, description="thermostat hysteresis around mid-band, +- (degC)")
        three_phase: bool = Field(
            False, description="three-phase unit: placed on three-phase buses, split equally")

        @model_validator(mode="after")
        def _consistent(self):
            check_below(self, "theta_min_c", "theta_max_c")
            narrowest_c = self.theta_max_c[0] - self.theta_min_c[1]
            if 2 * self.thermostat_deadband_c >= narrowest_c:
                raise ValueError(
                    f"thermostat_deadband_c={self.thermostat_deadband_c} must be less than half the "
                    f"narrowest comfort band ({narrowest_c} degC)")
            return self

    _SAMPLED = ("r_c_per_kw", "c_kwh_per_c", "theta_min_c", "theta_max_c", "t_supply_c",
                "cop_derate", "oversize", "power_factor")

    def __init__(self, config, n_agents: int, generator: torch.Generator, *, dt_h: float,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64):
        config = config if isinstance(config, self.Config) else self.Config.model_validate(config)
        super().__init__(config, n_agents, generator, dt_h=dt_h, device=device, dtype=dtype)
        self.three_phase = config.three_phase
        params = sample_ranges(config, self._SAMPLED, n_agents, generator, dtype=dtype,
                               device=self.device)
        self.r_c_per_kw = params["r_c_per_kw"]  # [N]
        self.c_kwh_per_c = params["c_kwh_per_c"]  # [N]
        self.theta_min_c = params["theta_min_c"]  # [N]
        self.theta_max_c = params["theta_max_c"]  # [N]
        self.theta_mid_c = 0.5 * (self.theta_min_c + self.theta_max_c)  # [N]
        self.t_supply_c = params["t_supply_c"]  # [N]
        self.cop_derate = params["cop_derate"]  # [N]
        self.decay = torch.exp(-dt_h / (self.r_c_per_kw * self.c_kwh_per_c))  # [N]
        self.tan_phi = torch.sqrt(1.0 - params["power_factor"] ** 2) / params["power_factor"]
        self.p_max_kw = params["oversize"] * self.design_power_kw(config.design_temp_out_c)  # [N]

    def cop(self, temp_out_c: torch.Tensor | float) -> torch.Tensor:
        """Per-agent COP ``[B, N]`` at outdoor temperatures ``temp_out_c`` ``[B]`` (or scalar)."""
        if isinstance(temp_out_c, torch.Tensor):
            temp = temp_out_c.to(dtype=self.dtype, device=self.device)
        else:
            temp = torch.tensor(float(temp_out_c), dtype=self.dtype, device=self.device)
        return cop_air_source(temp.reshape(-1, 1), self.t_supply_c, self.cop_derate)

    def design_power_kw(self, design_temp_out_c: float) -> torch.Tensor:
        """Electric power ``[N]`` that holds mid-band in steady state at ``design_temp_out_c``."""
        heat_loss_kw = (self.theta_mid_c - design_temp_out_c) / self.r_c_per_kw
        return heat_loss_kw / self.cop(design_temp_out_c)[0]

    # ------------------------------------------------------------------ state and observation
    def initial_state(self, batch: int, temp_out_c: torch.Tensor) -> torch.Tensor:
        """``[B, N, 2]``: mid-band temperature, thermostat off."""
        theta_c = self.theta_mid_c.expand(batch, self.n_agents)
        return torch.stack([theta_c, torch.zeros_like(theta_c)], dim=-1)

    def observation(self, state: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """``[B, N, 1]``: indoor temperature relative to mid-band, in band widths."""
        width_c = self.theta_max_c - self.theta_min_c
        return ((state[..., 0] - self.theta_mid_c) / width_c).unsqueeze(-1)

    # ------------------------------------------------------------------ actions and dynamics
    def action_bounds(self, state: torch.Tensor, inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """``0 <= p <= p_max`` (kW), each ``[B, N, 1]``."""
        hi = self.p_max_kw.expand(state.shape[:-1]).unsqueeze(-1)
        return torch.zeros_like(hi), hi

    def step(self, state: torch.Tensor, action: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """Exact ZOH step of the RC building; the thermostat flag becomes ``p > 0`` (running)."""
        p_kw = action[..., 0]
        temp_out_c = inputs.temp_out_c.to(self.dtype).unsqueeze(-1)  # [B, 1]
        heat_kw = self.cop(inputs.temp_out_c) * p_kw
        theta_next = rc_step_c(state[..., 0], temp_out_c, heat_kw, self.r_c_per_kw, self.decay)
        on_next = (p_kw > 0).to(self.dtype).detach()
        return torch.stack([theta_next, on_next], dim=-1)

    def cost(self, state: torch.Tensor, action: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """No operating cost beyond the electricity the network pays for: zeros ``[B, N]``."""
        return torch.zeros_like(action[..., 0])

    def _band_violation_c(self, theta_c: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.theta_min_c - theta_c) + torch.relu(theta_c - self.theta_max_c)

    def residuals(self, state, action, next_state, inputs) -> torch.Tensor:
        """``[B, N, 1]``: distance of the temperature at the end of the step from the band (degC)."""
        return self._band_violation_c(next_state[..., 0]).unsqueeze(-1)

    def terminal_residuals(self, first_state: torch.Tensor, last_state: torch.Tensor) -> torch.Tensor:
        """``[B, N, 1]``: distance of the end-of-day temperature from the band (degC)."""
        return self._band_violation_c(last_state[..., 0]).unsqueeze(-1)

    def demand(self, action: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``p_kw`` drawn and lagging ``q_kvar = p tan(phi)`` at the unit's power factor, ``[B, N]``."""
        p_kw = action[..., 0]
        return p_kw, p_kw * self.tan_phi

    # ------------------------------------------------------------------ reference controllers
    def thermostat_p_kw(self, state: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """Electric power ``[B, N]`` (kW) of the hysteresis thermostat around mid-band.

        On/off with a deadband of +-``thermostat_deadband_c`` (memory: the on-flag in the
        state), decided on the end-of-step temperature so the hourly sampling adds no lag.
        While on, the unit heats at the step-average power of an on/off unit cycling up to the
        upper threshold (equivalently a modulating unit), at most ``p_max``: a full-power hour
        would overshoot a light house at mild weather by several degC.
        """
        theta_c, was_on = state.unbind(-1)
        temp_out_c = inputs.temp_out_c.to(self.dtype).unsqueeze(-1)  # [B, 1]
        deadband_c = self.config.thermostat_deadband_c
        upper_c = self.theta_mid_c + deadband_c
        theta_free_c = rc_step_c(theta_c, temp_out_c, torch.zeros_like(theta_c), self.r_c_per_kw,
                                 self.decay)
        on = thermostat_on(theta_c, theta_free_c, was_on, self.theta_mid_c - deadband_c, upper_c)
        gain_c_per_kw = (1.0 - self.decay) * self.r_c_per_kw * self.cop(inputs.temp_out_c)
        p_to_upper_kw = (upper_c - theta_free_c) / gain_c_per_kw
        return on * torch.minimum(torch.clamp(p_to_upper_kw, min=0.0), self.p_max_kw)

    def baseline_u(self, controller: str, state: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """All three controllers run :meth:`thermostat_p_kw` (heat pumps are not
        inverter-interfaced here): ``u = p / p_max``, ``[B, N, 1]``."""
        if controller not in CONTROLLERS:
            raise ValueError(f"unknown controller {controller!r}; expected one of {CONTROLLERS}")
        return (self.thermostat_p_kw(state, inputs) / self.p_max_kw).clamp(0.0, 1.0).unsqueeze(-1)

    def authority_demand(self, state: torch.Tensor, inputs: StepInputs,
                         direction: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rated extreme ``p_kw, q_kvar`` ``[B, N]`` (demand sign), comfort band ignored.

        ``direction = +1`` (lowers the voltage): on at ``p_max`` with its lagging
        ``q = p_max tan(phi)``; ``direction = -1`` (raises it): off, ``p = q = 0``. See
        :meth:`DeviceModel.authority_demand`.
        """
        if direction not in (1, -1):
            raise ValueError(f"direction must be +1 or -1, got {direction!r}")
        p_max = self.p_max_kw.expand(state.shape[:-1])
        p_kw = p_max if direction == 1 else torch.zeros_like(p_max)
        return p_kw, p_kw * self.tan_phi

    # ------------------------------------------------------------------ convex model (reference)
    def convex_model(self, cp, steps: int) -> ConvexFleet:
        """One day as a linear program, exact for a known outdoor temperature: ``0 <= p <= p_max``
        ``[N, T]`` (kW), ``theta [N, T+1]`` with ``theta_0`` = mid-band and the ZOH step
        ``theta_{t+1} = a theta_t + (1 - a) theta_out,t + (1 - a) R COP(theta_out,t) p_t``
        (the two day-dependent terms are Parameters), comfort band soft with slacks (degC),
        ``penalty`` = their sum x dt (degC h; the end-of-day temperature is the last step's).
        """
        n, dt = self.n_agents, self.dt_h
        col = lambda x: x.detach().cpu().numpy()[:, None]  # noqa: E731
        decay, p_max = col(self.decay), col(self.p_max_kw)
        theta_min, theta_max, theta_mid = col(self.theta_min_c), col(self.theta_max_c), col(self.theta_mid_c)
        ones = np.ones((1, steps))
        gain = cp.Parameter((n, steps), name="hp_gain_c_per_kw")  # (1 - a) R COP_t
        drift = cp.Parameter((n, steps), name="hp_drift_c")  # (1 - a) theta_out,t
        p_kw = cp.Variable((n, steps), nonneg=True, name="hp_p_kw")
        theta = cp.Variable((n, steps + 1), name="hp_theta_c")
        below = cp.Variable((n, steps), nonneg=True, name="hp_below_c")
        above = cp.Variable((n, steps), nonneg=True, name="hp_above_c")
        constraints = [
            p_kw <= p_max * ones,
            theta[:, 0] == theta_mid[:, 0],
            theta[:, 1:] == cp.multiply(decay * ones, theta[:, :-1]) + drift + cp.multiply(gain, p_kw),
            theta[:, 1:] >= theta_min * ones - below,
            theta[:, 1:] <= theta_max * ones + above,
        ]
        r = self.r_c_per_kw.detach().cpu().numpy()[:, None]

        def set_day(temp_out_c, price_per_kwh):
            temp = torch.as_tensor(np.asarray(temp_out_c), dtype=self.dtype, device=self.device)
            cop = self.cop(temp).detach().cpu().numpy().T  # [N, T]
            gain.value = (1.0 - decay) * r * cop
            drift.value = (1.0 - decay) * np.asarray(temp_out_c, dtype=float)[None, :]

        def to_u(action, state, inputs):
            return (action / self.p_max_kw.unsqueeze(-1)).clamp(0.0, 1.0)

        tan_phi = col(self.tan_phi)
        return ConvexFleet(constraints, 0.0, dt * cp.sum(below + above), p_kw,
                           cp.multiply(tan_phi * ones, p_kw), set_day,
                           lambda: p_kw.value.T[..., None], to_u)
