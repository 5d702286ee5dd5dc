"""Regulator taps: the three tap treatments of a scenario and a RegControl-like controller.

A scenario's ``feeder.tap_treatment`` holds everywhere: calibration, training, validation, the
target sidecar, the reference and the test metrics (docs/network.md, "Regulators"):

* ``frozen``: the base-case taps (``feeder.taps``: as written in the file, or settled by
  OpenDSS on the base case), fixed;
* ``settled``: each regulator's median tap under :class:`TapController` over the no-control
  **training** days (:func:`settle_taps`), then fixed;
* ``regulated``: :class:`TapController` inside every rollout, training included. Taps are state,
  piecewise constant, and constants in the backward pass.

Test metrics are also reported with the controller active (``test_regulated``), whatever the
treatment.

**The controller.** Between time steps, and within a step until settled, each regulator compares
its compensated voltage with its band, OpenDSS style::

    V_R = V_winding / PT_ratio - (R + jX) * I_line / CT_primary      (volts on the 120 V base)

with ``R``/``X`` the line-drop compensator settings (volts) and ``I_line`` the current leaving the
regulated winding. If ``|V_R|`` is outside ``vreg +- band/2`` the tap moves by the number of
steps (0.00625 pu each, at most ``max_tap_change``) that brings it back to ``vreg``; the power
flow is re-solved for the samples whose taps moved and the check repeated (at most
``max_control_iterations`` times a step). Time delays (15 s here) are shorter than any gridflex
time step, so every due move happens within the step. Taps persist from step to step; each day
starts at the scenario's base taps.

**Cost.** The control loop runs without autograd (taps are decisions, not functions to
differentiate). A differentiable rollout then solves all its day-steps once more at their
settled taps, warm-started at the loop's solutions (about one fixed-point iteration each), so
the backward pass is one implicit adjoint. Samples at different tap states share one batched
solve: a tap only changes its regulator's primitive, so every tap state is a rank-k update of
one base network (k = the regulators' terminal nodes, 18 on IEEE 123) and each sample's Z-bus
product is the base product plus a k x k correction (Woodbury; the numerics and their
conditioning are in :mod:`gridflex.network.powerflow.zbus`, "Regulator taps per sample"). The control
loop is then one batched solve per control iteration over all days, and the differentiable
re-solve one solve over all day-steps. :class:`TapSolvers` dispatches to that path when the
base solver supports it (``enable_taps``, the ``ac3ph`` solver) and otherwise, or when
``grouped`` is set, to the reference path: one solver (a Z-bus factorisation) per tap state,
cached for the environment's lifetime, one batched solve per distinct state.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

from gridflex.network import admittance
from gridflex.network.feeder import Feeder
from gridflex.network.powerflow import combine_results
from gridflex.network.powerflow.result import replace_rows
from gridflex.network.powerflow.taps import RegulatorTable

TAP_TREATMENTS = ("frozen", "settled", "regulated")


def position_limits(feeder: Feeder, rc) -> tuple[int, int]:
    """Lowest and highest tap position of a RegControl's tap winding."""
    winding = feeder.transformer(rc.transformer).windings[rc.tap_winding - 1]
    steps = round((winding.max_tap_pu - 1.0) / winding.tap_step_pu)
    return (-steps, steps)


def regulator_tables(feeder: Feeder, names: list[str]) -> list[RegulatorTable]:
    """Each regulated transformer's primitive at every position of its tap winding (ordered like
    ``names``), as :class:`~gridflex.network.grid_build.GridAssembler` builds it for given taps."""
    by_name = {rc.transformer: rc for rc in feeder.regcontrols}
    tables = []
    for name in names:
        rc = by_name[name]
        transformer = feeder.transformer(name)
        lo, hi = position_limits(feeder, rc)
        primitives = []
        for position in range(lo, hi + 1):
            taps_pu = [w.tap_pu for w in transformer.windings]
            taps_pu[rc.tap_winding - 1] = transformer.windings[rc.tap_winding - 1].tap_pu_at(position)
            primitives.append(admittance.transformer_primitive(transformer, taps_pu))
        tables.append(RegulatorTable(name, f"transformer.{transformer.name}", lo, np.stack(primitives)))
    return tables


