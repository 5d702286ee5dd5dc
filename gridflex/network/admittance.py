"""Primitive admittance matrices of feeder elements (pure numpy, SI, complex128).

Each function returns an element's primitive ``Y`` over its conductors in the order of
:mod:`gridflex.network.feeder` (terminal 1's conductors, then terminal 2's, ...): the currents flowing
*into* the element are ``Y @ v`` for conductor voltages ``v`` (V). The models are OpenDSS's, so
the primitives equal the engine's ``CktElement.Yprim`` (see tests/test_admittance.py):

* line: series ``Z = (R + jX) * length`` between the terminals, half the shunt ``jωC * length``
  at each end;
* transformer: OpenDSS's winding model (short-circuit impedances on a one-volt base, off-nominal
  taps, wye/delta connections, the ppm "anti-float" shunt on every winding and on open neutrals,
  %noloadloss/%imag on winding 2);
* capacitor: a constant admittance ``jQ/V²`` per phase at its rated kV, wye or delta;
* reactor: ``(R + jX)⁻¹`` (plus ``1/Rp``) per phase, series or shunt (wye between bus1 and
  bus2's grounded conductors, delta phase to phase), or the inverse of its full Z matrix;
* Vsource: the Thevenin impedance from its sequence impedances as a Norton admittance.

Loads, generators, PV systems and storage have no primitive here: gridflex's Y never holds load admittances (see grid.py).
"""

from __future__ import annotations

import math

import numpy as np

from gridflex.network.feeder import Capacitor, Line, Reactor, Transformer, Vsource

SQRT3 = math.sqrt(3.0)
SOLID_GROUND_S = 1.0e6  # OpenDSS's admittance for a neutral with Rneut = Xneut = 0


def two_terminal(y_series: np.ndarray) -> np.ndarray:
    """``[[Y, -Y], [-Y, Y]]`` for a series admittance ``Y`` ``[m, m]``; returns ``[2m, 2m]``."""
    return np.block([[y_series, -y_series], [-y_series, y_series]])


OPEN_CONDUCTOR_S = 1.0e-12  # OpenDSS keeps an open conductor's node from floating with this


def open_conductors(y_prim: np.ndarray, conductors: list[int]) -> np.ndarray:
    """Disconnect open conductors (indices into the element's conductors) as OpenDSS does.

    The open conductors are eliminated as internal nodes (Kron reduction), so what hangs on
    them (e.g. a line's shunt capacitance beyond the open point) stays seen from the others; their
    own rows and columns become zero but for a 1e-12 S diagonal.
    """
    if not conductors:
        return y_prim
    open_ = np.zeros(len(y_prim), dtype=bool)
    open_[conductors] = True
    y = np.zeros_like(y_prim)
    closed = np.ix_(~open_, ~open_)
    y[closed] = y_prim[closed]
    y_oo = y_prim[np.ix_(open_, open_)]
    if np.linalg.matrix_rank(y_oo) == len(y_oo):  # nothing else hangs on a floating conductor
        y_co = y_prim[np.ix_(~open_, open_)]
        y[closed] -= y_co @ np.linalg.solve(y_oo, y_prim[np.ix_(open_, ~open_)])
    y[open_, open_] = OPEN_CONDUCTOR_S
    return y


# ---------------------------------------------------------------------------------------------
# Lines and switches
# ---------------------------------------------------------------------------------------------
def line_primitive(line: Line, frequency_hz: float) -> np.ndarray:
    """Primitive ``[2n, 2n]`` (S) of a line or switch with ``n`` phases."""
    z_ohm = (np.asarray(line.r_ohm_per_unit) + 1j * np.asarray(line.x_ohm_per_unit)) * line.length
    c_f = np.asarray(line.c_nf_per_unit) * 1e-9 * line.length
    y_half_shunt = 0.5j * 2.0 * math.pi * frequency_hz * c_f
    n = line.n_phases
    y = two_terminal(np.linalg.inv(z_ohm))
    y[:n, :n] += y_half_shunt
    y[n:, n:] += y_half_shunt
    return open_conductors(y, line.open_conductors)


