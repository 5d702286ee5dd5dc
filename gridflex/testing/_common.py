"""Shared pieces of the contract suites: synthetic step inputs and tensor comparisons."""

from __future__ import annotations

import math
from dataclasses import fields, replace

import torch

from gridflex.plugins.contracts import StepInputs


def synthetic_day(batch: int, n_agents: int, *, steps: int = 24, dt_h: float = 1.0,
                  dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                  generator: torch.Generator | None = None) -> list[StepInputs]:
    """``steps`` :class:`StepInputs` of ``batch`` made-up days for ``n_agents`` agents.

    Plausible and varied, not data: per day an outdoor temperature ``[-12, 22]`` degC with a
    daily swing, a price ``[0.12, 0.48]`` EUR/kWh with an evening peak; per agent a household
    demand ``[0.1, 3.5]`` kW, rooftop PV ``[0, 6]`` kW at midday (zero at night) and a previous
    node voltage ``[0.9, 1.1]`` pu (beyond the 0.92/1.08 pu ends of the droop curves).
    """
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    kw = dict(dtype=torch.float64)
    temp_mean_c = -12.0 + 34.0 * torch.rand(batch, generator=gen, **kw)
    price_base = 0.12 + 0.24 * torch.rand(batch, generator=gen, **kw)
    pv_kwp = 6.0 * torch.rand(n_agents, generator=gen, **kw)
    days = []
    for t in range(steps):
        hour = t * dt_h
        swing = math.sin(2 * math.pi * (hour - 9.0) / 24.0)
        temp_c = temp_mean_c + 4.0 * swing + torch.randn(batch, generator=gen, **kw)
        price = price_base + 0.12 * max(0.0, math.sin(2 * math.pi * (hour - 12.0) / 24.0))
        sun = max(0.0, math.sin(math.pi * (hour - 6.0) / 12.0))
        household_kw = 0.1 + 3.4 * torch.rand(batch, n_agents, generator=gen, **kw)
        pv_kw = pv_kwp * sun * torch.rand(batch, n_agents, generator=gen, **kw)
        v_prev_pu = 0.9 + 0.2 * torch.rand(batch, n_agents, generator=gen, **kw)
        to = dict(dtype=dtype, device=device)
        days.append(StepInputs(t=t, dt_h=dt_h, hour_of_day=hour, temp_out_c=temp_c.to(**to),
                               price_per_kwh=price.to(**to), household_kw=household_kw.to(**to),
                               pv_kw=pv_kw.to(**to), v_prev_pu=v_prev_pu.to(**to)))
    return days


def clone_inputs(inputs: StepInputs) -> StepInputs:
    """A deep copy of the tensors of ``inputs``."""
    return replace(inputs, **{f.name: getattr(inputs, f.name).clone() for f in fields(inputs)
                              if isinstance(getattr(inputs, f.name), torch.Tensor)})


def differing_fields(a: StepInputs, b: StepInputs) -> list[str]:
    """Names of the fields where ``a`` and ``b`` differ (tensors compared exactly)."""
    differ = []
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        same = torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
        if not same:
            differ.append(f.name)
    return differ


def per_agent_fields() -> tuple[str, ...]:
    """:class:`StepInputs` fields of shape ``[B, N]`` (an agent's own household and node)."""
    return ("household_kw", "pv_kw", "v_prev_pu")


def per_day_fields() -> tuple[str, ...]:
    """:class:`StepInputs` fields of shape ``[B]`` (broadcast to every agent of a day)."""
    return ("temp_out_c", "price_per_kwh")

