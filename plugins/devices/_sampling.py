"""Parameter ranges of device configs and their per-agent sampling.

A device config states every per-agent parameter as a closed range ``(lo, hi)``; a fleet draws
one value per agent, uniformly in ``[lo, hi]``, once at construction. ``lo == hi`` is a constant.

* :func:`Range` builds the pydantic type of such a field: a 2-tuple of floats whose entries obey
  physical bounds (``gt``/``ge``/``lt``/``le``) and with ``lo <= hi``. A violation is a pydantic
  ``ValidationError`` whose location names the field.
* :func:`sample_uniform` draws ``[N]`` values for one range with a ``torch.Generator``.
* :func:`sample_ranges` draws several fields in a fixed order, so a fleet's parameters depend on
  the seed and the config only (not on dtype or device).
"""

from __future__ import annotations

from typing import Annotated, Any, Iterable

import torch
from annotated_types import Ge, Gt, Le, Lt
from pydantic import AfterValidator, BaseModel

RangeValue = tuple[float, float]


def check_ordered(value: RangeValue) -> RangeValue:
    """Reject a range whose lower end exceeds its upper end."""
    lo, hi = value
    if lo > hi:
        raise ValueError(f"range lower end {lo} exceeds upper end {hi}; give (lo, hi) with lo <= hi")
    return value


def Range(*, gt: float | None = None, ge: float | None = None, lt: float | None = None,
          le: float | None = None) -> Any:
    """Pydantic type of a ``(lo, hi)`` range whose ends obey the given physical bounds.

    Example: ``capacity_kwh: Range(gt=0) = Field((5.0, 13.5), description=...)``.
    """
    bounds = [b for b in (Gt(gt) if gt is not None else None, Ge(ge) if ge is not None else None,
                          Lt(lt) if lt is not None else None, Le(le) if le is not None else None)
              if b is not None]
    end = Annotated[(float, *bounds)] if bounds else float
    return Annotated[tuple[end, end], AfterValidator(check_ordered)]


def check_below(config: BaseModel, lower: str, upper: str, *, strict: bool = True) -> None:
    """Require every value of range ``lower`` to lie below every value of range ``upper``.

    Used in ``model_validator``\\ s, e.g. so that every sampled comfort band has
    ``theta_min_c < theta_max_c``. Raises ``ValueError`` naming both fields.
    """
    lo_top = getattr(config, lower)[1]
    up_bottom = getattr(config, upper)[0]
    if lo_top > up_bottom or (strict and lo_top == up_bottom):
        relation = "<" if strict else "<="
        raise ValueError(
            f"{lower} upper end ({lo_top}) must be {relation} {upper} lower end ({up_bottom}), "
            f"so that every agent gets {lower} {relation} {upper}")


def sample_uniform(value_range: RangeValue, n_agents: int, generator: torch.Generator, *,
                   dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[n_agents]`` values uniform in ``[lo, hi]``; exactly ``lo`` everywhere when ``lo == hi``.

    Draws in float64 on the generator's own device, then converts: the values depend on the
    generator's state only. Always consumes ``n_agents`` draws, so changing one range to a
    constant does not shift the draws of the fields sampled after it.
    """
    lo, hi = (float(v) for v in value_range)
    r = torch.rand(n_agents, generator=generator, dtype=torch.float64, device=generator.device)
    values = lo + (hi - lo) * r if hi > lo else torch.full_like(r, lo)
    return values.to(device=device, dtype=dtype)


def sample_ranges(config: BaseModel, names: Iterable[str], n_agents: int,
                  generator: torch.Generator, *, dtype: torch.dtype,
                  device: torch.device) -> dict[str, torch.Tensor]:
    """Sample the range fields ``names`` of ``config`` in the order given: ``{name: [N]}``."""
    return {name: sample_uniform(getattr(config, name), n_agents, generator, dtype=dtype,
                                 device=device)
            for name in names}


def safe_unit_interval(numerator: torch.Tensor, width: torch.Tensor,
                       tiny: float = 1e-12) -> torch.Tensor:
    """``clamp(numerator / width, 0, 1)`` with 0 where ``width <= tiny``: the inverse of an
    affine map ``a = lo + width * u`` used by the baseline controllers."""
    ok = width > tiny
    u = numerator / torch.where(ok, width, torch.ones_like(width))
    return torch.where(ok, u, torch.zeros_like(u)).clamp(0.0, 1.0)


# Range types used by the device configs (ends obey these physical bounds).
PositiveRange = Range(gt=0)
NonNegativeRange = Range(ge=0)
FractionRange = Range(ge=0, le=1)
EfficiencyRange = Range(gt=0, le=1)
OversizeRange = Range(ge=1, le=3)