class TapSolvers:
    """Power flows at per-sample regulator tap states ``tuple[int, ...]`` (ordered like ``names``).

    Batched path (after :meth:`enable_batched`): one solver at the base taps solves any mix of
    tap states in one call (see the module docstring). Reference path (``grouped = True`` or no
    batched solver): solvers per tap state, built on first use by
    ``factory(taps: dict[str, int])`` and kept; one solve per distinct state.
    """

    def __init__(self, names: list[str], factory: Callable[[dict[str, int]], object],
                 known: dict[tuple[int, ...], object] | None = None):
        self.names = list(names)
        self._factory = factory
        self._solvers: dict[tuple[int, ...], object] = dict(known or {})  # e.g. the base taps' solver
        self.batched = None  # a solver whose solve() takes per-sample ``taps``
        self.grouped = False  # force the per-state reference path
        self._batched_tried = False
        self._tables: list[RegulatorTable] | None = None

    def __len__(self) -> int:
        """Distinct tap states solved so far."""
        states = set(self._solvers)
        bank = getattr(getattr(self.batched, "network", None), "tap_bank", None)
        if bank is not None:
            states |= bank.states()
        return len(states)

    def tables(self, feeder: Feeder) -> list[RegulatorTable]:
        """:func:`regulator_tables` of ``feeder`` for :attr:`names` (computed once)."""
        if self._tables is None:
            self._tables = regulator_tables(feeder, self.names)
        return self._tables

    def enable_batched(self, solver, feeder: Feeder, base_taps: dict[str, int]) -> bool:
        """Use ``solver`` (whose grid has the regulators at ``base_taps``) for every tap state,
        if it supports per-sample taps (``enable_taps``); once per instance. True when on."""
        if not self._batched_tried:
            self._batched_tried = True
            if self.names and getattr(type(solver), "supports_taps", False):  # NetworkSolver capability
                base = {**feeder.regulator_taps(), **base_taps}
                try:
                    solver.enable_taps(self.tables(feeder), [base[n] for n in self.names])
                except ValueError as error:  # e.g. a regulator the solver's grid models otherwise
                    warnings.warn(f"per-sample taps unavailable ({error}); regulated power flows "
                                  "fall back to one solver per tap state", RuntimeWarning, stacklevel=2)
                else:
                    self.batched = solver
        return self.batched is not None

    def __call__(self, taps: tuple[int, ...]):
        if taps not in self._solvers:
            self._solvers[taps] = self._factory(dict(zip(self.names, (int(t) for t in taps))))
        return self._solvers[taps]

    def solve(self, taps: np.ndarray, load_scale: torch.Tensor, p_kw: torch.Tensor, q_kvar: torch.Tensor,
              warm=None):
        """Solve samples ``[S, ...]`` each at its own tap state ``taps [S, n_reg]``: one batched
        solve per distinct state, rows reassembled in the input order (or one solve for all on
        the batched path). ``warm``: a result or complex voltages ``[S, n]`` to start from."""
        if self.batched is not None and not self.grouped:
            if hasattr(warm, "v_pu"):
                warm = warm.v_pu.detach()
            taps = torch.as_tensor(np.array(taps, dtype=np.int64), device=p_kw.device)  # a copy: views may be read-only
            return self.batched.solve(load_scale, p_kw, q_kvar, warm_start=warm, taps=taps)
        groups: dict[tuple[int, ...], list[int]] = {}
        for row, state in enumerate(map(tuple, np.asarray(taps).tolist())):
            groups.setdefault(state, []).append(row)
        if hasattr(warm, "v_pu"):
            warm = warm.v_pu.detach()
        parts, order = [], []
        for state, rows in groups.items():
            idx = torch.as_tensor(rows, device=p_kw.device)
            start = None if warm is None else warm[idx]
            parts.append(self(state).solve(load_scale[idx], p_kw[idx], q_kvar[idx], warm_start=start))
            order.extend(rows)
        if len(parts) == 1:
            return parts[0]
        inverse = torch.as_tensor(np.argsort(np.asarray(order)), device=p_kw.device)
        return combine_results(parts, "cat", inverse)


