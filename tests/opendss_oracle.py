"""The OpenDSS engine as an independent oracle for the power-flow tests.

Two things come from the engine here:

* :func:`grid_from_engine` assembles a :class:`gridflex.network.grid.Grid` from the compiled circuit: the
  sum of every element's primitive admittance except the loads (the Vsource's Yprim is its Norton
  admittance), the loads decomposed into single-phase branches as the ``Grid`` docstring says, and
  the lines/switches/transformers as reported branches. It cross-checks the project's own
  ``gridflex.network.grid_build.build_grid``.
* :meth:`EngineCase.solve` runs the engine's own power flow (``Set tolerance=1e-10``, control off,
  taps fixed) and returns voltages, terminal currents and powers in the ``Grid``'s order.

Only tests and the benchmark import this module; the solver never does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gridflex.network.grid import Branch, Grid
from gridflex.shipped import BUILTIN_FEEDERS, shipped_feeders_dir

SHARED_FEEDERS = Path("/work/shared/feeders")


# Regulator taps as published by Kersting (the feeders' own run scripts force these).
PUBLISHED_TAPS = {
    "ieee13": {"reg1": 10, "reg2": 8, "reg3": 11},
    "ieee34mod1": {"reg1a": 12, "reg1b": 5, "reg1c": 5, "reg2a": 13, "reg2b": 11, "reg2c": 12},
    "ieee34mod2": {"reg1a": 12, "reg1b": 5, "reg1c": 5, "reg2a": 13, "reg2b": 11, "reg2c": 12},
    "ieee123": {"reg1a": 7, "reg2a": -1, "reg3a": 0, "reg3c": -1, "reg4a": 8, "reg4b": 1, "reg4c": 5},
}
TAP_STEP_PU = 0.00625
CONTROL_ELEMENTS = {"regcontrol", "capcontrol", "swtcontrol", "energymeter", "monitor", "fuse",
                    "recloser", "relay", "sensor"}
# Power-conversion elements with no place in gridflex's Y (like loads: injections)
INJECTION_ELEMENTS = {"load", "generator", "pvsystem", "storage"}
SETTLE_MAX_ITERATIONS = 100  # as the reader's settling solve


def engine_available() -> bool:
    try:
        import dss  # noqa: F401
    except ImportError:
        return False
    return True


def feeder_path(name: str) -> Path:
    """The shipped feeder ``name``'s master file (a :data:`gridflex.shipped.BUILTIN_FEEDERS` name):
    the package's copy if present, else the shared one."""
    relative = BUILTIN_FEEDERS[name]
    for root in (shipped_feeders_dir(), SHARED_FEEDERS):
        if (root / relative).exists():
            return root / relative
    raise FileNotFoundError(f"feeder {name!r} not found ({relative})")


def tap_commands(taps: dict[str, int]) -> list[str]:
    """Engine commands that put each regulator transformer's winding 2 on the given tap step."""
    return [f"Transformer.{name}.wdg=2 Tap={1.0 + TAP_STEP_PU * step:.6f}" for name, step in taps.items()]


def _complex(flat) -> np.ndarray:
    arr = np.asarray(flat, dtype=float)
    return arr[0::2] + 1j * arr[1::2]


@dataclass
class EngineSolution:
    """One engine solve, in the Grid's node and branch order (SI: V, A, kW, kvar)."""

    v_volts: np.ndarray  # complex [n]
    branch_currents_a: dict[str, np.ndarray]  # name -> complex [terminals * conductors]
    source_power_kw: float  # drawn from the source at the source bus terminal
    source_power_kvar: float
    losses_kw: float  # engine's circuit losses (PD elements)
    losses_kvar: float
    load_power_kw: float  # total consumption of all loads
    load_power_kvar: float
    converged: bool
    iterations: int


