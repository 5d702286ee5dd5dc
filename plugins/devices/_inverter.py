"""Inverter capability circle and IEEE 1547-2018 Category B default Volt-VAR / Volt-Watt curves.

Shared by the inverter-interfaced fleets (battery, generator). All functions are elementwise on
tensors of any shape and differentiable where the physics is smooth.

Reactive power here is **injected** reactive power ``q_inj`` (positive = capacitive, supports the
voltage) unless a name says ``demand``; a fleet's :meth:`demand` converts to the grid's
drawn-power sign convention (docs/design.md §1).
"""

from __future__ import annotations

import torch

# IEEE Std 1547-2018 §5.3.3 (voltage-reactive power mode, Category B default settings): voltages in pu of nominal,
# reactive power as a fraction of the nameplate apparent power (+ = injection).
VOLT_VAR_V_PU = (0.92, 0.98, 1.02, 1.08)
VOLT_VAR_Q_FRAC = 0.44
# IEEE Std 1547-2018 §5.4.2 (voltage-active power mode, default settings): from V1 = 1.06 pu to
# V2 = 1.10 pu the active-power limit falls linearly from P_rated to P2 = 0.2 P_rated.
VOLT_WATT_V_PU = (1.06, 1.10)
VOLT_WATT_P2_FRAC = 0.2

CIRCLE_EPS_REL = 1e-10  # smoothing of the circle's square root, relative to s_max^2


def reactive_limit_kvar(p_kw: torch.Tensor, s_max_kva: torch.Tensor,
                        eps_rel: float = CIRCLE_EPS_REL) -> torch.Tensor:
    """Largest ``|q|`` (kvar) on the inverter circle ``p^2 + q^2 <= s_max^2`` at active power ``p``.

    ``sqrt(max(s^2 - p^2, 0) + eps s^2) - sqrt(eps) s``: never above the exact limit, exactly 0
    at ``|p| = s``, and with a bounded derivative everywhere (no NaN gradient at the rim).
    """
    eps = eps_rel * s_max_kva**2
    radicand = torch.clamp(s_max_kva**2 - p_kw**2, min=0.0)
    return torch.sqrt(radicand + eps) - torch.sqrt(eps)


def q_from_u(u_q: torch.Tensor, q_limit_kvar: torch.Tensor) -> torch.Tensor:
    """Affine map of ``u_q in [0, 1]`` onto ``[-q_limit, +q_limit]``."""
    return q_limit_kvar * (2.0 * u_q - 1.0)


def u_from_q(q_kvar: torch.Tensor, q_limit_kvar: torch.Tensor, tiny: float = 1e-12) -> torch.Tensor:
    """Inverse of :func:`q_from_u`, clamped to ``[0, 1]`` (0.5 when the limit is zero)."""
    ok = q_limit_kvar > tiny
    ratio = q_kvar / torch.where(ok, q_limit_kvar, torch.ones_like(q_limit_kvar))
    return torch.where(ok, 0.5 * (ratio + 1.0), torch.full_like(ratio, 0.5)).clamp(0.0, 1.0)


def volt_var_injection_frac(v_pu: torch.Tensor) -> torch.Tensor:
    """IEEE 1547 Cat B Volt-VAR: injected ``q / s_rated`` at local voltage ``v_pu``.

    +0.44 at or below 0.92 pu, 0 in the deadband 0.98-1.02 pu, -0.44 (absorb) at or above 1.08 pu,
    linear in between.
    """
    v1, v2, v3, v4 = VOLT_VAR_V_PU
    inject = torch.clamp((v2 - v_pu) / (v2 - v1), 0.0, 1.0)
    absorb = torch.clamp((v_pu - v3) / (v4 - v3), 0.0, 1.0)
    return VOLT_VAR_Q_FRAC * (inject - absorb)


def volt_watt_limit_frac(v_pu: torch.Tensor) -> torch.Tensor:
    """IEEE 1547 Volt-Watt: active-power *injection* limit as a fraction of ``p_rated``.

    1 up to 1.06 pu, falling linearly to 0.2 at 1.10 pu, 0.2 above.
    """
    v1, v2 = VOLT_WATT_V_PU
    fall = torch.clamp((v_pu - v1) / (v2 - v1), 0.0, 1.0)
    return 1.0 - (1.0 - VOLT_WATT_P2_FRAC) * fall
