"""Assemble a solver-ready :class:`~gridflex.network.grid.Grid` from a :class:`~gridflex.network.feeder.Feeder`.

``build_grid(feeder, taps)`` is the one-call form. A tap controller that rebuilds Y after every
tap move keeps a :class:`GridAssembler`: it assembles the tap-independent part of Y (lines,
switches, capacitors, transformers without a RegControl, the source) once, and
:meth:`GridAssembler.y_si` only adds the few regulator primitives for new taps.

Taps are signed step counts on each regulated transformer's tap winding (the RegControl's
``tap_winding``), keyed by transformer name, e.g. ``{"reg4a": 8}`` = 1.05 pu at 0.00625 pu/step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gridflex.network import admittance
from gridflex.errors import UserError, did_you_mean
from gridflex.network.feeder import Feeder, Generation, Load, Transformer, warn
from gridflex.network.grid import Branch, Grid

SUPPORTED_LOAD_MODELS = (1, 2, 3, 4, 5)
ISLAND_SHUNT_S = 1.0  # to ground at every islanded node, so that Y stays invertible (V = 0 there)
ISLAND_V_BASE_V = 1000.0  # per-unit base of islanded buses the engine left without one


def build_grid(feeder: Feeder, taps: dict[str, int] | None = None) -> Grid:
    """The feeder's :class:`Grid`, with regulator ``taps`` overriding the feeder's own."""
    return GridAssembler(feeder).grid(taps)


@dataclass(frozen=True)
class _Element:
    """A series element's primitive and where its conductors land (``-1`` = ground)."""

    name: str
    kind: str
    terminal_nodes: np.ndarray  # int [n_conductors]
    yprim_si: np.ndarray  # complex [n_conductors, n_conductors]
    n_phases: int
    line_code: str | None = None
    norm_amps: float | None = None
    n_terminals: int = 2

    def branch(self) -> Branch:
        return Branch(
            self.name, self.kind, self.terminal_nodes, self.yprim_si, self.n_phases,
            self.line_code, self.norm_amps, self.n_terminals,
        )