class EngineCase:
    """A compiled feeder with frozen taps and controls off, in its own engine context.

    ``commands`` run after the compile (taps, ``BatchEdit`` of load models or limits, ...).
    ``settle``: first one plain engine solve with the file's controls (RegControls, CapControls,
    SwtControls) at MaxIterations 100, as the reader's ``opendss`` taps mode, so that taps,
    capacitor and switch states are those the engine settles on; then they stay frozen.
    """

    def __init__(self, dss_path: str | Path, commands: list[str] | tuple[str, ...] = (),
                 tolerance: float = 1e-10, settle: bool = False):
        import dss

        self.dss = dss.DSS.NewContext()
        self.dss.AllowChangeDir = False
        self._run(f'compile "{Path(dss_path).resolve()}"')
        if settle:
            solution = self.dss.ActiveCircuit.Solution
            solution.MaxIterations = max(int(solution.MaxIterations), SETTLE_MAX_ITERATIONS)
            solution.Solve()
            if not solution.Converged:
                raise RuntimeError(f"the engine's settling solve of {dss_path} did not converge")
        for command in ("set controlmode=off", f"set tolerance={tolerance:g}", "set maxiterations=500"):
            self._run(command)
        for command in commands:
            self._run(command)
        self._run("solve")  # rebuilds every Yprim (a tap set by command is stale until then)
        self.circuit = self.dss.ActiveCircuit
        self.node_names = [name.lower() for name in self.circuit.YNodeOrder]
        self._node_index = {name: k for k, name in enumerate(self.node_names)}
        loads = self.circuit.Loads
        self.load_names = [f"load.{name.lower()}" for name in loads.AllNames]
        self._load_kw0, self._load_kvar0 = [], []
        for name in loads.AllNames:
            loads.Name = name
            self._load_kw0.append(loads.kW)
            self._load_kvar0.append(loads.kvar)

    def _run(self, command: str) -> None:
        self.dss.Text.Command = command

    # ------------------------------------------------------------------ topology helpers
    def _element_nodes(self) -> np.ndarray:
        """Node index of every conductor of the active element, terminal by terminal (-1 = ground)."""
        element = self.circuit.ActiveCktElement
        n_cond = element.NumConductors
        order = np.asarray(element.NodeOrder)
        nodes = np.empty(len(order), dtype=np.int64)
        for k, node in enumerate(order):
            bus = element.BusNames[k // n_cond].split(".")[0].lower()
            nodes[k] = -1 if node == 0 else self._node_index[f"{bus}.{node}"]
        return nodes

    def _yprim(self) -> np.ndarray:
        y = _complex(self.circuit.ActiveCktElement.Yprim)
        size = int(round(np.sqrt(y.size)))
        return y.reshape(size, size)

    # ------------------------------------------------------------------ Grid assembly
    def grid(self, name: str = "engine") -> Grid:
        """A :class:`Grid` assembled from the engine's element primitives (see module docstring).

        Loads enter at their nominal kW/kvar (as compiled), whatever scale the last solve used.
        """
        self.set_load_scale(None)
        c = self.circuit
        n = len(self.node_names)
        y_si = np.zeros((n, n), dtype=complex)
        branches: list[Branch] = []
        source_nodes = source_y = None
        for element_name in c.AllElementNames:
            kind = element_name.split(".")[0].lower()
            if kind in INJECTION_ELEMENTS or kind in CONTROL_ELEMENTS:
                continue
            if kind not in {"vsource", "line", "transformer", "capacitor", "reactor"}:
                raise NotImplementedError(f"element {element_name} not supported by the oracle")
            c.SetActiveElement(element_name)
            if not c.ActiveCktElement.Enabled:
                continue
            nodes, yprim = self._element_nodes(), self._yprim()
            keep = nodes >= 0
            y_si[np.ix_(nodes[keep], nodes[keep])] += yprim[np.ix_(keep, keep)]
            if kind == "vsource":
                n_phases = c.ActiveCktElement.NumPhases
                source_nodes, source_y = nodes[:n_phases], yprim[:n_phases, :n_phases]
            elif kind in {"line", "transformer"}:
                is_switch = kind == "line" and self._is_switch(element_name)
                branches.append(Branch(
                    name=element_name.lower(),
                    kind="switch" if is_switch else kind,
                    terminal_nodes=nodes,
                    yprim_si=yprim,
                    n_phases=c.ActiveCktElement.NumPhases,
                ))
        vs = c.Vsources
        vs.First
        emf_v = (vs.pu * vs.BasekV * 1e3 / np.sqrt(3.0)
                 * np.exp(1j * np.deg2rad(vs.AngleDeg - 120.0 * np.arange(vs.Phases))))
        loads = self._load_branches()
        return Grid(
            name=name,
            node_names=list(self.node_names),
            v_base_ln_v=self._base_voltages_v(),
            y_si=y_si,
            source_nodes=np.asarray(source_nodes),
            source_emf_v=emf_v,
            source_y_si=source_y,
            load_elements=list(self.load_names),
            branches=branches,
            meta={"source": "opendss_oracle"},
            **loads,
        )

    def _is_switch(self, element_name: str) -> bool:
        self.circuit.Lines.Name = element_name.split(".", 1)[1]
        return bool(self.circuit.Lines.IsSwitch)

    def _base_voltages_v(self) -> np.ndarray:
        bases = np.empty(len(self.node_names))
        for k, node in enumerate(self.node_names):
            self.circuit.SetActiveBus(node.split(".")[0])
            bases[k] = self.circuit.ActiveBus.kVBase * 1e3
        return bases

    def _load_branches(self) -> dict:
        """Loads as single-phase branches (``Grid`` conventions)."""
        c, loads = self.circuit, self.circuit.Loads
        rows = []
        for index, name in enumerate(loads.AllNames):
            loads.Name = name
            c.SetActiveElement(f"load.{name}")
            nodes = self._element_nodes()
            n_phases, is_delta, kv = loads.Phases, loads.IsDelta, loads.kV
            if is_delta and n_phases > 1:
                pairs = [(nodes[k], nodes[(k + 1) % n_phases]) for k in range(n_phases)]
                v_nom = kv * 1e3
            elif is_delta:  # one phase: between its two conductors (node 0 = ground)
                pairs, v_nom = [(nodes[0], nodes[1])], kv * 1e3
            else:  # wye: each phase to the neutral conductor (last)
                pairs = [(nodes[k], nodes[n_phases]) for k in range(n_phases)]
                v_nom = kv * 1e3 / (np.sqrt(3.0) if n_phases > 1 else 1.0)
            for a, b in pairs:
                rows.append(dict(
                    load_names=f"load.{name.lower()}", load_index=index, load_node_a=a, load_node_b=b,
                    load_p_kw=loads.kW / n_phases, load_q_kvar=loads.kvar / n_phases,
                    load_v_nom_v=v_nom, load_model=loads.Model, load_cvr_p=loads.CVRwatts,
                    load_cvr_q=loads.CVRvars, load_vmin_pu=loads.Vminpu, load_vmax_pu=loads.Vmaxpu,
                ))
        out = {key: np.asarray([row[key] for row in rows]) for key in rows[0]}
        out["load_names"] = [row["load_names"] for row in rows]
        for key in ("load_index", "load_node_a", "load_node_b", "load_model"):
            out[key] = out[key].astype(np.int64)
        return out

    # ------------------------------------------------------------------ solving
    def set_load_scale(self, load_scale: np.ndarray | float | None) -> None:
        """Scale each load's nominal kW and kvar (per element, in ``load_names`` order)."""
        scale = np.broadcast_to(1.0 if load_scale is None else np.asarray(load_scale, float),
                                (len(self.load_names),))
        loads = self.circuit.Loads
        for k, (factor, kw0, kvar0) in enumerate(zip(scale, self._load_kw0, self._load_kvar0)):
            loads.idx = k + 1  # by index: a lookup by name costs more than the solve itself
            loads.kW = kw0 * factor
            loads.kvar = kvar0 * factor  # after kW: setting kW recomputes kvar from the PF

    def solve(self, load_scale: np.ndarray | float | None = None) -> EngineSolution:
        """Engine power flow at the given per-load scale (cold start from the no-load voltages)."""
        self.set_load_scale(load_scale)
        self.circuit.Solution.Solve()
        return self.read_solution()

    def read_solution(self) -> EngineSolution:
        c = self.circuit
        v = _complex(c.YNodeVarray)
        order = [self._node_index[name.lower()] for name in c.YNodeOrder]
        v_volts = np.empty_like(v)
        v_volts[order] = v
        currents = {}
        for element_name in c.AllElementNames:
            kind = element_name.split(".")[0].lower()
            if kind in {"line", "transformer", "reactor"}:
                c.SetActiveElement(element_name)
                currents[element_name.lower()] = _complex(c.ActiveCktElement.Currents)
        load_s = 0j
        for name in c.Loads.AllNames:
            c.SetActiveElement(f"load.{name}")
            powers = _complex(c.ActiveCktElement.Powers)
            load_s += powers.sum()
        total = _complex(c.TotalPower)[0]
        losses = _complex(c.Losses)[0] / 1e3
        return EngineSolution(
            v_volts=v_volts, branch_currents_a=currents,
            source_power_kw=-total.real, source_power_kvar=-total.imag,
            losses_kw=losses.real, losses_kvar=losses.imag,
            load_power_kw=load_s.real, load_power_kvar=load_s.imag,
            converged=bool(c.Solution.Converged), iterations=int(c.Solution.Iterations),
        )

    def system_y_without_loads(self) -> np.ndarray:
        """The engine's SystemY minus every load's Yprim (for checking the assembled ``y_si``)."""
        c = self.circuit
        self.dss.ActiveCircuit.Solution.BuildYMatrix(2, False)
        y = _complex(c.SystemY)
        n = len(self.node_names)
        y = y.reshape(n, n)
        order = [self._node_index[name.lower()] for name in c.YNodeOrder]
        y_ordered = np.empty_like(y)
        y_ordered[np.ix_(order, order)] = y
        for name in c.Loads.AllNames:
            c.SetActiveElement(f"load.{name}")
            nodes, yprim = self._element_nodes(), self._yprim()
            keep = nodes >= 0
            y_ordered[np.ix_(nodes[keep], nodes[keep])] -= yprim[np.ix_(keep, keep)]
        return y_ordered


def grid_from_engine(dss_path: str | Path, commands: list[str] | tuple[str, ...] = (),
                     name: str = "engine") -> Grid:
    """A :class:`Grid` assembled from the OpenDSS engine (taps as left by ``commands``)."""
    return EngineCase(dss_path, commands).grid(name)


def solve_engine(dss_path: str | Path, commands: list[str] | tuple[str, ...] = (),
                 load_scale: np.ndarray | float | None = None) -> EngineSolution:
    """One engine power flow (tolerance 1e-10, controls off) in the Grid's order."""
    return EngineCase(dss_path, commands).solve(load_scale)


def compare_with_engine(dss_path: str | Path, taps: str = "opendss", load_mult: float = 1.0,
                        engine_commands: list[str] | tuple[str, ...] = (), method: str = "auto") -> dict:
    """gridflex's reading and ``ac3ph`` solve of a .dss file against the engine's own solve.

    The feeder is read afresh (no cache) with ``taps``; the engine settles its controls the same
    way (``opendss``: one solve with controls, then frozen; ``file``: controls off, regulator taps
    and controlled capacitors put back to the file's values, which the file's own ``Solve``
    commands may have moved).
    ``load_mult`` scales gridflex's status=variable loads and is the engine's ``Set LoadMult``
    times the file's own. Returns ``max_dv_pu`` (largest |V_gridflex - V_engine| over every node,
    per unit of the node's base), the feeder, grid, both voltage vectors (V, grid order) and the
    engine case. ``method``: the Z-bus products (``dense``, ``sparse``, or ``auto`` as the ``ac3ph``
    solver chooses on a CPU: sparse above ``SPARSE_MIN_NODES`` nodes); ``result.network`` tells.
    """
    import torch

    from gridflex.network.grid_build import build_grid
    from gridflex.network.powerflow import build_network, solve_power_flow
    from gridflex_plugins.feeders.dss_reader import read_dss_feeder

    feeder = read_dss_feeder(dss_path, taps)
    grid = build_grid(feeder)
    if method == "auto":
        from gridflex_plugins.solvers.ac3ph import SPARSE_MIN_NODES

        method = "sparse" if grid.n_nodes > SPARSE_MIN_NODES else "dense"
    net = build_network(grid, vlimits_rule=True, method=method)
    scale = torch.full((len(grid.load_elements),), float(load_mult), dtype=torch.float64)
    scale[torch.as_tensor(grid.load_fixed)] = 1.0
    result = solve_power_flow(net, load_scale=scale, options=_options())
    assert bool(result.converged), f"gridflex did not converge on {dss_path}"
    v_ours = result.v_volts().numpy().reshape(-1)
    commands = list(engine_commands)
    if taps == "file":  # the file's own Solve commands may have moved controls; gridflex's did not
        commands += [
            f"Transformer.{rc.transformer}.wdg={rc.tap_winding} "
            f"Tap={feeder.transformer(rc.transformer).windings[rc.tap_winding - 1].tap_pu!r}"
            for rc in feeder.regcontrols
        ]
        capacitors = {c.capacitor for c in feeder.capcontrols}
        commands += [
            f"Capacitor.{c.name}.states=[{' '.join(map(str, c.states))}]"
            for c in feeder.capacitors if c.name in capacitors
        ]
    if load_mult != 1.0:
        commands.append(f"set loadmult={feeder.load_mult * load_mult:.12g}")
    case = EngineCase(dss_path, commands, settle=(taps == "opendss"))
    case.circuit.Solution.Solve()
    solution = case.read_solution()
    assert solution.converged, f"the engine did not converge on {dss_path}"
    index = {name: k for k, name in enumerate(grid.node_names)}
    v_engine = np.zeros(grid.n_nodes, dtype=complex)
    for k, name in enumerate(case.node_names):
        v_engine[index[name]] = solution.v_volts[k]
    dv = np.abs(v_ours - v_engine) / np.asarray(grid.v_base_ln_v)
    return {"max_dv_pu": float(dv.max()), "worst_node": grid.node_names[int(np.argmax(dv))],
            "feeder": feeder, "grid": grid, "v_gridflex": v_ours, "v_engine": v_engine,
            "case": case, "result": result, "solution": solution}


def _options():
    from gridflex.network.powerflow import SolveOptions

    return SolveOptions(tol_pu=1e-10, max_iter=300)
