"""Non-learning reference controllers (docs/design.md §1), registered as learners.

* ``no_control``: batteries idle, heat pumps on a hysteresis thermostat around mid-band,
  generators off;
* ``rule_based``: price-following batteries within their limits and the end-of-day condition,
  thermostat heat pumps, price-following generators;
* ``droop``: IEEE 1547-2018 Volt-VAR / Volt-Watt on inverter devices from the previous step's
  local voltage.

Each device fleet implements the rule for its own type (``DeviceModel.baseline_u``); these
controllers only dispatch, so a third-party device takes part by implementing that method.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from gridflex.plugins.contracts import Learner, StepInputs, StrictConfig
from gridflex.plugins.hookspecs import hookimpl


class _Baseline(Learner):
    """A fixed controller evaluated beside every run's learner (``role = "baseline"``)."""

    controller_name: ClassVar[str]
    role: ClassVar[str] = "baseline"
    shards_agents: ClassVar[bool] = True  # acts through this process's device models

    class Config(StrictConfig):
        """No parameters: device-specific settings live in each device's params."""

    def act(self, fleet_index: int, t: int, obs: torch.Tensor, state: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        model = self.env.acting_fleets[fleet_index].model
        return model.baseline_u(self.controller_name, state, inputs)


class NoControl(_Baseline):
    """Batteries idle, heat pumps on a thermostat, generators off."""

    name = "no_control"
    controller_name = "no_control"


class RuleBased(_Baseline):
    """Price-following batteries and generators, thermostat heat pumps."""

    name = "rule_based"
    controller_name = "rule_based"


class Droop(_Baseline):
    """IEEE 1547-2018 Volt-VAR / Volt-Watt on inverter devices from the previous local voltage."""

    name = "droop"
    controller_name = "droop"
    voltage_feedback = True


REFERENCE_CONTROLLERS = ("no_control", "rule_based", "droop")


@hookimpl
def gridflex_register_learners(register) -> None:
    for cls in (NoControl, RuleBased, Droop):
        register(cls)
