"""OpenDSS feeder reader: the OpenDSS engine (dss-python) reads a .dss file into a :class:`Feeder`.

The engine does all the reading (no .dss parser here); this module only asks it for each
element's data. The engine is imported inside :func:`read_dss_feeder`, never at module import, so
machines without dss-python can still load cached feeders (``gridflex.runs.feeder_cache``).

Regulator taps (``taps``):

* ``"file"``: the taps as the file writes them. The file's RegControls never act: control mode is
  switched off at the start of every control loop the file's own ``Solve`` commands run (the
  engine's InitControls event), because the IEEE 13 file solves with its RegControls on.
* ``"opendss"``: one plain ``Solve`` of the compiled base case with the file's own RegControls
  (and CapControls, SwtControls, ...), freezing the taps it settles on (IEEE 123: 6 0 2 0 10 4 6).
  This is the only engine solve that decides anything; a feeder with generation gets one more,
  controls off, at tolerance 1e-10, only to read the generation's output.

Controls: RegControls and CapControls settle in the ``opendss`` mode's solve (the capacitor states
it leaves are frozen, as the taps); in ``file`` mode they are inert and the capacitors' states are
as written. Fuses, Reclosers, Relays and SwtControls are read as the switch states of the lines they
act on (in ``file`` mode a SwtControl's own ``State`` is applied to its line first). Generators,
PV systems and storage become fixed injections at their output at the file's operating point
(one engine solve, controls off in ``file`` mode). Settings that change the answer are honoured
(the circuit's LoadMult, each load's status and VLowpu) or refused (a solution mode other than
snapshot), never ignored. MaxIterations is raised to at least
:data:`SETTLE_MAX_ITERATIONS` for the engine's solve, noted when the file's own value would not
have sufficed. Elements defined after a ``Solve`` and files without voltage bases are handled by
rebuilding the engine's bus list and, where buses have no base, running its CalcVoltageBases
(noted, with the bases used).

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
    LOAD_STATUSES,
    TAPS_MODES,
    Bus,
    CapControl,
    Capacitor,
    Feeder,
    Generation,
    Line,
    Load,
    Reactor,
    RegControl,
    Transformer,
    Vsource,
    Winding,
    warn,
)
from gridflex.plugins.hookspecs import hookimpl

SUPPORTED_CLASSES = {
    "vsource", "line", "transformer", "regcontrol", "capacitor", "capcontrol", "load", "reactor",
    "generator", "pvsystem", "storage",
}
# Measurement only, or protection / switch controls whose effect is the (read) state of the
# conductors they open: no element of their own in the network.
IGNORED_CLASSES = {"energymeter", "monitor", "sensor", "fuse", "recloser", "relay", "swtcontrol"}
GENERATION_CLASSES = ("generator", "pvsystem", "storage")
SUPPORTED_LOAD_MODELS = {1: "constant PQ", 2: "constant Z", 3: "constant P, quadratic Q",
                         4: "exponential (CVR)", 5: "constant |I|"}
SUPPORTED_GENERATION_MODELS = {1: "constant PQ", 2: "constant Z"}
SETTLE_MAX_ITERATIONS = 100  # MaxIterations of the engine's solve (OpenDSS's default is 15)
SOLVE_MODES = {0: "snapshot", 1: "daily", 2: "yearly", 3: "monte carlo 1", 4: "load duration 1",
               5: "peak day", 6: "duty cycle", 7: "direct", 8: "monte fault", 9: "fault study",
               10: "monte carlo 2", 11: "monte carlo 3", 12: "load duration 2", 13: "auto add",
               14: "dynamic", 15: "harmonic", 16: "time", 17: "harmonic t"}
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
    notes: list[str] = []
    try:
        _check_supported(circuit, path)
        _check_solution_mode(circuit, path)
        _refresh_buses(engine, circuit, path, notes)
        if taps == "file":
            _apply_switch_controls(engine, circuit)
        if taps == "opendss" or _has_generation(circuit):
            _solve_operating_point(engine, circuit, path, taps, notes)
        load_mult = float(circuit.Solution.LoadMult)
        feeder = Feeder(
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
            loads=_read_loads(circuit, path),
            provenance=_provenance(path, taps, coord_file, engine, dss),
            load_mult=load_mult,
            reactors=_read_reactors(circuit),
            generation=_read_generation(circuit, path),
            capcontrols=_read_capcontrols(circuit),
            notes=notes,
        )
    except dss.DSSException as exc:  # a file the engine compiled but cannot use
        raise UserError(f"OpenDSS could not read the circuit of {path}: {exc}") from None
    if load_mult != 1.0:
        notes.append(f"the file sets LoadMult={load_mult:g}: status=variable loads are scaled by it "
                     "(fixed and exempt loads are not), as OpenDSS does")
    for note in notes:
        warn(f"{path.name}: {note}")
    return feeder


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
        shown = ", ".join(unsupported[:8]) + (f" and {len(unsupported) - 8} more" if len(unsupported) > 8 else "")
        raise UserError(
            f"{path}: gridflex does not model {shown} (supported: "
            f"{', '.join(sorted(SUPPORTED_CLASSES))}; read as switch states or ignored: "
            f"{', '.join(sorted(IGNORED_CLASSES))}). An Isource (fixed current injection), "
            "InvControl, ExpControl, StorageController, GenDispatcher or other element has no "
            "gridflex model: remove it, or disable it with `<class>.<name>.enabled=no` where the "
            "feeder stays connected without it"
        )
    if len(vsources) != 1:
        raise UserError(f"{path}: gridflex needs exactly one Vsource, found {vsources or 'none'}")


def _check_solution_mode(circuit, path: Path) -> None:
    """Refuse settings that would make the engine's answer differ from gridflex's reading: solution
    modes other than snapshot (loadshapes scale every load), the admittance load model, the
    positive-sequence circuit model and a load-growth year other than 0."""
    solution = circuit.Solution
    if int(solution.LoadModel) != 1:
        raise UserError(
            f"{path}: the file sets `Set LoadModel=Admittance`, under which OpenDSS solves every "
            "load as a constant impedance; gridflex models each load by its own model= (as "
            "OpenDSS's default power-flow load model). Remove the `Set LoadModel` command, or set "
            "the loads' model=2 to have constant impedances"
        )
    if int(circuit.Settings.CktModel) != 0:
        raise UserError(
            f"{path}: the file sets `Set CktModel=Positive` (a positive-sequence model); gridflex "
            "models every phase (OpenDSS's default multiphase model). Remove the command"
        )
    if int(solution.Year) != 0:
        raise UserError(
            f"{path}: the file sets `Set Year={int(solution.Year)}`, with which OpenDSS grows every "
            "load by its growth curve or %Growth per year; gridflex reads the loads' kW/kvar as "
            "written (year 0). Remove the `Set Year` command, or write the grown kW into the loads"
        )
    mode = int(solution.Mode)
    if mode != 0:
        raise UserError(
            f"{path}: the file sets the OpenDSS solution mode to {SOLVE_MODES.get(mode, mode)!r} "
            f"(hour {float(circuit.Solution.dblHour):g}), in which loadshapes scale the loads. "
            "gridflex reads a feeder's base case as an OpenDSS snapshot: every load at its kW/kvar "
            "times the circuit's LoadMult, no loadshape (time series come from the scenario's own "
            "load profiles). To read it that way, remove the `Set mode=...` command or end the "
            "file with `Set mode=snapshot`"
        )


def _refresh_buses(engine, circuit, path: Path, notes: list[str]) -> None:
    """Rebuild the engine's bus list and give every bus a voltage base, as the engine would.

    Elements defined after a ``Solve`` (or a file without ``CalcVoltageBases``) leave the bus list
    stale or the buses without a base; the engine's own ``MakeBusList`` and ``CalcVoltageBases``
    (from the file's voltage bases, or the engine's defaults when it sets none) fix that.
    """
    engine.Text.Command = "MakeBusList"
    missing, kept = [], {}
    for name in circuit.AllBusNames:
        circuit.SetActiveBus(name)
        base = float(circuit.ActiveBus.kVBase)
        if base <= 0.0:
            missing.append(name.lower())
        else:
            kept[name] = base
    if not missing:
        return
    engine.Text.Command = "CalcVoltageBases"
    for name, base in kept.items():  # bases the file gave (CalcVoltageBases or SetkVBase) stay
        circuit.SetActiveBus(name)
        if float(circuit.ActiveBus.kVBase) != base:
            engine.Text.Command = f"SetkVBase bus={name} kVLN={base!r}"
    bases = ", ".join(f"{float(v):g}" for v in circuit.Settings.VoltageBases)
    shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
    notes.append(
        f"{'bus' if len(missing) == 1 else 'buses'} {shown} had no voltage base (no CalcVoltageBases after they were defined); gridflex "
        f"ran the engine's CalcVoltageBases with the voltage bases [{bases}] kV (line to line). "
        "Add `Set VoltageBases=[...]` and `CalcVoltageBases` at the end of the file to choose them"
    )


def _apply_switch_controls(engine, circuit) -> None:
    """``file`` mode: put each SwtControl's line in the state the control holds (its ``State``)."""
    api = circuit.SwtControls
    for name in list(api.AllNames):
        if name.lower() == "none":
            continue
        api.Name = name
        circuit.SetActiveElement(f"swtcontrol.{name}")
        if not circuit.ActiveCktElement.Enabled or not api.SwitchedObj:
            continue
        # the property text, not the API's State (which reads "closed" until the control samples)
        action = "open" if _prop(circuit, "State").strip().lower().startswith("o") else "close"
        engine.Text.Command = f"{action} {api.SwitchedObj} {int(api.SwitchedTerm)}"