# ---------------------------------------------------------------------------------------------
# Transformers and regulators
# ---------------------------------------------------------------------------------------------
def winding_v_base(transformer: Transformer, k: int) -> float:
    """Voltage (V) across one phase of winding ``k``: kV/sqrt(3) for 2-3 phase wye, else kV."""
    winding = transformer.windings[k]
    if winding.conn == "wye" and transformer.n_phases in (2, 3):
        return winding.kv * 1000.0 / SQRT3
    return winding.kv * 1000.0


def one_volt_admittance(transformer: Transformer) -> tuple[np.ndarray, np.ndarray]:
    """Winding admittances ``[w, w]`` of one phase on a one-volt base: (series, no-load) in S.

    The short-circuit impedances between winding 1 and winding ``i`` (and, for three or more
    windings, between ``i`` and ``j``) give ``ZB`` of order ``w - 1``; ``Y = Aᵀ ZB⁻¹ A`` with
    ``A = [-1 | I]``. The core (%noloadloss, %imag) sits on winding 2.
    """
    w = transformer.n_windings
    va_per_phase = transformer.windings[0].kva * 1000.0 / transformer.n_phases
    z_base = 1.0 / va_per_phase  # ohm on a one-volt base
    r_pu = [winding.r_pct / 100.0 for winding in transformer.windings]
    x_pu = [x / 100.0 for x in transformer.xsc_pct]

    zb = np.zeros((w - 1, w - 1), dtype=complex)
    for i in range(w - 1):
        zb[i, i] = (r_pu[0] + r_pu[i + 1] + 1j * x_pu[i]) * z_base
    k = w - 1  # index of X23 in xsc: 12, 13, ..., 1w, 23, 24, ...
    for i in range(w - 1):
        for j in range(i + 1, w - 1):
            z_ij = (r_pu[i + 1] + r_pu[j + 1] + 1j * x_pu[k]) * z_base
            zb[i, j] = zb[j, i] = 0.5 * (zb[i, i] + zb[j, j] - z_ij)
            k += 1
    a = np.hstack([-np.ones((w - 1, 1)), np.eye(w - 1)])
    y_series = a.T @ np.linalg.inv(zb) @ a

    y_noload = np.zeros((w, w), dtype=complex)
    y_noload[1, 1] = (transformer.noload_loss_pct - 1j * transformer.imag_pct) / 100.0 / z_base
    return y_series, y_noload