class TapController:
    """Moves regulator taps per sample (day) between power flows; see the module docstring.

    ``start_taps`` (default: the feeder's own) are every day's taps at step 0. ``solvers`` may be
    shared between controllers (an environment keeps one for its lifetime).
    """

    def __init__(
        self,
        feeder: Feeder,
        node_names: list[str],
        solvers: TapSolvers | Callable[[dict[str, int]], object],
        batch: int,
        max_control_iterations: int = 10,
        start_taps: dict[str, int] | None = None,
    ):
        self.regs = list(feeder.regcontrols)
        self.names = [rc.transformer for rc in self.regs]
        if getattr(feeder, "capcontrols", None):
            from gridflex.network.feeder import warn  # noqa: PLC0415

            warn(
                f"feeder {feeder.name!r} has {len(feeder.capcontrols)} CapControl(s) "
                f"({', '.join(c.name for c in feeder.capcontrols[:5])}"
                f"{', ...' if len(feeder.capcontrols) > 5 else ''}): the tap controller moves "
                "regulator taps only; every capacitor stays frozen in the state the feeder was "
                f"read with (taps mode {feeder.provenance.get('taps', '?')!r}: 'opendss' = as the "
                "engine's base-case solve settled them, 'file' = as written)"
            )
        base = {**feeder.regulator_taps(), **(start_taps or {})}
        self.taps = np.tile(np.array([base[n] for n in self.names], dtype=np.int64), (batch, 1))
        self.solvers = solvers if isinstance(solvers, TapSolvers) else TapSolvers(self.names, solvers)
        self._history: list[np.ndarray] = []
        self.max_control_iterations = max_control_iterations
        self.solves = 0  # power flows of single samples run by the control loop
        index = {name: k for k, name in enumerate(node_names)}
        self._node, self._conductor = [], []
        for rc in self.regs:
            transformer = feeder.transformer(rc.transformer)
            winding = transformer.windings[rc.winding - 1]
            phase = int(rc.pt_phase) if str(rc.pt_phase).isdigit() else 1
            self._node.append(index[f"{winding.bus}.{winding.nodes[phase - 1]}"])
            n_conductors = len(winding.nodes)
            self._conductor.append((rc.winding - 1) * n_conductors + (phase - 1))
        self._steps_limit = np.array([rc.max_tap_change for rc in self.regs])
        limits = np.array([self._position_limits(feeder, rc) for rc in self.regs]).reshape(-1, 2)
        self._lo, self._hi = limits[:, 0], limits[:, 1]
        # the regulated conductor's row of each regulator's primitive at every position, and the
        # regulator's terminal nodes (ground/padding = n): I_line without all branch currents
        tables = self.solvers.tables(feeder)
        width = max(t.yprim_si.shape[-1] for t in tables)
        self._line_rows = np.zeros((len(tables), max(len(t.yprim_si) for t in tables), width), dtype=complex)
        self._terminals = np.full((len(tables), width), len(node_names), dtype=np.int64)
        for k, (rc, table) in enumerate(zip(self.regs, tables)):
            transformer = feeder.transformer(rc.transformer)
            term = [index[f"{w.bus}.{node}"] if node else len(node_names)
                    for w in transformer.windings for node in w.nodes]
            self._terminals[k, : len(term)] = term
            self._line_rows[k, : len(table.yprim_si), : len(term)] = table.yprim_si[:, self._conductor[k], :]
        self._pt_ratio = np.array([rc.pt_ratio for rc in self.regs], dtype=float)
        self._ldc = np.array([complex(rc.r_v, rc.x_v) for rc in self.regs])
        self._ct = np.array([rc.ct_primary_a for rc in self.regs], dtype=float)
        self._vreg = np.array([rc.vreg_v for rc in self.regs], dtype=float)
        self._band = np.array([rc.band_v for rc in self.regs], dtype=float)
        self._on = None  # the tables above as tensors on the flows' device (first _moves)

    @staticmethod
    def _position_limits(feeder: Feeder, rc) -> tuple[int, int]:
        return position_limits(feeder, rc)

    def history(self) -> np.ndarray:
        """Taps used at each step ``[B, T, n_regulators]``."""
        if not self._history:
            return np.zeros((self.taps.shape[0], 0, len(self.names)), dtype=np.int64)
        return np.stack(self._history, 1)

    @torch.no_grad()
    def solve_step(self, load_scale, p_kw, q_kvar, warm=None):
        """Settle the taps of one step for all samples (no autograd) and return the power flow
        at the settled taps ``[B, ...]``. Only samples whose taps moved are solved again."""
        load_scale, p_kw, q_kvar = load_scale.detach(), p_kw.detach(), q_kvar.detach()
        flow = self.solvers.solve(self.taps, load_scale, p_kw, q_kvar, warm)
        self.solves += p_kw.shape[0]
        for _ in range(self.max_control_iterations):
            new_taps = np.clip(self.taps + self._moves(flow), self._lo, self._hi)
            moved = np.flatnonzero((new_taps != self.taps).any(1))
            if moved.size == 0:
                break
            self.taps = new_taps
            idx = torch.as_tensor(moved, device=p_kw.device)
            redo = self.solvers.solve(self.taps[moved], load_scale[idx], p_kw[idx], q_kvar[idx],
                                      flow.v_pu[idx])
            self.solves += moved.size
            flow = redo if moved.size == p_kw.shape[0] else replace_rows(flow, idx, redo)
        self._history.append(self.taps.copy())
        return flow

    def _moves(self, flow) -> np.ndarray:
        """Tap steps each regulator wants ``[rows, n_regulators]`` (all regulators at once).

        ``flow``'s rows are at :attr:`taps`. The line current is the regulated conductor's
        terminal current, its primitive row at the row's tap times the terminal voltages (the
        same product as ``flow.branch_currents_a``, without the other branches)."""
        if self._on is None or self._on["nodes"].device != flow.v_pu.device:
            cplx = dict(dtype=flow.v_pu.dtype, device=flow.v_pu.device)
            real = dict(dtype=flow.v_base_v.dtype, device=flow.v_pu.device)
            self._on = {
                "nodes": torch.as_tensor(self._node, device=flow.v_pu.device),
                "terminals": torch.as_tensor(self._terminals, device=flow.v_pu.device),
                "line_rows": torch.as_tensor(self._line_rows, **cplx),
                "regs": torch.arange(len(self.regs), device=flow.v_pu.device),
                "pt_ratio": torch.as_tensor(self._pt_ratio, **real),
                "ldc": torch.as_tensor(self._ldc, **cplx),
                "ct": torch.as_tensor(self._ct, **real),
            }
        on = self._on
        v_pu = flow.v_pu.detach()
        v_volts = v_pu * flow.v_base_v
        v_t = torch.cat([v_volts, v_volts.new_zeros(v_volts.shape[0], 1)], 1)
        position = torch.as_tensor(self.taps - self._lo, device=v_pu.device)
        line = on["line_rows"][on["regs"], position]  # [rows, n_reg, width]
        current = -(line * v_t[:, on["terminals"]]).sum(-1)
        v_r = v_volts[:, on["nodes"]] / on["pt_ratio"] - on["ldc"] * current / on["ct"]
        error = v_r.abs().cpu().numpy() - self._vreg
        step_v = 0.00625 * self._vreg
        wanted = -np.round(error / step_v).astype(np.int64)
        outside = np.abs(error) > self._band / 2
        wanted = np.where(outside & (wanted == 0), -np.sign(error).astype(np.int64), wanted)
        wanted = np.clip(np.where(outside, wanted, 0), -self._steps_limit, self._steps_limit)
        return wanted.reshape(-1, len(self.regs))


def median_taps(history: np.ndarray, names: list[str]) -> dict[str, int]:
    """Each regulator's median tap over all samples and steps of ``history [..., n_reg]``,
    rounded to a position (half steps round to even, numpy's rule)."""
    flat = np.asarray(history).reshape(-1, len(names))
    return {name: int(np.round(np.median(flat[:, k]))) for k, name in enumerate(names)}