def _has_generation(circuit) -> bool:
    return any(
        int(getattr(circuit, api).Count) > 0 for api in ("Generators", "PVSystems", "Storages")
    )


def _solve_operating_point(engine, circuit, path: Path, taps: str, notes: list[str]) -> None:
    """The one engine solve: controls settle (``opendss``) or stay off (``file``, only to read
    generation at its operating point). MaxIterations is raised to at least
    :data:`SETTLE_MAX_ITERATIONS` (noted when the file's own value was exceeded)."""
    solution = circuit.Solution
    file_max = int(solution.MaxIterations)
    if file_max < SETTLE_MAX_ITERATIONS:
        solution.MaxIterations = SETTLE_MAX_ITERATIONS
    mode_before = int(solution.ControlMode)
    if taps == "file":
        solution.ControlMode = -1  # OFF: nothing moves
    cwd = os.getcwd()
    try:
        solution.Solve()
    except Exception as exc:  # the engine's DSSException (dss is imported lazily)
        raise UserError(f"{path}: the OpenDSS solve of the base case failed: {exc}") from None
    finally:
        os.chdir(cwd)
        solution.ControlMode = mode_before
    if not solution.Converged:
        raise UserError(
            f"{path}: the OpenDSS base-case solve did not converge (MaxIterations "
            f"{int(solution.MaxIterations)}, MaxControlIter {int(solution.MaxControlIterations)})"
            + ("; use taps='file'" if taps == "opendss" else "")
        )
    needed = int(solution.MostIterationsDone)
    if _has_generation(circuit):  # generation is read from this solve: converge it tightly
        tolerance, mode = float(solution.Tolerance), int(solution.ControlMode)
        solution.Tolerance, solution.ControlMode = 1e-10, -1
        try:
            solution.Solve()
        finally:
            os.chdir(cwd)
            solution.Tolerance, solution.ControlMode = tolerance, mode
    if needed > file_max:
        notes.append(
            f"the engine's base-case solve needed {needed} iterations, more "
            f"than the file's MaxIterations={file_max}; gridflex raised it to "
            f"{int(solution.MaxIterations)} for that solve"
        )


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