class GridAssembler:
    """Caches the tap-independent part of a feeder's Y; builds grids for any regulator taps."""

    def __init__(self, feeder: Feeder):
        self.feeder = feeder
        self.node_names = list(feeder.node_names)
        self._node_index = {name: i for i, name in enumerate(self.node_names)}
        self._tap_winding = {rc.transformer: rc.tap_winding for rc in feeder.regcontrols}
        self._fixed_elements = self._lines() + self._reactors() + self._fixed_transformers()
        self._capacitors = self._capacitor_elements()
        self.source_nodes, self.source_y_si, self.source_emf_v = self._source()
        self._y_fixed = self._assemble(self._fixed_elements + self._capacitors)
        self._y_fixed[np.ix_(self.source_nodes, self.source_nodes)] += self.source_y_si
        self.islanded_nodes = self._islands()

    # -- public -------------------------------------------------------------------------------
    @property
    def regulated(self) -> list[str]:
        """Names of the transformers whose taps a RegControl moves."""
        return list(self._tap_winding)

    def default_taps(self) -> dict[str, int]:
        """The feeder's own taps (as read: 'file' or 'opendss')."""
        return self.feeder.regulator_taps()

    def y_si(self, taps: dict[str, int] | None = None) -> np.ndarray:
        """Network admittance ``[n, n]`` (S) without loads, at ``taps`` (others: the feeder's)."""
        y = self._y_fixed.copy()
        for element in self._regulator_elements(taps):
            self._scatter(y, element)
        return y

    def grid(self, taps: dict[str, int] | None = None) -> Grid:
        """The full :class:`Grid` at ``taps``."""
        regulators = self._regulator_elements(taps)
        y = self._y_fixed.copy()
        for element in regulators:
            self._scatter(y, element)
        used_taps = {**self.default_taps(), **(taps or {})}
        return Grid(
            name=self.feeder.name,
            node_names=self.node_names,
            v_base_ln_v=self._v_base_ln_v(),
            y_si=y,
            source_nodes=self.source_nodes,
            source_emf_v=self.source_emf_v,
            source_y_si=self.source_y_si,
            **_load_branches(self.feeder, self._node_index, set(self.islanded_nodes)),
            branches=[e.branch() for e in self._fixed_elements + regulators],
            bus_coords={b.name: (b.x, b.y) for b in self.feeder.buses if b.x is not None},
            meta={"taps": used_taps, "feeder": self.feeder.provenance,
                  "islanded_nodes": [self.node_names[k] for k in self.islanded_nodes]},
        )

    # -- element primitives -------------------------------------------------------------------
    def _conductor_nodes(self, terminals: list[tuple[str, list[int]]]) -> np.ndarray:
        """Node index of every conductor of an element's terminals; ``-1`` for ground."""
        return np.array(
            [self._node_index[f"{bus}.{node}"] if node else -1 for bus, nodes in terminals for node in nodes],
            dtype=int,
        )

    def _lines(self) -> list[_Element]:
        freq = self.feeder.base_frequency_hz
        return [
            _Element(
                name=f"line.{line.name}",
                kind="switch" if line.is_switch else "line",
                terminal_nodes=self._conductor_nodes([(line.bus1, line.nodes1), (line.bus2, line.nodes2)]),
                yprim_si=admittance.line_primitive(line, freq),
                n_phases=line.n_phases,
                line_code=line.line_code or None,
                norm_amps=line.norm_amps,
            )
            for line in self.feeder.lines
        ]

    def _reactors(self) -> list[_Element]:
        return [
            _Element(
                name=f"reactor.{reactor.name}",
                kind="reactor",
                terminal_nodes=self._conductor_nodes(
                    [(reactor.bus1, reactor.nodes1), (reactor.bus2, reactor.nodes2)]
                ),
                yprim_si=admittance.reactor_primitive(reactor),
                n_phases=reactor.n_phases,
                norm_amps=reactor.norm_amps,
                n_terminals=2 if reactor.bus2 else 1,
            )
            for reactor in self.feeder.reactors
        ]

    def _islands(self) -> list[int]:
        """Nodes with no path to the source through the network's elements (sorted indices).

        Found on the sparsity of ``y_si`` off the diagonal (entries below 1e-9 S, e.g. open
        conductors' 1e-12 S, do not connect) and the node-to-node load branches (a load's floating
        neutral is held by its phases). Each islanded node gets :data:`ISLAND_SHUNT_S` to ground so
        that Y stays invertible; with its loads served at 0 (as OpenDSS serves them) its voltage is 0.
        """
        from scipy.sparse import csr_matrix  # noqa: PLC0415
        from scipy.sparse.csgraph import connected_components  # noqa: PLC0415

        y = self._y_fixed.copy()
        for element in self._regulator_elements(None):
            self._scatter(y, element)
        rows, cols = np.nonzero(np.abs(y) > 1e-9)
        pairs = []
        for element in [*self.feeder.loads, *self.feeder.generation]:
            ends, _ = load_branch_ends(element)
            pairs += [
                (self._node_index[f"{element.bus}.{a}"], self._node_index[f"{element.bus}.{b}"])
                for a, b in ends if a and b
            ]
        if pairs:
            rows = np.concatenate([rows, np.asarray(pairs, dtype=int)[:, 0]])
            cols = np.concatenate([cols, np.asarray(pairs, dtype=int)[:, 1]])
        graph = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=y.shape)
        _, label = connected_components(graph, directed=False)
        energised = np.isin(label, np.unique(label[self.source_nodes]))
        islanded = np.flatnonzero(~energised)
        if len(islanded):
            self._y_fixed[islanded, islanded] += ISLAND_SHUNT_S
            buses = sorted({self.node_names[k].split(".")[0] for k in islanded})
            names = [self.node_names[k] for k in islanded]
            shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
            warn(
                f"feeder {self.feeder.name!r}: {len(islanded)} nodes on {len(buses)} buses have no "
                f"path to the source (disabled or open elements): {shown}. They are solved at 0 V "
                "and the loads and generation on them served at 0 kW (left out of the grid's load "
                "elements), as OpenDSS does"
            )
        return islanded.tolist()

    def _transformer_element(self, transformer: Transformer, taps_pu: list[float]) -> _Element:
        return _Element(
            name=f"transformer.{transformer.name}",
            kind="transformer",
            terminal_nodes=self._conductor_nodes([(w.bus, w.nodes) for w in transformer.windings]),
            yprim_si=admittance.transformer_primitive(transformer, taps_pu),
            n_phases=transformer.n_phases,
            n_terminals=transformer.n_windings,
        )

    def _fixed_transformers(self) -> list[_Element]:
        return [
            self._transformer_element(t, [w.tap_pu for w in t.windings])
            for t in self.feeder.transformers
            if t.name not in self._tap_winding
        ]

    def _regulator_elements(self, taps: dict[str, int] | None) -> list[_Element]:
        taps = taps or {}
        unknown = set(taps) - set(self._tap_winding)
        if unknown:
            name = sorted(unknown)[0]
            raise UserError(
                f"tap given for {name!r}, which is not a regulated transformer of feeder "
                f"{self.feeder.name!r}{did_you_mean(name, self._tap_winding)}; regulated: "
                f"{', '.join(self._tap_winding) or 'none'}"
            )
        elements = []
        for name, tap_winding in self._tap_winding.items():
            transformer = self.feeder.transformer(name)
            taps_pu = [w.tap_pu for w in transformer.windings]
            if name in taps:
                taps_pu[tap_winding - 1] = transformer.windings[tap_winding - 1].tap_pu_at(taps[name])
            elements.append(self._transformer_element(transformer, taps_pu))
        return elements

    def _capacitor_elements(self) -> list[_Element]:
        freq = self.feeder.base_frequency_hz
        return [
            _Element(
                name=f"capacitor.{cap.name}",
                kind="capacitor",
                terminal_nodes=self._conductor_nodes([(cap.bus1, cap.nodes1), (cap.bus2, cap.nodes2)]),
                yprim_si=admittance.capacitor_primitive(cap, freq, freq),
                n_phases=cap.n_phases,
            )
            for cap in self.feeder.capacitors
        ]

    def _source(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        (source,) = self.feeder.vsources
        if any(source.nodes2) or 0 in source.nodes1:
            raise UserError(
                f"Vsource {source.name!r} of feeder {self.feeder.name!r} must connect bus1's phases "
                "to ground (bus2 = ground), as OpenDSS's default"
            )
        nodes = self._conductor_nodes([(source.bus1, source.nodes1)])
        y_thevenin = np.linalg.inv(admittance.source_impedance_ohm(source))
        return nodes, y_thevenin, admittance.source_emf_v(source)

    # -- assembly -----------------------------------------------------------------------------
    def _assemble(self, elements: list[_Element]) -> np.ndarray:
        n = len(self.node_names)
        y = np.zeros((n, n), dtype=complex)
        for element in elements:
            self._scatter(y, element)
        return y

    @staticmethod
    def _scatter(y: np.ndarray, element: _Element) -> None:
        """Add an element's primitive to Y, dropping grounded conductors."""
        live = element.terminal_nodes >= 0
        nodes = element.terminal_nodes[live]
        np.add.at(y, (nodes[:, None], nodes[None, :]), element.yprim_si[np.ix_(live, live)])

    def _v_base_ln_v(self) -> np.ndarray:
        kv_by_bus = {bus.name: bus.kv_base_ln for bus in self.feeder.buses}
        base = np.array([kv_by_bus[name.split(".")[0]] * 1000.0 for name in self.node_names])
        # CalcVoltageBases leaves only buses it cannot energise (islands, solved at 0 V) without a
        # base; any positive one serves for their per-unit scaling
        return np.where(base > 0.0, base, ISLAND_V_BASE_V)


# ---------------------------------------------------------------------------------------------
# Loads as single-phase branches (grid.py's decomposition)
# ---------------------------------------------------------------------------------------------
def load_branch_ends(load: Load | Generation) -> tuple[list[tuple[int, int]], float]:
    """The (node a, node b) phase numbers of each branch of a load and its rated branch |V| (V).

    Wye: each phase to the load's neutral conductor (normally ground, node 0). Delta: phase to
    next phase; a one-phase delta load sits across its two conductors, which for a load written
    with a single node is the phase and ground, at its line-to-line rating (OpenDSS's semantics);
    a two-phase delta load is an open delta over three conductors, (1, 2) and (2, 3).
    """
    n = load.n_phases
    if load.conn == "wye":
        ends = [(load.nodes[i], load.nodes[n]) for i in range(n)]
        v_nom = load.kv * 1000.0 / (math.sqrt(3.0) if n > 1 else 1.0)
    elif n in (1, 2):
        ends = [(load.nodes[i], load.nodes[i + 1]) for i in range(n)]
        v_nom = load.kv * 1000.0
    elif n == 3:
        ends = [(load.nodes[i], load.nodes[(i + 1) % 3]) for i in range(3)]
        v_nom = load.kv * 1000.0
    else:
        raise UserError(f"load {load.name!r}: a {n}-phase delta load is not supported (1, 2 or 3 phases)")
    return ends, v_nom


def _load_branches(feeder: Feeder, node_index: dict[str, int], islanded: set[int] | None = None) -> dict:
    """The ``load_*`` fields of :class:`Grid` (one entry per single-phase branch).

    Loads first (``status=variable`` ones at the circuit's ``load_mult``; model 3 as model 4 with
    exponents 0 and 2), then generation as negative consumption (model 1 with VLowpu 0: constant Z
    below vminpu). Branches on islanded nodes are served at 0, i.e. left out (an island is never
    joined to an energised node by a load branch, see ``GridAssembler._islands``), and so are
    elements with no branch left.
    """
    islanded = islanded or set()
    rows, fixed, elements = [], [], []

    def add(element, name, kw, kvar, model, cvr_p, cvr_q, vlow, is_fixed):
        branch_rows = _branch_rows(element, name, len(elements), node_index, islanded,
                                   kw, kvar, model, cvr_p, cvr_q, vlow)
        if branch_rows:  # an element wholly on islanded nodes is served at 0: left out
            rows.extend(branch_rows)
            elements.append(name)
            fixed.append(is_fixed)

    for load in feeder.loads:
        if load.model not in SUPPORTED_LOAD_MODELS:
            raise UserError(
                f"load {load.name!r} uses OpenDSS load model {load.model}; gridflex supports "
                f"models {', '.join(map(str, SUPPORTED_LOAD_MODELS))}"
            )
        mult = feeder.load_mult if load.status == "variable" else 1.0
        model, cvr_p, cvr_q = load.model, load.cvr_watts, load.cvr_vars
        if model == 3:  # constant P, quadratic (constant-Z) Q, with model 4's boundary rule
            model, cvr_p, cvr_q = 4, 0.0, 2.0
        add(load, f"load.{load.name}", load.kw * mult, load.kvar * mult, model, cvr_p, cvr_q,
            load.vlowpu, load.status != "variable")
    for gen in feeder.generation:
        add(gen, gen.name, -gen.kw, -gen.kvar, gen.model, 0.0, 0.0, 0.0, True)
    columns = list(zip(*rows, strict=True)) if rows else [()] * 13
    return {
        "load_names": list(columns[0]),
        "load_index": np.array(columns[1], dtype=int),
        "load_node_a": np.array(columns[2], dtype=int),
        "load_node_b": np.array(columns[3], dtype=int),
        "load_p_kw": np.array(columns[4], dtype=float),
        "load_q_kvar": np.array(columns[5], dtype=float),
        "load_v_nom_v": np.array(columns[6], dtype=float),
        "load_model": np.array(columns[7], dtype=int),
        "load_cvr_p": np.array(columns[8], dtype=float),
        "load_cvr_q": np.array(columns[9], dtype=float),
        "load_vmin_pu": np.array(columns[10], dtype=float),
        "load_vmax_pu": np.array(columns[11], dtype=float),
        "load_vlow_pu": np.array(columns[12], dtype=float),
        "load_elements": elements,
        "load_fixed": np.array(fixed, dtype=bool),
    }


def _branch_rows(element, name, index, node_index, islanded, kw, kvar, model, cvr_p, cvr_q, vlow):
    """Grid rows of an element's branches, without those on islanded nodes (0 V, 0 current)."""
    ends, v_nom = load_branch_ends(element)
    rows = []
    for a, b in ends:
        node_a = node_index[f"{element.bus}.{a}"] if a else -1
        node_b = node_index[f"{element.bus}.{b}"] if b else -1
        if node_a in islanded or node_b in islanded:
            continue
        rows.append(
            (
                name, index, node_a, node_b, kw / len(ends), kvar / len(ends), v_nom, model,
                cvr_p, cvr_q, element.vminpu, element.vmaxpu, vlow,
            )
        )
    return rows
