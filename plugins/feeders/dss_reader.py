"""OpenDSS feeder reader: the OpenDSS engine (dss-python) reads a .dss file into a :class:`Feeder`.

The engine does all the reading (no .dss parser here); this module only asks it for each
element's data. The engine is imported inside :func:`read_dss_feeder`, never at module import, so
machines without dss-python can still load cached feeders (``gridflex.runs.feeder_cache``).

Regulator taps (``taps``):

* ``"file"``: the taps as the file writes them. The file's RegControls never act: control mode is
  switched off at the start of every control loop the file's own ``Solve`` commands run (the
  engine's InitControls event), because the IEEE 13 file solves with its RegControls on.
* ``"opendss"``: one plain ``Solve`` of the compiled base case with the file's own RegControls,
  freezing the taps it settles on (IEEE 123: 6 0 2 0 10 4 6). This is the only engine solve
  gridflex runs.

Other pitfalls (shared/feeders/README.md) handled here: ``Redirect`` paths are resolved by the
engine relative to the file that contains them (the engine changes the working directory while
compiling; it is restored); coordinates are loaded from a sibling ``BusCoords.dat`` /
``*BusXY*.csv`` when the file loads none (IEEE 123); every element keeps its own conductor-to-node
map, so single-node delta loads (phase to ground), the ungrounded bus 610 and the dummy buses
``300_open``/``94_open`` come through as the engine sees them; ratings (e.g. 2.4 kV vs the 2.4018 kV
base) are read, never recomputed; element data are only read, never set, so the API's
``Loads.kW`` quirk does not apply.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from gridflex.plugins.contracts import FeederReader
from gridflex.errors import UserError
from gridflex.network.feeder import (
    LINE_UNITS,
    TAPS_MODES,
    Bus,
    Capacitor,
    Feeder,
    Line,
    Load,
    RegControl,
    Transformer,
    Vsource,
    Winding,
)
from gridflex.plugins.hookspecs import hookimpl

SUPPORTED_CLASSES = {"vsource", "line", "transformer", "regcontrol", "capacitor", "load"}
IGNORED_CLASSES = {"energymeter", "monitor"}  # measurement only, no effect on the network
COORD_FILE_PATTERNS = ("buscoords.dat", "*busxy*.csv", "*buscoords*.csv", "*buscoords*.dat")
# Commands whose argument is another file (only used to record source files and their sha256).
_FILE_COMMAND = re.compile(r"^\s*(redirect|compile|buscoords)\s+(\"[^\"]+\"|'[^']+'|\S+)", re.I)


class DssFeederReader(FeederReader):
    """Read an OpenDSS master file with the OpenDSS engine (dss-python)."""

    name = "dss"
    suffixes = (".dss",)

    def read(self, path: Path, taps: str = "opendss") -> Feeder:
        return read_dss_feeder(path, taps)


@hookimpl
def gridflex_register_feeder_readers(register) -> None:
    register(DssFeederReader)


# ---------------------------------------------------------------------------------------------
# Engine session
# ---------------------------------------------------------------------------------------------
def read_dss_feeder(path: str | Path, taps: str = "opendss") -> Feeder:
    """Compile ``path`` in a fresh engine context and return its engineering model.

    Raises :class:`UserError` when the engine is missing, the file does not compile, or the
    feeder holds elements gridflex does not model.
    """
    if taps not in TAPS_MODES:
        raise UserError(f"unknown taps mode {taps!r}; use one of {', '.join(TAPS_MODES)}")
    path = Path(path).resolve()
    if not path.is_file():
        raise UserError(f"feeder file {path} does not exist")
    dss = _import_engine(path)
    engine = dss.DSS.NewContext()
    coord_file = _compile(engine, path, taps)
    circuit = engine.ActiveCircuit
    _check_supported(circuit, path)
    if taps == "opendss":
        circuit.Solution.Solve()
        if not circuit.Solution.Converged:
            raise UserError(f"{path}: the OpenDSS base-case solve did not converge; use taps='file'")
    return Feeder(
        name=circuit.Name.lower(),
        base_frequency_hz=float(circuit.Solution.Frequency),
        voltage_bases_kv_ll=[float(v) for v in circuit.Settings.VoltageBases],
        buses=_read_buses(circuit),
        node_names=[n.lower() for n in circuit.AllNodeNames],
        vsources=_read_vsources(circuit),
        lines=_read_lines(circuit),
        transformers=_read_transformers(circuit),
        regcontrols=_read_regcontrols(circuit),
        capacitors=_read_capacitors(circuit),
        loads=_read_loads(circuit),
        provenance=_provenance(path, taps, coord_file, engine, dss),
    )


def _import_engine(path: Path):
    try:
        import dss  # noqa: PLC0415 - lazy by design: the engine is optional
    except ImportError as exc:
        raise UserError(
            f"reading the OpenDSS feeder {path} needs the OpenDSS engine, which is not installed "
            f"({exc}). Install it with `pip install dss-python` (or the `opendss` extra), or load "
            "a cached or JSON gridflex feeder instead."
        ) from None
    return dss


def _compile(engine, path: Path, taps: str) -> Path | None:
    """Compile the file (RegControls inert when ``taps == 'file'``); return a coordinate file loaded."""
    cwd = os.getcwd()
    events = _control_off_during_file_solves(engine) if taps == "file" else None
    try:
        engine.Text.Command = f'compile "{path}"'
        coord_file = _load_sibling_coordinates(engine, path)
    except Exception as exc:  # the engine's DSSException: a broken file is the user's
        raise UserError(f"OpenDSS could not compile {path}: {exc}") from None
    finally:
        if events is not None:
            events()
        os.chdir(cwd)
    if taps == "file":
        engine.ActiveCircuit.Solution.ControlMode = 0  # back to STATIC for anyone solving later
    return coord_file


def _control_off_during_file_solves(engine):
    """Switch control mode off whenever a control loop starts; return the function undoing it."""
    from dss_python_backend.enums import AltDSSEvent  # noqa: PLC0415
    from dss_python_backend.events import get_manager_for_ctx  # noqa: PLC0415

    def control_off() -> None:
        engine.ActiveCircuit.Solution.ControlMode = -1  # OFF

    manager = get_manager_for_ctx(engine._api_util.ctx)
    manager.register_func(AltDSSEvent.Legacy_InitControls, control_off)
    return lambda: manager.unregister_func(AltDSSEvent.Legacy_InitControls, control_off)


def _load_sibling_coordinates(engine, path: Path) -> Path | None:
    """Load bus coordinates from a file beside ``path`` if the feeder file set none."""
    circuit = engine.ActiveCircuit
    for name in circuit.AllBusNames:
        circuit.SetActiveBus(name)
        if circuit.ActiveBus.Coorddefined:
            return None
    for pattern in COORD_FILE_PATTERNS:
        for candidate in sorted(path.parent.iterdir()):
            if candidate.is_file() and Path(candidate.name.lower()).match(pattern):
                engine.Text.Command = f'BusCoords "{candidate}"'
                return candidate
    return None


def _check_supported(circuit, path: Path) -> None:
    unsupported, vsources = [], []
    for element in circuit.AllElementNames:
        cls = element.split(".", 1)[0].lower()
        circuit.SetActiveElement(element)
        if not circuit.ActiveCktElement.Enabled or cls in IGNORED_CLASSES:
            continue
        if cls not in SUPPORTED_CLASSES:
            unsupported.append(element)
        if cls == "vsource":
            vsources.append(element)
    if unsupported:
        raise UserError(
            f"{path}: gridflex does not model {', '.join(unsupported)} (supported: "
            f"{', '.join(sorted(SUPPORTED_CLASSES))}); remove or disable them"
        )
    if len(vsources) != 1:
        raise UserError(f"{path}: gridflex needs exactly one Vsource, found {vsources or 'none'}")


# ---------------------------------------------------------------------------------------------
# Element readers (one per class; the active element's terminals via CktElement)
# ---------------------------------------------------------------------------------------------
def _terminals(circuit) -> list[tuple[str, list[int]]]:
    """(bus name, conductor nodes) of each terminal of the active element."""
    element = circuit.ActiveCktElement
    n_cond = element.NumConductors
    nodes = [int(n) for n in element.NodeOrder]
    return [
        (spec.split(".", 1)[0].lower(), nodes[t * n_cond : (t + 1) * n_cond])
        for t, spec in enumerate(element.BusNames)
    ]


def _open_conductors(circuit) -> list[int]:
    element = circuit.ActiveCktElement
    n_cond = element.NumConductors
    return [
        t * n_cond + k
        for t in range(element.NumTerminals)
        for k in range(n_cond)
        if element.IsOpen(t + 1, k + 1)
    ]


def _prop(circuit, name: str) -> str:
    return circuit.ActiveCktElement.Properties(name).Val


def _prop_floats(circuit, name: str) -> list[float]:
    """A numeric array property such as ``'[ 100, 200]'`` or ``'[0.16, 0.64]'``."""
    return [float(v) for v in re.split(r"[\s,\[\]()|]+", _prop(circuit, name)) if v]


def _each(collection, circuit, cls: str):
    """Iterate the enabled elements of an API collection, each made the active circuit element."""
    for name in collection.AllNames:
        if name.lower() == "none":
            continue
        collection.Name = name
        circuit.SetActiveElement(f"{cls}.{name}")
        if circuit.ActiveCktElement.Enabled:
            yield name.lower()


def _square(flat, n: int) -> list[list[float]]:
    values = [float(v) for v in flat]
    return [values[i * n : (i + 1) * n] for i in range(n)]


def _read_buses(circuit) -> list[Bus]:
    buses = []
    for name in circuit.AllBusNames:
        circuit.SetActiveBus(name)
        bus = circuit.ActiveBus
        has_xy = bool(bus.Coorddefined)
        buses.append(
            Bus(
                name=name.lower(),
                nodes=[int(n) for n in bus.Nodes],
                kv_base_ln=float(bus.kVBase),
                x=float(bus.x) if has_xy else None,
                y=float(bus.y) if has_xy else None,
            )
        )
    return buses


def _read_vsources(circuit) -> list[Vsource]:
    sources = []
    api = circuit.Vsources
    for name in _each(api, circuit, "vsource"):
        (bus1, nodes1), (bus2, nodes2) = _terminals(circuit)
        r2, x2 = _prop_floats(circuit, "Z2")
        sources.append(
            Vsource(
                name=name,
                bus1=bus1,
                nodes1=nodes1,
                bus2=bus2,
                nodes2=nodes2,
                n_phases=int(api.Phases),
                base_kv=float(api.BasekV),
                pu=float(api.pu),
                angle_deg=float(api.AngleDeg),
                r1_ohm=float(_prop(circuit, "R1")),
                x1_ohm=float(_prop(circuit, "X1")),
                r0_ohm=float(_prop(circuit, "R0")),
                x0_ohm=float(_prop(circuit, "X0")),
                r2_ohm=r2,
                x2_ohm=x2,
                mvasc3=float(_prop(circuit, "MVASC3")),
                mvasc1=float(_prop(circuit, "MVASC1")),
                frequency_hz=float(api.Frequency),
            )
        )
    return sources


def _read_lines(circuit) -> list[Line]:
    lines = []
    api = circuit.Lines
    for name in _each(api, circuit, "line"):
        (bus1, nodes1), (bus2, nodes2) = _terminals(circuit)
        n = int(api.Phases)
        lines.append(
            Line(
                name=name,
                bus1=bus1,
                nodes1=nodes1,
                bus2=bus2,
                nodes2=nodes2,
                n_phases=n,
                r_ohm_per_unit=_square(api.Rmatrix, n),
                x_ohm_per_unit=_square(api.Xmatrix, n),
                c_nf_per_unit=_square(api.Cmatrix, n),
                length=float(api.Length),
                units=LINE_UNITS[int(api.Units)],
                is_switch=bool(api.IsSwitch),
                line_code=api.LineCode.lower(),
                norm_amps=float(api.NormAmps),
                emerg_amps=float(api.EmergAmps),
                open_conductors=_open_conductors(circuit),
            )
        )
    return lines


def _read_transformers(circuit) -> list[Transformer]:
    transformers = []
    api = circuit.Transformers
    for name in _each(api, circuit, "transformer"):
        terminals = _terminals(circuit)
        windings = []
        for w, (bus, nodes) in enumerate(terminals, start=1):
            api.Wdg = w
            windings.append(
                Winding(
                    bus=bus,
                    nodes=nodes,
                    conn="delta" if api.IsDelta else "wye",
                    kv=float(api.kV),
                    kva=float(api.kVA),
                    r_pct=float(api.R),
                    tap_pu=float(api.Tap),
                    min_tap_pu=float(api.MinTap),
                    max_tap_pu=float(api.MaxTap),
                    num_taps=int(api.NumTaps),
                    r_neutral_ohm=float(api.Rneut),
                    x_neutral_ohm=float(api.Xneut),
                )
            )
        transformers.append(
            Transformer(
                name=name,
                n_phases=int(circuit.ActiveCktElement.NumPhases),
                windings=windings,
                xsc_pct=_prop_floats(circuit, "XSCArray"),
                noload_loss_pct=float(_prop(circuit, "%NoLoadLoss")),
                imag_pct=float(_prop(circuit, "%IMag")),
                ppm_antifloat=float(_prop(circuit, "ppm_Antifloat")),
                lead_lag=_prop(circuit, "LeadLag").strip().lower(),
                bank=_prop(circuit, "Bank").lower(),
                xfmr_code=_prop(circuit, "XfmrCode").lower(),
                open_conductors=_open_conductors(circuit),
            )
        )
    return transformers


def _read_regcontrols(circuit) -> list[RegControl]:
    controls = []
    api = circuit.RegControls
    for name in _each(api, circuit, "regcontrol"):
        controls.append(
            RegControl(
                name=name,
                transformer=api.Transformer.lower(),
                winding=int(api.Winding),
                tap_winding=int(api.TapWinding),
                vreg_v=float(api.ForwardVreg),
                band_v=float(api.ForwardBand),
                pt_ratio=float(api.PTratio),
                ct_primary_a=float(api.CTPrimary),
                r_v=float(api.ForwardR),
                x_v=float(api.ForwardX),
                delay_s=float(api.Delay),
                tap_delay_s=float(api.TapDelay),
                max_tap_change=int(api.MaxTapChange),
                reversible=bool(api.IsReversible),
                monitored_bus=api.MonitoredBus.lower(),
                pt_phase=_prop(circuit, "PTPhase").strip().lower(),
            )
        )
    return controls


def _read_capacitors(circuit) -> list[Capacitor]:
    capacitors = []
    api = circuit.Capacitors
    for name in _each(api, circuit, "capacitor"):
        (bus1, nodes1), *second = _terminals(circuit)  # a delta bank has one terminal
        bus2, nodes2 = second[0] if second else ("", [])
        capacitors.append(
            Capacitor(
                name=name,
                bus1=bus1,
                nodes1=nodes1,
                bus2=bus2,
                nodes2=nodes2,
                n_phases=int(circuit.ActiveCktElement.NumPhases),
                kvar=_prop_floats(circuit, "kvar"),
                kv=float(api.kV),
                conn="delta" if api.IsDelta else "wye",
                states=[int(s) for s in api.States],
                open_conductors=_open_conductors(circuit),
            )
        )
    return capacitors


def _read_loads(circuit) -> list[Load]:
    loads = []
    api = circuit.Loads
    for name in _each(api, circuit, "load"):
        ((bus, nodes),) = _terminals(circuit)
        loads.append(
            Load(
                name=name,
                bus=bus,
                nodes=nodes,
                n_phases=int(api.Phases),
                conn="delta" if api.IsDelta else "wye",
                model=int(api.Model),
                kv=float(api.kV),
                kw=float(api.kW),
                kvar=float(api.kvar),
                vminpu=float(api.Vminpu),
                vmaxpu=float(api.Vmaxpu),
                cvr_watts=float(api.CVRwatts),
                cvr_vars=float(api.CVRvars),
            )
        )
    return loads


# ---------------------------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------------------------
def _provenance(path: Path, taps: str, coord_file: Path | None, engine, dss) -> dict[str, Any]:
    files = source_files(path)
    if coord_file is not None and coord_file not in files:
        files.append(coord_file)
    return {
        "reader": "dss",
        "source": path.name,
        "taps": taps,
        "source_files": {_relative(f, path.parent): sha256_of(f) for f in files},
        "engine": engine.Version.splitlines()[0].strip(),
        "dss_python": getattr(dss, "__version__", "unknown"),
    }


def source_files(path: Path) -> list[Path]:
    """The master file and every file it (recursively) redirects to or loads coordinates from.

    Only used to fingerprint a cache; the engine, not this scan, reads the feeder.
    """
    found: list[Path] = []
    pending = [Path(path).resolve()]
    while pending:
        current = pending.pop(0)
        if current in found or not current.is_file():
            continue
        found.append(current)
        for raw in current.read_text(encoding="utf-8", errors="replace").splitlines():
            line = re.split(r"!|//", raw, maxsplit=1)[0]
            match = _FILE_COMMAND.match(line)
            if match:
                pending.append((current.parent / match.group(2).strip("\"'")).resolve())
    return found


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()
