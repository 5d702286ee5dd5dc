"""One agent's controller as a self-contained torch module: raw local measurements -> set-point.

:class:`AgentGraph` is what ``gridflex export --format onnx`` hands the PyTorch ONNX exporter, one
per agent. Inputs (each ``[M]``, float64, ``M`` samples of the same agent, e.g. days):

* ``household_kw`` own uncontrolled household demand (kW), ``pv_kw`` own rooftop PV output (kW),
  ``temp_out_c`` outdoor temperature (degC), ``price_eur_per_kwh`` energy price (EUR/kWh),
  ``hour_of_day_h`` start of the control step (h, 0..24);
* ``v_prev_pu`` own node voltage at the previous step (pu), only when the scenario's agents
  observe their voltage (``environment.observe_voltage``);
* the device state, one input per component, named ``state_<name>`` (the device model's
  ``state_names``, e.g. ``state_e_kwh`` for a battery's stored energy).

It computes, exactly as the training environment and the learner do (docs/deploy.md):

1. the observation features ``[M, k]`` (float64): :func:`common_features` then the device
   model's own ``observation(state, inputs)``;
2. per-agent normalisation ``z = clip((x - mean) / sqrt(var + eps), -clip, clip)`` (float32);
3. the agent's MLP ``h <- act(h W_l + b_l)`` (float32; no activation after the last layer);
4. the squashing into ``u in [0, 1]^d``: ``sigmoid(h + offset)`` or ``clip(h + offset, 0, 1)``;
5. the physical set-point ``a = model.action(u, state, inputs)`` ``[M, d]`` (float64), i.e.
   ``lo(s) + (hi(s) - lo(s)) u`` with the device model's ``action_bounds`` (plus a device's own
   refinement such as the inverter circle for ``q``).

Outputs: ``set_point [M, d]`` in the units of the device's ``action_names``, and ``u [M, d]``.

The device model is viewed per agent (:func:`agent_view`): every tensor attribute whose leading
dimension is the fleet size is sliced to the agent's row, so the file holds this agent's
parameters only.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from gridflex.learning.policies import ACTIVATIONS, DeployablePolicy
from gridflex.plugins.contracts import DeviceModel, StepInputs

#: the raw inputs every agent file takes, in order, with units (then ``v_prev_pu``, then the state)
BASE_INPUTS = (("household_kw", "kW", "own uncontrolled household demand"),
               ("pv_kw", "kW", "own rooftop PV output"),
               ("temp_out_c", "degC", "outdoor temperature"),
               ("price_eur_per_kwh", "EUR/kWh", "energy price of the step"),
               ("hour_of_day_h", "h", "start of the control step within the day (0 <= h < 24)"))
VOLTAGE_INPUT = ("v_prev_pu", "pu", "own node voltage magnitude at the previous step (mean over phases)")
#: the environment's common observation features: name, unit, formula of the raw inputs
COMMON_FEATURES = (("household_kw", "kW", "household_kw"),
                   ("pv_kw_over_5", "1", "pv_kw / 5"),
                   ("temp_out_scaled", "1", "(temp_out_c - 10) / 10"),
                   ("price_scaled", "1", "(price_eur_per_kwh - 0.3) / 0.1"),
                   ("hour_sin", "1", "sin(2 pi (hour_of_day_h + dt_h / 2) / 24)"),
                   ("hour_cos", "1", "cos(2 pi (hour_of_day_h + dt_h / 2) / 24)"))
VOLTAGE_FEATURE = ("v_prev_scaled", "1", "(v_prev_pu - 1) / 0.05")


def common_features(household_kw: torch.Tensor, pv_kw: torch.Tensor, temp_out_c: torch.Tensor,
                    price: torch.Tensor, hour_h: torch.Tensor, dt_h: float,
                    v_prev_pu: torch.Tensor | None) -> torch.Tensor:
    """The environment's common features (:data:`COMMON_FEATURES`) of ``[M]`` inputs: ``[M, 6]``
    (``[M, 7]`` with ``v_prev_pu``), float64, in the same operation order as
    :meth:`gridflex.learning.environment.Environment.observation`."""
    angle = 2 * math.pi * (hour_h + 0.5 * dt_h) / 24.0
    features = [household_kw, pv_kw / 5.0, (temp_out_c - 10.0) / 10.0, (price - 0.3) / 0.1,
                torch.sin(angle), torch.cos(angle)]
    if v_prev_pu is not None:
        features.append((v_prev_pu - 1.0) / 0.05)
    return torch.stack(features, -1)


def agent_view(model: DeviceModel, agent: int) -> DeviceModel:
    """A shallow copy of a fleet's device model holding agent ``agent`` only (``n_agents == 1``):
    every tensor attribute with the fleet size as leading dimension is sliced to ``[agent:agent+1]``."""
    view = copy.copy(model)
    for name, value in vars(model).items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == model.n_agents:
            setattr(view, name, value[agent:agent + 1].detach().clone())
    view.n_agents = 1
    return view


class AgentGraph(nn.Module):
    """Agent ``agent`` of a fleet: raw inputs (module docstring) -> ``(set_point, u)``, each ``[M, d]``."""

    def __init__(self, model: DeviceModel, deployable: DeployablePolicy, agent: int, *, dt_h: float,
                 observe_voltage: bool):
        super().__init__()
        policy = deployable.policy
        self.model = agent_view(model, agent)
        self.dt_h = float(dt_h)
        self.observe_voltage = bool(observe_voltage)
        self.squash, self.offset = deployable.squash, float(deployable.offset)
        norm = policy.normaliser
        self.clip, self.eps = float(norm.clip), float(norm.eps)
        self.activation = policy.mlp.activation
        self.register_buffer("obs_mean", norm.mean[agent].detach().clone())  # [k]
        self.register_buffer("obs_var", norm.var[agent].detach().clone())  # [k]
        self.weights = nn.ParameterList(nn.Parameter(w[agent].detach().clone(), requires_grad=False)
                                        for w in policy.mlp.weights)  # [in, out] each
        self.biases = nn.ParameterList(nn.Parameter(b[agent].detach().clone(), requires_grad=False)
                                       for b in policy.mlp.biases)  # [out] each

    def input_names(self) -> list[str]:
        """The ONNX input names, in :meth:`forward`'s argument order."""
        names = [n for n, _, _ in BASE_INPUTS] + (["v_prev_pu"] if self.observe_voltage else [])
        return names + [f"state_{s}" for s in state_names(self.model)]

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        household_kw, pv_kw, temp_out_c, price, hour_h = inputs[:5]
        v_prev = inputs[5] if self.observe_voltage else None
        state = torch.stack(list(inputs[6 if self.observe_voltage else 5:]), -1).unsqueeze(1)  # [M, 1, S]
        step = StepInputs(t=0, dt_h=self.dt_h, hour_of_day=hour_h, temp_out_c=temp_out_c,
                          price_per_kwh=price, household_kw=household_kw.unsqueeze(1),
                          pv_kw=pv_kw.unsqueeze(1),
                          v_prev_pu=(v_prev if v_prev is not None else torch.ones_like(household_kw)).unsqueeze(1))
        features = common_features(household_kw, pv_kw, temp_out_c, price, hour_h, self.dt_h, v_prev)
        obs = torch.cat([features, self.model.observation(state, step)[:, 0]], -1)  # [M, k] float64
        u = self.policy_output(obs)
        set_point = self.model.action(u.to(obs.dtype).unsqueeze(1), state, step)[:, 0]  # [M, d]
        return set_point, u.to(obs.dtype)

    def policy_output(self, obs: torch.Tensor) -> torch.Tensor:
        """``u [M, d]`` (policy dtype) of observation features ``obs [M, k]``: steps 2-4."""
        z = (obs.to(self.obs_mean.dtype) - self.obs_mean) / torch.sqrt(self.obs_var + self.eps)
        h = z.clamp(-self.clip, self.clip)
        last = len(self.weights) - 1
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.addmm(b, h, w)
            if layer < last:
                h = self.activation(h)
        h = h + self.offset
        return torch.sigmoid(h) if self.squash == "sigmoid" else h.clamp(0.0, 1.0)


def state_names(model: DeviceModel) -> list[str]:
    """The device state's component names (``model.state_names``, else ``s0, s1, ...``)."""
    names = list(model.state_names)
    return names if len(names) == model.state_dim else [f"s{i}" for i in range(model.state_dim)]


def activation_name(policy) -> str:
    """The name of a stacked MLP's hidden activation (a key of :data:`ACTIVATIONS`)."""
    return next(name for name, fn in ACTIVATIONS.items() if fn is policy.mlp.activation)
