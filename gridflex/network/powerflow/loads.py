"""Load-model currents and their Wirtinger derivatives, with OpenDSS semantics (docs/design.md §2).

Every load branch (see :class:`gridflex.network.grid.Grid`) across voltage ``u`` (pu of the node base)
with nominal consumption ``s = p + jq`` (pu) at rated voltage ``v_nom`` (pu) draws

    I = (p f_p(r) - j q f_q(r)) / conj(u),        r = |u| / v_nom,

i.e. it consumes ``p f_p(r) + j q f_q(r)``. OpenDSS models: 1 constant PQ (f = 1), 2 constant Z
(f = r²), 4 exponential CVR (f_p = r^CVRwatts, f_q = r^CVRvars), 5 constant |I| (f = r).

With the OpenDSS Vminpu/Vmaxpu rule (``TLoadObj.DoConstantPQLoad`` etc. in OpenDSS/DSS C-API
``Load.pas``), models 1, 4 and 5 leave their law outside [vmin, vmax] of the rating:

* r > vmax: constant impedance ``Yeq/vmax²`` (models 1, 4: f = r²/vmax²) or ``Yeq/vmax``
  (model 5: f = r²/vmax), continuous at vmax for models 1 and 5;
* vlow < r <= vmin: the current magnitude is interpolated linearly in |V| between the
  constant-Z current at vlow (the load's VLowpu, default 0.5 pu) and the boundary current at vmin:
  f = r h(r), h = vlow + (h_min - vlow)(r - vlow)/(vmin - vlow), h_min = 1/vmin (models 1, 4) or
  1 (model 5). This is *not* a constant impedance below vmin, only continuous with one at vmin;
* r <= vlow: constant Z at nominal, f = r².

With vlow = 0 the interpolation is exactly the constant impedance ``Yeq/vmin²`` below vmin
(f = r²/vmin²): the law of OpenDSS's generators, PV systems and storage (model 1).

Derivatives: with c(r) = p f_p(r) - j q f_q(r) and I = c / conj(u),

    A = dI/du       = c'(r) / (2 v_nom |u|)
    B = dI/dconj(u) = u² (c'(r) / (2 v_nom |u|³) - c / |u|⁴)

so dI = A du + B dconj(u) (I depends on conj(u): not holomorphic, docs/design.md §2's conj() trap).
"""

from __future__ import annotations

import torch

VLOW_PU = 0.5  # OpenDSS Load "VLowpu" default: constant Z below this voltage


def power_law_factor(r: torch.Tensor, exponent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """f = r**exponent and df/dr, elementwise. Shapes broadcast; r > 0."""
    f = torch.pow(r, exponent)
    return f, exponent * f / r


def vlimits_factor(
    r: torch.Tensor,
    exponent: torch.Tensor,
    vmin_pu: torch.Tensor,
    vmax_pu: torch.Tensor,
    constant_current: torch.Tensor,
    vlow_pu: torch.Tensor | float = VLOW_PU,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Power factor f(r) and df/dr of one power component under OpenDSS's Vminpu/Vmaxpu rule.

    ``exponent`` is the law inside the band; ``constant_current`` (bool) marks model 5, whose
    boundary laws differ from models 1 and 4 (module docstring). Constant-Z loads (exponent 2, not
    constant current) are unaffected and should not be passed through here.
    """
    f_band, df_band = power_law_factor(r, exponent)
    h_min = torch.where(constant_current, torch.ones_like(vmin_pu), 1.0 / vmin_pu)
    slope = (h_min - vlow_pu) / (vmin_pu - vlow_pu)
    h = vlow_pu + slope * (r - vlow_pu)
    f_low, df_low = r * h, h + r * slope
    over = torch.where(constant_current, vmax_pu, vmax_pu * vmax_pu)
    f_high, df_high = r * r / over, 2.0 * r / over
    f_zero, df_zero = r * r, 2.0 * r
    # the order of OpenDSS's tests: <= vlow, then <= vmin, then > vmax, else the band
    low, below, above = r <= vlow_pu, r <= vmin_pu, r > vmax_pu
    f = torch.where(low, f_zero, torch.where(below, f_low, torch.where(above, f_high, f_band)))
    df = torch.where(low, df_zero, torch.where(below, df_low, torch.where(above, df_high, df_band)))
    return f, df


def branch_current(
    u: torch.Tensor, p_pu: torch.Tensor, q_pu: torch.Tensor, f_p: torch.Tensor, f_q: torch.Tensor
) -> torch.Tensor:
    """Current drawn through a load branch, I = (p f_p - j q f_q) / conj(u) (pu)."""
    return torch.complex(p_pu * f_p, -q_pu * f_q) * u / (u.real.square() + u.imag.square())


def branch_current_derivatives(
    u: torch.Tensor,
    v_nom_pu: torch.Tensor,
    p_pu: torch.Tensor,
    q_pu: torch.Tensor,
    f_p: torch.Tensor,
    f_q: torch.Tensor,
    df_p: torch.Tensor,
    df_q: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Wirtinger derivatives (A, B) = (dI/du, dI/dconj(u)) of :func:`branch_current`."""
    u_abs_sq = u.real.square() + u.imag.square()
    u_abs = u_abs_sq.sqrt()
    c = torch.complex(p_pu * f_p, -q_pu * f_q)
    dc_over = torch.complex(p_pu * df_p, -q_pu * df_q) / (2.0 * v_nom_pu * u_abs)
    a = dc_over
    b = u * u * (dc_over / u_abs_sq - c / (u_abs_sq * u_abs_sq))
    return a, b


def constant_power_current(v: torch.Tensor, s_pu: torch.Tensor) -> torch.Tensor:
    """Current drawn by constant-power consumption s at node voltage v: conj(s / v) (pu)."""
    return torch.conj_physical(s_pu / v)


def constant_power_b(v: torch.Tensor, s_pu: torch.Tensor) -> torch.Tensor:
    """dI/dconj(v) of :func:`constant_power_current` (its dI/dv is zero)."""
    return -(s_pu / (v * v)).conj()


def constant_current_current(v: torch.Tensor, k_pu: torch.Tensor) -> torch.Tensor:
    """Current drawn by a constant-|I| load with coefficient k = conj(s)/v_nom: k v / |v|."""
    return k_pu * v / v.abs()


def constant_current_derivatives(v: torch.Tensor, k_pu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dI/dv, dI/dconj(v)) of :func:`constant_current_current`."""
    v_abs = v.abs()
    return k_pu / (2.0 * v_abs), -k_pu * v * v / (2.0 * v_abs**3)
