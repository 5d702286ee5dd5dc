"""A tiny plugin used by the tests: one device, one learner, registered through the real hooks.

Both are complete (registration rejects abstract classes) and pass the contract suites of
gridflex.testing (tests/test_contracts.py), which also uses them as the known-good base of the
deliberately broken variants that the suites must catch.
"""

from __future__ import annotations

import torch
from pydantic import Field

import gridflex
from gridflex.plugins.contracts import DeviceModel, Learner, StepInputs, StrictConfig


class ToyStore(DeviceModel):
    """A test device: identical energy stores with one charge/discharge efficiency.

    State ``[B, N, 1]``: stored energy ``e_kwh``, starting half full. Action ``[B, N, 1]``: AC
    power ``p_kw`` (+ charges) within ``[-min(p_max, e eta / dt), min(p_max, (e_max - e) / (eta dt))]``;
    ``e_next = e + (eta max(p, 0) - max(-p, 0) / eta) dt``. Demand ``p_kw`` (bidirectional), no
    reactive power, no operating cost, no residuals.
    """

    name = "toy_store"

    class Config(StrictConfig):
        p_max_kw: float = Field(5.0, gt=0, le=1000, description="rated power (kW)")
        e_max_kwh: float = Field(10.0, gt=0, description="capacity (kWh)")
        efficiency: float = Field(0.95, gt=0, le=1, description="one-way efficiency")

    def initial_state(self, batch: int, temp_out_c: torch.Tensor) -> torch.Tensor:
        return torch.full((batch, self.n_agents, 1), 0.5 * self.config.e_max_kwh, dtype=self.dtype,
                          device=self.device)

    def observation(self, state: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        return state / self.config.e_max_kwh

    def action_bounds(self, state: torch.Tensor, inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        e_kwh = state.clamp(0.0, cfg.e_max_kwh)
        lo = -torch.clamp(e_kwh * cfg.efficiency / self.dt_h, max=cfg.p_max_kw)
        hi = torch.clamp((cfg.e_max_kwh - e_kwh) / (cfg.efficiency * self.dt_h), max=cfg.p_max_kw)
        return lo, hi

    def step(self, state: torch.Tensor, action: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        eta = self.config.efficiency
        return state + (eta * torch.relu(action) - torch.relu(-action) / eta) * self.dt_h

    def cost(self, state: torch.Tensor, action: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        return torch.zeros_like(action[..., 0])

    def residuals(self, state, action, next_state, inputs) -> torch.Tensor:
        return state.new_zeros(*state.shape[:-1], 0)

    def terminal_residuals(self, first_state: torch.Tensor, last_state: torch.Tensor) -> torch.Tensor:
        return last_state.new_zeros(*last_state.shape[:-1], 0)

    def demand(self, action: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p_kw = action[..., 0]
        return p_kw, torch.zeros_like(p_kw)

    def baseline_u(self, controller: str, state: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """Idle (``p = 0``), except ``rule_based`` charging at full power below 0.25 EUR/kWh."""
        lo, hi = self.action_bounds(state, inputs)
        idle = (-lo / (hi - lo).clamp(min=1e-12)).clamp(0.0, 1.0)
        if controller == "rule_based":
            cheap = (inputs.price_per_kwh < 0.25).to(self.dtype)[:, None, None]
            return cheap + (1.0 - cheap) * idle
        return idle


class ToyLearner(Learner):
    """A test learner: every agent outputs a constant ``u`` (0.5 by default)."""

    name = "toy_learner"

    class Config(StrictConfig):
        eta: float = Field(0.1, gt=0, description="step size")
        epochs: int = Field(3, ge=1, description="inner epochs")
        u_constant: float = Field(0.5, ge=0, le=1, description="the constant policy output (-)")

    def act(self, fleet_index: int, t: int, obs: torch.Tensor, state: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        d = int(self.env.fleets[fleet_index].model.action_dim)
        return torch.full((*obs.shape[:-1], d), self.config.u_constant, dtype=obs.dtype, device=obs.device)


@gridflex.hookimpl
def gridflex_register_devices(register):
    register(ToyStore)


@gridflex.hookimpl
def gridflex_register_learners(register):
    register(ToyLearner)
