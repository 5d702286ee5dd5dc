"""Engineering model of a feeder: plain dataclasses, no engine, gridflex's own feeder file format.

A :class:`Feeder` holds the data of a distribution feeder as an engineer would write it down
(ratings, impedances per unit length, connections, regulator settings), in OpenDSS's semantics
and units. It is what a feeder reader produces (``plugins/feeders/dss_reader.py`` reads OpenDSS
files) and what :func:`gridflex.network.grid_build.build_grid` turns into a solver-ready
:class:`gridflex.network.grid.Grid`. :meth:`Feeder.to_json` / :meth:`Feeder.from_json` (gzip when the name
ends in ``.gz``) are gridflex's feeder file format, so a feeder can be defined without OpenDSS.

Conventions
-----------
* Names are lower-case. A node is ``"bus.phase"`` (``"67.2"``); node number 0 is ground.
* Every element lists, per terminal, the bus name and the node each conductor connects to
  (``nodes1``/``nodes2``, 0 = ground), in the engine's conductor order. A transformer winding or a
  wye load has ``n_phases + 1`` conductors, the last one the neutral.
* Matrices are nested lists (row-major) so that dataclass equality and JSON are exact; use
  ``numpy.asarray`` to compute with them.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 2  # 2: reactors, DERs, CapControls, load status/vlowpu, circuit LoadMult, notes
TAPS_MODES = ("file", "opendss")

Matrix = list[list[float]]
LOAD_STATUSES = ("variable", "fixed", "exempt")


class FeederWarning(UserWarning):
    """Something about a feeder the user should know (a setting raised, islanded buses, ...)."""


def warn(message: str) -> None:
    """Emit a :class:`FeederWarning` (printed once per message on stderr by default)."""
    warnings.warn(message, FeederWarning, stacklevel=3)

# Length units of OpenDSS lines (the engine's enumeration index = position) and their size in m.
LINE_UNITS_M = {
    "none": 1.0,
    "mi": 1609.344,
    "kft": 304.8,
    "km": 1000.0,
    "m": 1.0,
    "ft": 0.3048,
    "in": 0.0254,
    "cm": 0.01,
    "mm": 0.001,
}
LINE_UNITS = tuple(LINE_UNITS_M)


@dataclass
class Bus:
    """A bus: its nodes (phase numbers, engine order), line-to-neutral base and coordinates."""

    name: str
    nodes: list[int]
    kv_base_ln: float  # line-to-neutral voltage base (kV) from the voltage-base assignment
    x: float | None = None
    y: float | None = None


@dataclass
class Line:
    """A line or switch: series R + jX and shunt C per unit length, times ``length``.

    The matrices are ``[n_phases, n_phases]`` in ohm (R, X) and nF (C) per unit ``units``, the
    unit of ``length`` (``"none"`` means the values are already per the element's length unit).
    """

    name: str
    bus1: str
    nodes1: list[int]
    bus2: str
    nodes2: list[int]
    n_phases: int
    r_ohm_per_unit: Matrix
    x_ohm_per_unit: Matrix
    c_nf_per_unit: Matrix
    length: float
    units: str  # one of LINE_UNITS
    is_switch: bool = False
    line_code: str = ""
    norm_amps: float | None = None
    emerg_amps: float | None = None
    open_conductors: list[int] = field(default_factory=list)  # 0-based, both terminals

    @property
    def length_m(self) -> float:
        """Length in metres (``nan`` for unitless lines)."""
        return self.length * LINE_UNITS_M[self.units] if self.units != "none" else math.nan


@dataclass
class Winding:
    """One transformer winding. ``kv`` is line-to-line for 2- and 3-phase units, else the winding's."""

    bus: str
    nodes: list[int]  # n_phases + 1 conductors, the last the neutral
    conn: str  # "wye" | "delta"
    kv: float
    kva: float
    r_pct: float  # %R on the winding's kVA
    tap_pu: float
    min_tap_pu: float = 0.9
    max_tap_pu: float = 1.1
    num_taps: int = 32
    r_neutral_ohm: float = -1.0  # < 0: open (ungrounded) neutral, as OpenDSS
    x_neutral_ohm: float = 0.0

    @property
    def tap_step_pu(self) -> float:
        """Size of one tap step (pu); 0 for a winding without taps."""
        return (self.max_tap_pu - self.min_tap_pu) / self.num_taps if self.num_taps > 0 else 0.0

    @property
    def tap_position(self) -> int:
        """Present tap as a signed step count from 1.0 pu (e.g. +10 = 1.0625 pu at 0.00625 pu/step)."""
        step = self.tap_step_pu
        return round((self.tap_pu - 1.0) / step) if step > 0 else 0

    def tap_pu_at(self, position: int) -> float:
        """Tap ratio (pu) at step ``position``, clipped to [min_tap_pu, max_tap_pu] as OpenDSS does."""
        return min(max(1.0 + position * self.tap_step_pu, self.min_tap_pu), self.max_tap_pu)


@dataclass
class Transformer:
    """A multi-winding transformer (regulators are transformers with a :class:`RegControl`).

    ``xsc_pct`` holds the short-circuit reactances between winding pairs (12, 13, ..., 23, ...) in
    percent on winding 1's kVA; for two windings it is ``[XHL]``.
    """

    name: str
    n_phases: int
    windings: list[Winding]
    xsc_pct: list[float]
    noload_loss_pct: float = 0.0
    imag_pct: float = 0.0
    ppm_antifloat: float = 1.0
    lead_lag: str = "lag"  # OpenDSS default "lag"; "lead" (or "ansi"): HV leads LV
    bank: str = ""
    xfmr_code: str = ""
    open_conductors: list[int] = field(default_factory=list)

    @property
    def xhl_pct(self) -> float:
        return self.xsc_pct[0]

    @property
    def n_windings(self) -> int:
        return len(self.windings)


@dataclass
class RegControl:
    """OpenDSS RegControl settings (voltages on the 120 V PT base, R/X line-drop in volts)."""

    name: str
    transformer: str
    winding: int  # 1-based winding whose voltage is regulated
    tap_winding: int  # 1-based winding whose tap moves
    vreg_v: float
    band_v: float
    pt_ratio: float
    ct_primary_a: float
    r_v: float
    x_v: float
    delay_s: float
    tap_delay_s: float
    max_tap_change: int
    reversible: bool = False
    monitored_bus: str = ""
    pt_phase: str = "1"


@dataclass
class Capacitor:
    """A capacitor bank; ``kvar`` per step, ``kv`` as OpenDSS.

    A wye bank has two terminals (bus2's conductors normally grounded: a shunt bank); a delta
    bank has one terminal (``bus2 = ""``, ``nodes2 = []``).
    """

    name: str
    bus1: str
    nodes1: list[int]
    bus2: str
    nodes2: list[int]
    n_phases: int
    kvar: list[float]  # rated kvar of each step (all phases together)
    kv: float  # line-to-line for 2- and 3-phase banks, else across the unit
    conn: str  # "wye" | "delta"
    states: list[int] = field(default_factory=lambda: [1])
    open_conductors: list[int] = field(default_factory=list)


@dataclass
class Load:
    """A spot load in OpenDSS semantics (``kv`` is the load's own rating; see grid.py).

    ``kw``/``kvar`` are the file's base values (before the circuit's ``load_mult``). ``status`` is
    OpenDSS's: ``"variable"`` loads follow LoadMult (and gridflex's load multipliers),
    ``"fixed"`` and ``"exempt"`` loads keep their kW/kvar. Below ``vlowpu`` (of the rating) the
    load is a constant impedance at nominal (OpenDSS's VLowpu).
    """

    name: str
    bus: str
    nodes: list[int]  # engine conductor order; wye loads end with the neutral conductor
    n_phases: int
    conn: str  # "wye" | "delta"
    model: int  # OpenDSS load model (1 const PQ, 2 const Z, 3 const P + quadratic Q, 4 exponential, 5 const |I|)
    kv: float
    kw: float
    kvar: float
    vminpu: float
    vmaxpu: float
    cvr_watts: float
    cvr_vars: float
    status: str = "variable"  # one of LOAD_STATUSES
    vlowpu: float = 0.5


@dataclass
class Reactor:
    """An OpenDSS Reactor: series (``bus2`` given) or shunt (``bus2``'s conductors grounded, or a
    delta bank with one terminal: ``bus2 = ""``).

    ``r_ohm``/``x_ohm`` are ``[n, n]`` phase impedance matrices (ohm): diagonal for a reactor
    given by R/X or kvar, full for Rmatrix/Xmatrix or sequence impedances. ``rp_ohm`` is the
    parallel resistance (0 = none); ``parallel`` puts the R and X matrices in parallel instead of
    in series (OpenDSS ``Parallel=Yes``, which the engine applies to Rmatrix/Xmatrix reactors only).
    """

    name: str
    bus1: str
    nodes1: list[int]
    bus2: str
    nodes2: list[int]
    n_phases: int
    conn: str  # "wye" | "delta"
    r_ohm: Matrix
    x_ohm: Matrix
    rp_ohm: float = 0.0
    parallel: bool = False
    norm_amps: float | None = None
    open_conductors: list[int] = field(default_factory=list)


@dataclass
class Generation:
    """A generator, PV system or storage unit as the fixed injection the file defines.

    ``kw``/``kvar`` are *produced* (positive = into the grid) at the file's operating point,
    read from the engine (a PV system's output at its irradiance, a storage unit's at its
    state). At a power flow OpenDSS models these elements (model 1) as constant P and Q inside
    [vminpu, vmaxpu] of the rated voltage and as the constant impedance of that power at vminpu
    (below) or vmaxpu (above); model 2 is a constant impedance throughout.
    """

    name: str  # "generator.g1", "pvsystem.pv1", "storage.st1"
    bus: str
    nodes: list[int]  # wye: n_phases + 1 conductors, the last the neutral; delta: n_phases (or 2)
    n_phases: int
    conn: str  # "wye" | "delta"
    model: int  # 1 constant PQ, 2 constant Z
    kv: float  # rated kV (line-to-line for 2- and 3-phase units)
    kw: float  # produced
    kvar: float  # produced
    vminpu: float
    vmaxpu: float


@dataclass
class CapControl:
    """OpenDSS CapControl settings (recorded; gridflex keeps capacitor states frozen)."""

    name: str
    capacitor: str
    type: str  # "current" | "voltage" | "kvar" | "pf" | "time" | ...
    element: str
    terminal: int
    on_setting: float
    off_setting: float
    pt_ratio: float
    ct_ratio: float
    delay_s: float
    delay_off_s: float


@dataclass
class Vsource:
    """The feeder's source: an EMF behind a Thevenin impedance given by sequence impedances (ohm)."""

    name: str
    bus1: str
    nodes1: list[int]
    bus2: str
    nodes2: list[int]
    n_phases: int
    base_kv: float  # line-to-line for 3-phase sources
    pu: float
    angle_deg: float
    r1_ohm: float
    x1_ohm: float
    r0_ohm: float
    x0_ohm: float
    r2_ohm: float
    x2_ohm: float
    mvasc3: float
    mvasc1: float
    frequency_hz: float = 60.0


@dataclass
class Feeder:
    """A feeder's engineering data and provenance. Element lists keep the source file's order."""

    name: str
    base_frequency_hz: float
    voltage_bases_kv_ll: list[float]
    buses: list[Bus]
    node_names: list[str]  # every node, "bus.phase", in the engine's order
    vsources: list[Vsource]
    lines: list[Line]
    transformers: list[Transformer]
    regcontrols: list[RegControl]
    capacitors: list[Capacitor]
    loads: list[Load]
    provenance: dict[str, Any] = field(default_factory=dict)
    load_mult: float = 1.0  # the circuit's LoadMult: scales "variable" loads' kW and kvar
    reactors: list[Reactor] = field(default_factory=list)
    generation: list[Generation] = field(default_factory=list)
    capcontrols: list[CapControl] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the reader did that the user should know

    # -- look-ups -----------------------------------------------------------------------------
    @property
    def switches(self) -> list[Line]:
        return [line for line in self.lines if line.is_switch]

    def bus(self, name: str) -> Bus:
        for bus in self.buses:
            if bus.name == name.lower():
                return bus
        raise KeyError(name)

    def transformer(self, name: str) -> Transformer:
        for transformer in self.transformers:
            if transformer.name == name.lower():
                return transformer
        raise KeyError(name)

    def regulator_taps(self) -> dict[str, int]:
        """Tap position of each regulated transformer (on its RegControl's tap winding)."""
        return {
            rc.transformer: self.transformer(rc.transformer).windings[rc.tap_winding - 1].tap_position
            for rc in self.regcontrols
        }

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": "gridflex-feeder", "format_version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Feeder:
        if data.get("format") != "gridflex-feeder":
            raise ValueError("not a gridflex feeder file (missing format='gridflex-feeder')")
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"gridflex feeder format version {data.get('format_version')!r} is not supported "
                f"(this gridflex reads version {FORMAT_VERSION})"
            )
        transformers = [
            Transformer(**{**t, "windings": [Winding(**w) for w in t["windings"]]})
            for t in data["transformers"]
        ]
        return cls(
            name=data["name"],
            base_frequency_hz=data["base_frequency_hz"],
            voltage_bases_kv_ll=data["voltage_bases_kv_ll"],
            buses=[Bus(**b) for b in data["buses"]],
            node_names=data["node_names"],
            vsources=[Vsource(**v) for v in data["vsources"]],
            lines=[Line(**line) for line in data["lines"]],
            transformers=transformers,
            regcontrols=[RegControl(**r) for r in data["regcontrols"]],
            capacitors=[Capacitor(**c) for c in data["capacitors"]],
            loads=[Load(**ld) for ld in data["loads"]],
            provenance=data.get("provenance", {}),
            load_mult=data.get("load_mult", 1.0),
            reactors=[Reactor(**r) for r in data.get("reactors", [])],
            generation=[Generation(**g) for g in data.get("generation", [])],
            capcontrols=[CapControl(**c) for c in data.get("capcontrols", [])],
            notes=list(data.get("notes", [])),
        )

    def to_json(self, path: str | Path) -> Path:
        """Write the feeder as JSON (gzip-compressed, byte-reproducible, when ``path`` ends in .gz)."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=1, sort_keys=False, allow_nan=False) + "\n"
        if path.suffix == ".gz":
            with open(path, "wb") as raw, gzip.GzipFile(
                filename="", mode="wb", fileobj=raw, mtime=0
            ) as gz:
                gz.write(text.encode("utf-8"))
        else:
            path.write_text(text, encoding="utf-8")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> Feeder:
        """Read a feeder written by :meth:`to_json` (gzip detected from the ``.gz`` suffix)."""
        path = Path(path)
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            return cls.from_dict(json.load(f))