def _read_loads(circuit, path: Path) -> list[Load]:
    loads = []
    api = circuit.Loads
    for name in _each(api, circuit, "load"):
        ((bus, nodes),) = _terminals(circuit)
        model, n_phases, is_delta = int(api.Model), int(api.Phases), bool(api.IsDelta)
        if model not in SUPPORTED_LOAD_MODELS:
            raise UserError(
                f"{path}: load {name!r} uses OpenDSS load model {model}, which gridflex does not "
                "model; supported: " + ", ".join(f"{k} ({v})" for k, v in SUPPORTED_LOAD_MODELS.items())
                + ". Change the load's model= to a supported one"
            )
        if is_delta and n_phases not in (1, 2, 3):
            raise UserError(f"{path}: load {name!r} is a {n_phases}-phase delta load; gridflex "
                            "models delta loads with 1, 2 (open delta) or 3 phases")
        loads.append(
            Load(
                name=name,
                bus=bus,
                nodes=nodes,
                n_phases=n_phases,
                conn="delta" if is_delta else "wye",
                model=model,
                kv=float(api.kV),
                kw=float(api.kW),
                kvar=float(api.kvar),
                vminpu=float(api.Vminpu),
                vmaxpu=float(api.Vmaxpu),
                cvr_watts=float(api.CVRwatts),
                cvr_vars=float(api.CVRvars),
                status=LOAD_STATUSES[int(api.Status)],
                vlowpu=float(_prop(circuit, "VLowpu")),
            )
        )
    return loads


def _phase_matrix(flat, n: int) -> list[list[float]]:
    values = [float(v) for v in flat]
    return _square(values, n) if len(values) == n * n else [[0.0] * n for _ in range(n)]


