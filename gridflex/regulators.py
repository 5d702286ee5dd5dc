"""A RegControl-like tap controller for evaluation (outside every gradient).

Between time steps, and within a step until settled, each regulator compares its compensated
voltage with its band, OpenDSS style:

    V_R = V_winding / PT_ratio - (R + jX) * I_line / CT_primary      (volts on the 120 V base)

with ``R``/``X`` the line-drop compensator settings (volts) and ``I_line`` the current leaving the
regulated winding. If ``|V_R|`` is outside ``vreg +- band/2`` the tap moves by the number of
steps (0.00625 pu each, at most ``max_tap_change``) that brings it back to ``vreg``; the power
flow is re-solved and the check repeated (at most ``max_control_iterations`` times a step).
Time delays (15 s here) are shorter than any gridflex time step, so every due move happens
within the step. Taps persist from step to step and day by day start at the feeder's frozen
taps. Samples (days) with different taps are solved with solvers cached per tap state.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from gridflex.env import combine_flows
from gridflex.feeder import Feeder


class TapController:
    """Moves regulator taps per sample (day) between power flows; see the module docstring."""

    def __init__(
        self,
        feeder: Feeder,
        node_names: list[str],
        solver_factory: Callable[[dict[str, int]], object],
        batch: int,
        max_control_iterations: int = 10,
    ):
        self.regs = list(feeder.regcontrols)
        self.names = [rc.transformer for rc in self.regs]
        base = feeder.regulator_taps()
        self.taps = np.tile(np.array([base[n] for n in self.names], dtype=np.int64), (batch, 1))
        self._factory = solver_factory
        self._solvers: dict[tuple[int, ...], object] = {}
        self._history: list[np.ndarray] = []
        self.max_control_iterations = max_control_iterations
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
        self._tap_range = [self._position_limits(feeder, rc) for rc in self.regs]

    @staticmethod
    def _position_limits(feeder: Feeder, rc) -> tuple[int, int]:
        winding = feeder.transformer(rc.transformer).windings[rc.tap_winding - 1]
        steps = round((winding.max_tap_pu - 1.0) / winding.tap_step_pu)
        return (-steps, steps)

    def solver(self, taps: tuple[int, ...]):
        if taps not in self._solvers:
            self._solvers[taps] = self._factory(dict(zip(self.names, (int(t) for t in taps))))
        return self._solvers[taps]

    def history(self) -> np.ndarray:
        """Taps used at each step ``[B, T, n_regulators]``."""
        return np.stack(self._history, 1) if self._history else np.zeros((self.taps.shape[0], 0, len(self.names)), int)

    def _solve_grouped(self, load_scale, p_kw, q_kvar):
        """Solve every sample with the solver of its current taps; returns results per group."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for b, row in enumerate(self.taps):
            groups.setdefault(tuple(int(x) for x in row), []).append(b)
        results = []
        for taps, rows in groups.items():
            idx = torch.as_tensor(rows, device=p_kw.device)
            flow = self.solver(taps).solve(load_scale[idx], p_kw[idx], q_kvar[idx])
            results.append((rows, flow))
        return results

    def solve_step(self, load_scale, p_kw, q_kvar):
        """Power flow of one step for all samples with tap control; returns (flow, n_solves)."""
        solves = 0
        for _ in range(self.max_control_iterations):
            groups = self._solve_grouped(load_scale, p_kw, q_kvar)
            solves += p_kw.shape[0]
            moves = np.zeros_like(self.taps)
            for rows, flow in groups:
                moves[rows] = self._moves(flow)
            new_taps = self._clip(self.taps + moves)
            if np.array_equal(new_taps, self.taps):
                break
            self.taps = new_taps
        self._history.append(self.taps.copy())
        return _merge(groups, p_kw.shape[0]), solves

    def _moves(self, flow) -> np.ndarray:
        """Tap steps each regulator wants ``[rows, n_regulators]``."""
        v_base = flow.v_base_v
        moves = []
        for k, rc in enumerate(self.regs):
            v_volts = flow.v_pu[:, self._node[k]] * v_base[self._node[k]]
            current = -flow.branch_currents_a[:, flow.branch_slices[self._branch[k]]][:, self._conductor[k]]
            v_r = v_volts / rc.pt_ratio - complex(rc.r_v, rc.x_v) * current / rc.ct_primary_a
            error = (v_r.abs() - rc.vreg_v).cpu().numpy()
            step_v = 0.00625 * rc.vreg_v
            wanted = -np.round(error / step_v).astype(np.int64)
            outside = np.abs(error) > rc.band_v / 2
            wanted = np.where(outside & (wanted == 0), -np.sign(error).astype(np.int64), wanted)
            wanted = np.clip(np.where(outside, wanted, 0), -self._steps_limit[k], self._steps_limit[k])
            moves.append(wanted)
        return np.stack(moves, 1)

    def _clip(self, taps: np.ndarray) -> np.ndarray:
        lo = np.array([r[0] for r in self._tap_range])
        hi = np.array([r[1] for r in self._tap_range])
        return np.clip(taps, lo, hi)


def _merge(groups, batch: int):
    """Reassemble per-group results into one result ordered like the batch."""
    if len(groups) == 1:
        return groups[0][1]
    order = np.concatenate([rows for rows, _ in groups])
    inverse = torch.as_tensor(np.argsort(order), device=groups[0][1].v_pu.device)
    return combine_flows([flow for _, flow in groups], "cat", inverse)
