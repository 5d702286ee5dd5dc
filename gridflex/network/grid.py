"""Solver-ready network data ("mathematical model") built from a :class:`gridflex.network.feeder.Feeder`.

A :class:`Grid` is pure numpy, SI units, complex128. It holds everything an exact or linearised
power-flow solver needs and nothing it does not. It is derived from the engineering model and never
written back onto it (docs/design.md §2).

Conventions
-----------
* ``n`` nodes, ordered as in :attr:`Grid.node_names` (lower-case ``"bus.phase"``). Every node of the
  feeder is present, including the source bus and dummy buses.
* ``y_si`` is the network admittance in siemens **without** any load admittance: lines, switches,
  transformers/regulators at the frozen taps, capacitors, the engine's anti-float shunts and the
  source's Thevenin impedance as a Norton admittance at the source bus. The source EMF is the only
  fixed voltage; no node is an ideal slack.
* Loads are decomposed into single-phase *branches* between node ``load_node_a`` and node
  ``load_node_b`` (``-1`` = ground). A three-phase wye load becomes three node-to-ground branches, a
  three-phase delta load three node-to-node branches; each branch carries an equal share of the
  load's kW/kvar. ``load_v_nom_v`` is the rated voltage magnitude across that branch (the load's kV
  for single-phase loads; kV/sqrt(3) for wye and kV for delta multi-phase loads; a "delta" load with
  one node is phase-to-ground at its line-to-line rating, as OpenDSS does).
* Load powers are consumption (positive = drawn from the grid), in kW and kvar at ``load_v_nom_v``.
  Generators, PV systems and storage are load branches with negative power (their elements,
  named ``generator.x``, ``pvsystem.x``, ``storage.x``, are marked in ``load_fixed``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class Branch:
    """A series element whose terminal currents are reported (line, switch, transformer winding set).

    ``yprim_si`` is the element's primitive admittance ``[2m, 2m]`` (SI) over its terminal
    conductors ``terminal_nodes`` (node indices, ``-1`` for a grounded conductor); terminal 1's
    ``m`` conductors come first. Currents into the element at each terminal conductor are
    ``yprim_si @ v[terminal_nodes]``.
    """

    name: str  # e.g. "line.l115", "transformer.reg1a"
    kind: str  # "line" | "switch" | "transformer" | "reactor"
    terminal_nodes: np.ndarray  # int [2m]
    yprim_si: np.ndarray  # complex [2m, 2m]
    n_phases: int
    line_code: str | None = None
    norm_amps: float | None = None
    n_terminals: int = 2  # a w-winding transformer has w; a delta shunt reactor 1


@dataclass
class Grid:
    """Solver-ready feeder (SI, complex128). See the module docstring for conventions."""

    name: str
    node_names: list[str]  # [n] lower-case "bus.phase"
    v_base_ln_v: np.ndarray  # float [n] line-to-neutral base voltage per node (V)
    y_si: np.ndarray  # complex [n, n] network admittance without loads (S)
    source_nodes: np.ndarray  # int [k] nodes of the source bus, phase order
    source_emf_v: np.ndarray  # complex [k] internal EMF of the Vsource (V)
    source_y_si: np.ndarray  # complex [k, k] Thevenin admittance of the Vsource (S)
    # Loads as single-phase branches, all arrays of length n_branches
    load_names: list[str]  # owning load element per branch, e.g. "load.s1a"
    load_index: np.ndarray  # int: index into unique loads (``load_elements``)
    load_node_a: np.ndarray  # int
    load_node_b: np.ndarray  # int, -1 = ground
    load_p_kw: np.ndarray  # float, nominal consumption of this branch
    load_q_kvar: np.ndarray  # float
    load_v_nom_v: np.ndarray  # float, rated |V| across the branch
    load_model: np.ndarray  # int, OpenDSS load model 1, 2, 4 or 5 (model 3 arrives as 4 with exponents 0, 2)
    load_cvr_p: np.ndarray  # float, CVRwatts (model 4)
    load_cvr_q: np.ndarray  # float, CVRvars (model 4)
    load_vmin_pu: np.ndarray  # float, below it OpenDSS models the load as constant Z
    load_vmax_pu: np.ndarray  # float
    load_elements: list[str]  # unique load names, order of load_index
    branches: list[Branch] = field(default_factory=list)
    s_base_kva: float = 1000.0
    # float [n_branches] OpenDSS VLowpu per branch (None: 0.5 everywhere); generation has 0
    load_vlow_pu: np.ndarray | None = None
    # bool [n_load_elements]: elements that load multipliers leave alone (OpenDSS status=fixed or
    # exempt loads, and generation: generators, PV systems, storage, named "generator.x" etc.)
    load_fixed: np.ndarray | None = None
    bus_coords: dict[str, tuple[float, float]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # provenance: taps used, source files, ...

    @property
    def n_nodes(self) -> int:
        return len(self.node_names)

    @property
    def branch_slices(self) -> dict[str, slice]:
        """Branch name -> slice of the terminal-current layout every solver's result uses
        (``result.branch_currents_a[..., slice]``): branches in :attr:`branches` order, each
        one's terminal conductors in ``terminal_nodes`` order (terminal 1, then terminal 2)."""
        sizes = [len(b.terminal_nodes) for b in self.branches]
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        return {b.name: slice(int(starts[k]), int(starts[k + 1])) for k, b in enumerate(self.branches)}

    def node_index(self, name: str) -> int:
        """Index of node ``"bus.phase"`` (case-insensitive)."""
        return self.node_names.index(name.lower())

    def with_load_model(self, model: str) -> Grid:
        """A copy whose loads keep their file models (``"file"``) or are constant power
        (``"constant_pq"``: smooth in the injections, used for learning)."""
        if model == "file":
            return self
        if model != "constant_pq":
            raise ValueError(f"load model must be 'file' or 'constant_pq', got {model!r}")
        return replace(self, load_model=np.ones_like(self.load_model))