def _read_reactors(circuit) -> list[Reactor]:
    """Reactors with their phase impedance matrix as the engine computed it from the spec."""
    from gridflex.network.admittance import sequence_to_phase  # noqa: PLC0415

    reactors = []
    api = circuit.Reactors
    for name in _each(api, circuit, "reactor"):
        (bus1, nodes1), *second = _terminals(circuit)  # a delta reactor has one terminal
        bus2, nodes2 = second[0] if second else ("", [])
        n = int(api.Phases)
        spec = int(api.SpecType)
        if spec == 3:  # Rmatrix / Xmatrix
            r, x = _phase_matrix(api.Rmatrix, n), _phase_matrix(api.Xmatrix, n)
        elif spec == 4:  # sequence impedances Z1, Z2, Z0
            z1, z2, z0 = (complex(*getattr(api, z)) for z in ("Z1", "Z2", "Z0"))
            z = sequence_to_phase(z0, z1, z2, n)
            r, x = z.real.tolist(), z.imag.tolist()
        else:  # R, X (directly or from kvar at kV): the same on every phase
            r = [[float(api.R) if i == j else 0.0 for j in range(n)] for i in range(n)]
            x = [[float(api.X) if i == j else 0.0 for j in range(n)] for i in range(n)]
        reactors.append(
            Reactor(
                name=name,
                bus1=bus1,
                nodes1=nodes1,
                bus2=bus2,
                nodes2=nodes2,
                n_phases=n,
                conn="delta" if api.IsDelta else "wye",
                r_ohm=r,
                x_ohm=x,
                rp_ohm=float(api.Rp) if float(api.Rp) > 0 else 0.0,
                parallel=bool(api.Parallel) and spec == 3,  # the engine ignores it otherwise
                norm_amps=float(_prop(circuit, "normamps") or 0.0) or None,
                open_conductors=_open_conductors(circuit),
            )
        )
    return reactors


def _read_generation(circuit, path: Path) -> list[Generation]:
    """Generators, PV systems and storage at their output at the solved operating point.

    Their nominal kW/kvar are the engine's terminal powers (after :func:`_solve_operating_point`,
    at tolerance 1e-10) divided by the engine's voltage law at the terminal voltages: 1 inside
    [vminpu, vmaxpu] of the rating, the constant impedance of the nominal power at vminpu
    (below) or vmaxpu (above) for model 1, a constant impedance for model 2.
    """
    import numpy as np  # noqa: PLC0415

    out = []
    for cls in GENERATION_CLASSES:
        for element in circuit.AllElementNames:
            if element.split(".", 1)[0].lower() != cls:
                continue
            circuit.SetActiveElement(element)
            el = circuit.ActiveCktElement
            if not el.Enabled:
                continue
            name = element.lower()
            ((bus, nodes),) = _terminals(circuit)
            model = int(_prop(circuit, "model") or 1)
            if model not in SUPPORTED_GENERATION_MODELS:
                raise UserError(
                    f"{path}: {name} uses model {model}, which gridflex does not model; supported: "
                    + ", ".join(f"{k} ({v})" for k, v in SUPPORTED_GENERATION_MODELS.items())
                )
            n = int(el.NumPhases)
            conn = _prop(circuit, "conn").strip().lower()
            conn = "delta" if conn.startswith(("d", "ll")) else "wye"
            kv = float(_prop(circuit, "kv"))
            vmin, vmax = float(_prop(circuit, "vminpu")), float(_prop(circuit, "vmaxpu"))
            powers = np.asarray(el.Powers, dtype=float)
            kw, kvar = -float(powers[0::2].sum()), -float(powers[1::2].sum())
            v = np.asarray(el.Voltages, dtype=float)
            v = v[0::2] + 1j * v[1::2]
            if conn == "wye":
                v_branch = v[:n] - v[n] if len(v) > n else v[:n]
                v_rated = kv * 1000.0 / (3**0.5 if n > 1 else 1.0)
            else:
                m = len(v)
                v_branch = np.array([v[i] - v[(i + 1) % m] for i in range(n)])
                v_rated = kv * 1000.0
            r = np.abs(v_branch) / v_rated
            # the engine's law at each phase: S_phase = S_nominal / n * f(r)
            if model == 2:
                f = r**2
            else:
                f = np.where(r < vmin, r**2 / vmin**2, np.where(r > vmax, r**2 / vmax**2, 1.0))
            kw, kvar = float(kw * n / f.sum()), float(kvar * n / f.sum())
            out.append(Generation(name=name, bus=bus, nodes=nodes, n_phases=n, conn=conn,
                                  model=model, kv=kv, kw=kw, kvar=kvar, vminpu=vmin, vmaxpu=vmax))
    return out


def _read_capcontrols(circuit) -> list[CapControl]:
    controls = []
    api = circuit.CapControls
    modes = {0: "current", 1: "voltage", 2: "kvar", 3: "time", 4: "pf"}
    for name in _each(api, circuit, "capcontrol"):
        controls.append(
            CapControl(
                name=name,
                capacitor=api.Capacitor.lower(),
                type=modes.get(int(api.Mode), str(int(api.Mode))),
                element=api.MonitoredObj.lower(),
                terminal=int(api.MonitoredTerm),
                on_setting=float(api.ONSetting),
                off_setting=float(api.OFFSetting),
                pt_ratio=float(api.PTratio),
                ct_ratio=float(api.CTratio),
                delay_s=float(api.Delay),
                delay_off_s=float(api.DelayOff),
            )
        )
    return controls


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
