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
differentiate). A differentiable rollout then solves all its day-steps once more, grouped by tap
state and warm-started at the loop's solutions (about one fixed-point iteration each), so the
backward pass is one implicit adjoint per tap state rather than one per step. Solvers (a Z-bus
factorisation) are cached per tap state for the lifetime of the environment
(:class:`TapSolvers`), so later rollouts reuse them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from gridflex.feeder import Feeder
from gridflex.powerflow import combine_results, map_batch

TAP_TREATMENTS = ("frozen", "settled", "regulated")


class TapSolvers:
    """Solvers per regulator tap state ``tuple[int, ...]`` (ordered like ``names``), built on
    first use by ``factory(taps: dict[str, int])`` and kept."""

    def __init__(self, names: list[str], factory: Callable[[dict[str, int]], object]):
        self.names = list(names)
        self._factory = factory
        self._solvers: dict[tuple[int, ...], object] = {}

    def __len__(self) -> int:
        return len(self._solvers)

    def __call__(self, taps: tuple[int, ...]):
        if taps not in self._solvers:
            self._solvers[taps] = self._factory(dict(zip(self.names, (int(t) for t in taps))))
        return self._solvers[taps]

    def solve(self, taps: np.ndarray, load_scale: torch.Tensor, p_kw: torch.Tensor, q_kvar: torch.Tensor,
              warm=None):
        """Solve samples ``[S, ...]`` each at its own tap state ``taps [S, n_reg]``: one batched
        solve per distinct state, rows reassembled in the input order. ``warm``: a result or
        complex voltages ``[S, n]`` to start from."""
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
        base = {**feeder.regulator_taps(), **(start_taps or {})}
        self.taps = np.tile(np.array([base[n] for n in self.names], dtype=np.int64), (batch, 1))
        self.solvers = solvers if isinstance(solvers, TapSolvers) else TapSolvers(self.names, solvers)
        self._history: list[np.ndarray] = []
        self.max_control_iterations = max_control_iterations
        self.solves = 0  # power flows of single samples run by the control loop
        index = {name: k for k, name in enumerate(node_names)}
        self._node, self._branch, self._conductor = [], [], []
        for rc in self.regs:
            transformer = feeder.transformer(rc.transformer)
            winding = transformer.windings[rc.winding - 1]
            phase = int(rc.pt_phase) if str(rc.pt_phase).isdigit() else 1
            self._node.append(index[f"{winding.bus}.{winding.nodes[phase - 1]}"])
            self._branch.append(f"transformer.{transformer.name}")
            n_conductors = len(winding.nodes)
            self._conductor.append((rc.winding - 1) * n_conductors + (phase - 1))
        self._steps_limit = np.array([rc.max_tap_change for rc in self.regs])
        limits = np.array([self._position_limits(feeder, rc) for rc in self.regs]).reshape(-1, 2)
        self._lo, self._hi = limits[:, 0], limits[:, 1]

    @staticmethod
    def _position_limits(feeder: Feeder, rc) -> tuple[int, int]:
        winding = feeder.transformer(rc.transformer).windings[rc.tap_winding - 1]
        steps = round((winding.max_tap_pu - 1.0) / winding.tap_step_pu)
        return (-steps, steps)

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
            kept = np.setdiff1d(np.arange(p_kw.shape[0]), moved)
            if kept.size == 0:
                flow = redo
                continue
            order = np.concatenate([kept, moved])
            inverse = torch.as_tensor(np.argsort(order), device=p_kw.device)
            kept_flow = map_batch(flow, lambda t, k=torch.as_tensor(kept, device=p_kw.device): t[k])
            flow = combine_results([kept_flow, redo], "cat", inverse)
        self._history.append(self.taps.copy())
        return flow

    def _moves(self, flow) -> np.ndarray:
        """Tap steps each regulator wants ``[rows, n_regulators]``."""
        v_base = flow.v_base_v
        moves = []
        for k, rc in enumerate(self.regs):
            v_volts = flow.v_pu[:, self._node[k]] * v_base[self._node[k]]
            current = -flow.branch_currents_a[:, flow.branch_slices[self._branch[k]]][:, self._conductor[k]]
            v_r = v_volts / rc.pt_ratio - complex(rc.r_v, rc.x_v) * current / rc.ct_primary_a
            error = (v_r.abs() - rc.vreg_v).detach().cpu().numpy()
            step_v = 0.00625 * rc.vreg_v
            wanted = -np.round(error / step_v).astype(np.int64)
            outside = np.abs(error) > rc.band_v / 2
            wanted = np.where(outside & (wanted == 0), -np.sign(error).astype(np.int64), wanted)
            wanted = np.clip(np.where(outside, wanted, 0), -self._steps_limit[k], self._steps_limit[k])
            moves.append(wanted)
        return np.stack(moves, 1).reshape(-1, len(self.regs))


def median_taps(history: np.ndarray, names: list[str]) -> dict[str, int]:
    """Each regulator's median tap over all samples and steps of ``history [..., n_reg]``,
    rounded to a position (half steps round to even, numpy's rule)."""
    flat = np.asarray(history).reshape(-1, len(names))
    return {name: int(np.round(np.median(flat[:, k]))) for k, name in enumerate(names)}