def terminal_admittance(
    transformer: Transformer, taps_pu: list[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Admittances ``[2w, 2w]`` (S) between the two ends of each winding, for one phase.

    Winding ``k``'s ends are rows ``2k`` and ``2k + 1``; its turns voltage is
    ``v_base * tap``. The anti-float shunt (``ppm`` of the winding's base admittance, half on each
    end) is added to the series part, as OpenDSS does.
    """
    w = transformer.n_windings
    va_per_phase = transformer.windings[0].kva * 1000.0 / transformer.n_phases
    a = np.zeros((w, 2 * w))
    for k in range(w):
        turns_v = winding_v_base(transformer, k) * (taps_pu[k] if taps_pu[k] != 0.0 else 1e-4)
        a[k, 2 * k] = 1.0 / turns_v
        a[k, 2 * k + 1] = -1.0 / turns_v
    y_1v, y_1v_noload = one_volt_admittance(transformer)
    y_term = a.T @ y_1v @ a
    y_term_noload = a.T @ y_1v_noload @ a
    for k in range(w):
        ends = slice(2 * k, 2 * k + 2)
        y_term[ends, ends] += 1j * anti_float_s(transformer, k, va_per_phase) * np.eye(2)
    return y_term, y_term_noload


def anti_float_s(transformer: Transformer, k: int, va_per_phase: float) -> float:
    """Imaginary part (S) of OpenDSS's ppm anti-float shunt on each end of winding ``k``."""
    v_base = winding_v_base(transformer, k)
    return -transformer.ppm_antifloat * 1e-6 / (v_base**2 / va_per_phase) / 2.0


def delta_direction(transformer: Transformer) -> int:
    """+1 or -1: to which phase a delta winding's phase ``i`` connects (OpenDSS's convention)."""
    w1, w2 = transformer.windings[0], transformer.windings[1]
    if w1.conn == w2.conn:
        return 1
    high = w1 if w1.kv >= w2.kv else w2
    hv_leads_lv = transformer.lead_lag in ("lead", "ansi")
    if high.conn == "wye":
        return -1 if hv_leads_lv else 1
    return 1 if hv_leads_lv else -1


def winding_ends(transformer: Transformer) -> list[tuple[int, int]]:
    """For each phase ``p`` and winding ``k`` (phase-major), the two conductors of its ends."""
    n_ph, n_cond = transformer.n_phases, transformer.n_phases + 1
    if n_ph == 1:
        return [(k * n_cond, k * n_cond + 1) for k in range(transformer.n_windings)]
    direction = delta_direction(transformer)
    ends = []
    for p in range(n_ph):
        for k, winding in enumerate(transformer.windings):
            offset = k * n_cond
            if winding.conn == "wye":
                ends.append((offset + p, offset + n_ph))
            else:
                q = p + direction
                q = q % n_ph if n_ph > 2 else (q if q >= 0 else 2)
                ends.append((offset + p, offset + q))
    return ends


def transformer_primitive(transformer: Transformer, taps_pu: list[float] | None = None) -> np.ndarray:
    """Primitive ``[w(n+1), w(n+1)]`` (S) of an ``n``-phase, ``w``-winding transformer.

    ``taps_pu`` (one per winding) overrides the windings' own taps.
    """
    taps_pu = taps_pu if taps_pu is not None else [wdg.tap_pu for wdg in transformer.windings]
    w, n_cond = transformer.n_windings, transformer.n_phases + 1
    y_term, y_term_noload = terminal_admittance(transformer, taps_pu)
    y_one_phase = y_term + y_term_noload
    ends = np.asarray(winding_ends(transformer)).reshape(transformer.n_phases, 2 * w)
    y = np.zeros((w * n_cond, w * n_cond), dtype=complex)
    for conductors in ends:  # one phase: its 2w winding ends
        np.add.at(y, (conductors[:, None], conductors[None, :]), y_one_phase)
    _add_neutral_grounding(y, transformer)
    return open_conductors(y, transformer.open_conductors)


def _add_neutral_grounding(y: np.ndarray, transformer: Transformer) -> None:
    """Wye neutrals: Rneut/Xneut to ground, solid (1e6 S), or the anti-float shunt when open."""
    n_cond = transformer.n_phases + 1
    va_per_phase = transformer.windings[0].kva * 1000.0 / transformer.n_phases
    for k, winding in enumerate(transformer.windings):
        if winding.conn != "wye":
            continue
        neutral = k * n_cond + transformer.n_phases
        if winding.r_neutral_ohm >= 0.0:
            z_n = complex(winding.r_neutral_ohm, winding.x_neutral_ohm)
            y[neutral, neutral] += SOLID_GROUND_S if z_n == 0 else 1.0 / z_n
        elif transformer.ppm_antifloat != 0.0:
            y[neutral, neutral] += 1j * anti_float_s(transformer, k, va_per_phase)


# ---------------------------------------------------------------------------------------------
# Capacitors
# ---------------------------------------------------------------------------------------------
def capacitor_phase_admittance_s(capacitor: Capacitor, frequency_hz: float, base_hz: float) -> complex:
    """Admittance (S) of one phase unit with all energised steps, at its rated voltage."""
    if capacitor.conn == "delta" or capacitor.n_phases == 1:
        v_unit = capacitor.kv * 1000.0
    else:
        v_unit = capacitor.kv * 1000.0 / SQRT3
    kvar_on = sum(k for k, state in zip(capacitor.kvar, capacitor.states, strict=True) if state)
    b_s = kvar_on * 1000.0 / capacitor.n_phases / v_unit**2
    return 1j * b_s * frequency_hz / base_hz


def capacitor_primitive(capacitor: Capacitor, frequency_hz: float, base_hz: float) -> np.ndarray:
    """Primitive (S): wye ``[2n, 2n]``, unit ``i`` between conductor ``i`` of each terminal;
    delta (one terminal) ``[m, m]``, unit ``i`` between conductors ``i`` and ``i + 1``."""
    n = capacitor.n_phases
    y_unit = capacitor_phase_admittance_s(capacitor, frequency_hz, base_hz)
    if capacitor.conn == "wye":
        y = two_terminal(np.eye(n) * y_unit)
    else:
        m = len(capacitor.nodes1)
        y = np.zeros((m, m), dtype=complex)
        for i in range(n):
            pair = [i, (i + 1) % m]
            y[np.ix_(pair, pair)] += y_unit * np.array([[1.0, -1.0], [-1.0, 1.0]])
    return open_conductors(y, capacitor.open_conductors)


# ---------------------------------------------------------------------------------------------
# Reactors
# ---------------------------------------------------------------------------------------------
def reactor_primitive(reactor: Reactor) -> np.ndarray:
    """Primitive (S) of a reactor, as OpenDSS's ``TReactorObj.CalcYPrim`` at base frequency.

    Wye (series or shunt): ``[2n, 2n]``, ``two_terminal(Y)`` with ``Y = (R + jX)⁻¹`` (``[n, n]``,
    plus ``1/Rp`` on the diagonal when ``rp_ohm`` is set; ``R⁻¹ + (jX)⁻¹`` when ``parallel``).
    Delta (one terminal, ``[m, m]``): unit ``i`` between conductors ``i`` and ``i + 1`` (mod m).
    """
    r, x = np.asarray(reactor.r_ohm, dtype=float), np.asarray(reactor.x_ohm, dtype=float)
    n = reactor.n_phases
    diagonal = not np.any(r - np.diag(np.diag(r))) and not np.any(x - np.diag(np.diag(x)))
    if reactor.parallel:  # Rmatrix in parallel with Xmatrix
        y = np.zeros((n, n), dtype=complex)
        if np.any(r):
            y += np.linalg.inv(r)
        if np.any(x):
            y += np.linalg.inv(1j * x)
    else:
        y = np.linalg.inv(r + 1j * x)
    if reactor.rp_ohm:
        y = y + np.eye(n) / reactor.rp_ohm
    if reactor.conn == "wye":
        y_prim = two_terminal(y)
    else:
        if not diagonal:
            raise ValueError(f"reactor {reactor.name!r}: a delta reactor needs a diagonal R/X")
        m = len(reactor.nodes1)
        y_prim = np.zeros((m, m), dtype=complex)
        for i in range(n):
            pair = [i, (i + 1) % m]
            y_prim[np.ix_(pair, pair)] += y[i, i] * np.array([[1.0, -1.0], [-1.0, 1.0]])
    return open_conductors(y_prim, reactor.open_conductors)


# ---------------------------------------------------------------------------------------------
# Source
# ---------------------------------------------------------------------------------------------
def sequence_to_phase(z0: complex, z1: complex, z2: complex, n_phases: int) -> np.ndarray:
    """Phase impedance matrix ``[n, n]`` of a source from its sequence impedances (ohm)."""
    if n_phases == 1:
        return np.array([[(2.0 * z1 + z0) / 3.0]])
    if n_phases != 3:
        raise ValueError(f"a Vsource with {n_phases} phases is not supported (1 or 3)")
    a = np.exp(2j * np.pi / 3.0)
    t = np.array([[1, 1, 1], [1, a * a, a], [1, a, a * a]])
    return t @ np.diag([z0, z1, z2]) @ np.linalg.inv(t)


def source_impedance_ohm(source: Vsource) -> np.ndarray:
    """Thevenin impedance ``[n, n]`` (ohm) of the Vsource."""
    return sequence_to_phase(
        complex(source.r0_ohm, source.x0_ohm),
        complex(source.r1_ohm, source.x1_ohm),
        complex(source.r2_ohm, source.x2_ohm),
        source.n_phases,
    )


def source_primitive(source: Vsource) -> np.ndarray:
    """Primitive ``[2n, 2n]`` (S) of the Vsource's impedance between bus1 and bus2 (ground)."""
    return two_terminal(np.linalg.inv(source_impedance_ohm(source)))


def source_emf_v(source: Vsource) -> np.ndarray:
    """Internal EMF ``[n]`` (V, line-to-neutral phasors): pu * basekV, phases 120° apart."""
    n = source.n_phases
    v_mag = source.pu * source.base_kv * 1000.0 / (2.0 * math.sin(math.pi / n)) if n > 1 else (
        source.pu * source.base_kv * 1000.0
    )
    angles = np.deg2rad(source.angle_deg - 360.0 / n * np.arange(n))
    return v_mag * np.exp(1j * angles)
