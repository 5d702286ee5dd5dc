"""Sparse linearised AC network equations for convex programs (the reference's network model).

The dense sensitivities of :mod:`gridflex.network.linearised` (|V|, currents against every nodal
injection) couple every injection with every monitored quantity at every step; in a day-long OPF
the devices also couple the steps, and the interior-point factorisation of the two together is
dense over all nodal injections x steps (IEEE 123 x 24 steps: 4,560 columns, ~4 s per Clarabel
iteration). Written in the node voltages instead, the same first-order model is sparse:

    Y v + J_t (v - v*_t) + W_t (s - s*_t) = i_norton - drawn(v*_t, s*_t)       (per step t)

over real-stacked voltages ``x = [Re v; Im v]`` of **all** ``n`` nodes (pu), with ``Y`` the
per-unit admittance (source Norton admittance inside), ``drawn(v, s)`` the loads' and devices'
drawn currents of :func:`gridflex.network.powerflow.zbus.drawn_currents` at the iteration nodes,
``J_t`` its local Jacobian in ``x`` and ``W_t`` its Jacobian in the device powers
``s = [p_kw; q_kvar]``, both at step ``t``'s operating point ``(v*_t, s*_t)`` (an AC solution).
Outputs are sparse and linear in ``x``:

* monitored magnitudes ``|u| ~ Re(conj(u*) u) / |u*|`` (``u = v_a`` or ``(v_a - v_b)/sqrt 3``),
  exact at ``u*`` and homogeneous, so no constant;
* branch currents ``I = Yprim v`` (A), exactly linear;
* source active power ``P ~ P* + grad P* . (x_src - x*_src)`` (kW).

Everything that depends on the operating point is a **value array** ``[nnz, T]`` on a **fixed
sparsity pattern** (computed once from the network's structure), so a convex program can carry
it as a cvxpy Parameter: ``rows @ (values * (cols @ x))`` is DPP and sparse. Around an AC solution
of the plan this is a Newton step of the AC OPF (sequential convex programming).

**Stiff branches.** A closed switch is a 1e6 S conductance (OpenDSS's model) and a regulator a
transformer of 1e-5 pu impedance: their rows in ``Y`` are 1e3-1e4 times a line's and the
current balance at their terminals is a difference of nearly equal terms, on which an
interior-point solver fails. The convex model therefore eliminates every such element as ideal:
its terminal-2 voltages follow terminal 1's through the element's own no-current relation
``v_2 = R v_1`` (``R = -Y_22^-1 Y_21``: identity for a switch, the tap ratio for a regulator), so
``v = merge @ z``; the current balances are combined as ``merge^H @ rows``, in which the element's
admittance cancels (its two terminal currents are related by ``I_1 = -R^H I_2``, power
conservation). The neglected series drop is the element's impedance times its current (< 1e-4 pu
for the IEEE feeders' regulators, ~1e-8 pu for switches); the AC replay sees the exact network.
The attributes ``y``, ``jac_rows``, ``jac_cols``, ``dev_rows``, ``mag_cols``, ``current`` and
``src_select`` are the merged forms for the convex program (variables ``z [2 n_z, T]``);
:meth:`NetworkEquations.at` returns values of the unmerged patterns, whose value arrays apply
unchanged.

Pure numpy/scipy/torch; no cvxpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
import torch

from gridflex.network.grid import Grid
from gridflex.network.powerflow import zbus


@dataclass
class SparsePattern:
    """A per-step sparse linear map ``y_t = rows @ (values[:, t] * (cols @ z_t))``.

    ``rows [m, nnz]`` scatters entries to output rows and ``cols [nnz, k]`` gathers the input of
    each entry (both 0/1 CSR); ``row``, ``col`` hold each entry's position in the dense ``[m, k]``.
    """

    row: np.ndarray  # long [nnz]
    col: np.ndarray  # long [nnz]
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        return len(self.row)

    @cached_property
    def rows(self) -> sp.csr_matrix:
        return sp.csr_matrix((np.ones(self.nnz), (self.row, np.arange(self.nnz))), shape=(self.shape[0], self.nnz))

    @cached_property
    def cols(self) -> sp.csr_matrix:
        return sp.csr_matrix((np.ones(self.nnz), (np.arange(self.nnz), self.col)), shape=(self.nnz, self.shape[1]))

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> "SparsePattern":
        row, col = np.nonzero(mask)
        return cls(row, col, mask.shape)

    def values(self, dense: np.ndarray) -> np.ndarray:
        """Entries of a batch of dense matrices ``[T, m, k]`` -> ``[nnz, T]``; entries outside
        the pattern must be zero."""
        vals = dense[:, self.row, self.col].T
        outside = np.abs(dense).sum(0)
        outside[self.row, self.col] = 0.0
        if outside.max(initial=0.0) > 1e-12 * max(1.0, float(np.abs(dense).max(initial=0.0))):
            raise ValueError("a Jacobian entry falls outside the precomputed sparsity pattern")
        return np.ascontiguousarray(vals)


@dataclass
class StepLinearisation:
    """Operating-point values of :class:`NetworkEquations` for ``T`` steps (module docstring).

    Equations ``y_x @ x + J (x) + W (s) = rhs``: ``jac_values [nnz_J, T]``, ``dev_values
    [nnz_W, T]`` (per kW / kvar), ``rhs [2n, T]``; magnitudes ``mag_values [nnz_M, T]``; source
    active power ``p_src ~ src_grad . x_src + src_const`` (kW): ``src_grad [2k, T]``,
    ``src_const [T]``. ``x [2n, T]``, ``vm_pu [m, T]``, ``currents_a [r, T]`` (complex) and
    ``p_src_kw [T]`` are the operating point's own values (exact AC when the point is an AC
    solution).
    """

    jac_values: np.ndarray
    dev_values: np.ndarray
    rhs: np.ndarray
    mag_values: np.ndarray
    src_grad: np.ndarray
    src_const: np.ndarray
    x: np.ndarray
    vm_pu: np.ndarray
    currents_a: np.ndarray
    p_src_kw: np.ndarray


class NetworkEquations:
    """Structure (constants and patterns) of the sparse linearised equations of one network.

    Args:
        net: the Z-bus network (float64), defines the iteration nodes, loads and devices.
        grid: its :class:`~gridflex.network.grid.Grid` (admittance ``y_si``).
        node_a, node_b: monitored magnitudes (``node_b = -1``: line-to-ground), as in
            :class:`gridflex.network.constraints.VoltageMonitor`.
        current_columns: terminal-current columns (as in ``PowerFlowResult.branch_currents_a``)
            whose phasors are modelled (rated conductors).
        stiff_pu: series elements with a larger per-unit admittance are eliminated as ideal
            (module docstring, "Stiff branches"); lines are ~10-500 pu, switches 5e6, regulators 2e5.
    """

    def __init__(self, net: zbus.ZBusNetwork, grid: Grid, node_a: np.ndarray, node_b: np.ndarray,
                 current_columns: np.ndarray, stiff_pu: float = 1e4):
        if net.dtype != torch.float64:
            raise ValueError("NetworkEquations needs a float64 network")
        self.net = net
        n = self.n = len(net.node_names)
        self.s_base_kva = net.s_base_va / 1e3
        v_base = np.asarray(grid.v_base_ln_v, dtype=float)
        y_pu = grid.y_si * np.outer(v_base, v_base) / net.s_base_va
        self.y_real = _real_stack(sp.csr_matrix(np.where(np.abs(y_pu) > 0, y_pu, 0)))  # [2n, 2n]
        self.i_norton = y_pu @ net.w_all.cpu().numpy()  # the Norton injection: Y w = i_norton
        self.iter_nodes = net.iter_nodes.cpu().numpy()
        self.node_a = np.asarray(node_a, dtype=np.int64)
        self.node_b = np.asarray(node_b, dtype=np.int64)
        self.source_nodes = net.source_nodes.cpu().numpy()
        # branch currents (A) are linear in v (pu): unit voltages at every node give the map
        eye = torch.eye(n, dtype=torch.complex128, device=net.device)
        c_all = zbus.terminal_currents_a(net, eye).cpu().numpy().T  # [n_cols, n]
        c_mon = c_all[np.asarray(current_columns, dtype=np.int64)]
        c_mon = np.where(np.abs(c_mon) > 1e-12 * np.abs(c_mon).max(initial=1.0), c_mon, 0)
        self.current_map = sp.csr_matrix(c_mon)  # complex [r, n]
        self.current_real = _real_stack(self.current_map)  # [2r, 2n]: [Re I; Im I]
        # sparsity patterns from the structure (a generic point: loads, devices and voltages all
        # non-trivial, so no structural entry vanishes by accident)
        rng = np.random.default_rng(0)
        n_i, n_j = net.n_iter, net.n_inj
        v = torch.as_tensor(np.exp(1j * rng.uniform(-0.3, 0.3, (1, n_i))) * rng.uniform(0.9, 1.1, (1, n_i)))
        scale = torch.as_tensor(rng.uniform(0.5, 1.5, (1, net.n_loads)))
        s_dev = torch.as_tensor(rng.uniform(0.1, 1.0, (1, n_j)) + 1j * rng.uniform(0.1, 1.0, (1, n_j)))
        jac, dev = self._local_jacobians(v, scale, s_dev)
        self.jac_pattern = SparsePattern.from_mask(np.abs(jac[0]) > 0)
        self.dev_pattern = SparsePattern.from_mask(np.abs(dev[0]) > 0)
        m = len(self.node_a)
        mask = np.zeros((m, 2 * n), dtype=bool)
        for nodes in (self.node_a, self.node_b):
            ok = nodes >= 0
            mask[np.flatnonzero(ok), nodes[ok]] = True
            mask[np.flatnonzero(ok), n + nodes[ok]] = True
        self.mag_pattern = SparsePattern.from_mask(mask)
        k = len(self.source_nodes)
        self.src_cols = np.concatenate([self.source_nodes, n + self.source_nodes])  # rows of x, [2k]
        self.n_src = k
        # merged forms for the convex program (module docstring, "Switches")
        self.merge = _real_stack(_stiff_merge(grid, y_pu, stiff_pu))  # [2n, 2 n_z]
        mt = self.merge.T.tocsr()
        self.n_merged = self.merge.shape[1] // 2
        self.y = _drop_cancelled(mt @ self.y_real @ self.merge)
        self.jac_rows, self.jac_cols = mt @ self.jac_pattern.rows, self.jac_pattern.cols @ self.merge
        self.dev_rows, self.dev_cols = mt @ self.dev_pattern.rows, self.dev_pattern.cols
        self.mag_rows, self.mag_cols = self.mag_pattern.rows, self.mag_pattern.cols @ self.merge
        self.current = self.current_real @ self.merge  # [2r, 2 n_z]
        self.src_select = sp.csr_matrix((np.ones(2 * k), (np.arange(2 * k), self.src_cols)), shape=(2 * k, 2 * n)) @ self.merge

    def merged_offsets(self, point: StepLinearisation, p_kw: np.ndarray, q_kvar: np.ndarray):
        """Zero-order corrections that make the merged model exact at the operating point.

        Solves the merged equations at the point's own device powers ``[T, n_inj]`` (one sparse
        solve per step) and returns ``(v_offset [m, T] pu, i_offset [r, T] complex A,
        p_offset [T] kW)``: the operating point's magnitudes, currents and source power minus
        the merged model's. They are the series drops of the eliminated elements (~1e-5 pu)."""
        from scipy.sparse.linalg import spsolve

        s = np.concatenate([p_kw, q_kvar], axis=1)
        z = np.empty((self.merge.shape[1], s.shape[0]))
        mt = self.merge.T
        for t in range(s.shape[0]):
            a = self.y + self.jac_rows @ sp.diags(point.jac_values[:, t]) @ self.jac_cols
            b = mt @ (point.rhs[:, t] - self.dev_pattern.rows @ (point.dev_values[:, t] * (self.dev_cols @ s[t])))
            z[:, t] = spsolve(a.tocsc(), b)
        vm = self.mag_rows @ (point.mag_values * (self.mag_cols @ z))
        r = self.current_map.shape[0]
        i_ri = self.current @ z
        p_src = (point.src_grad * (self.src_select @ z)).sum(0) + point.src_const
        return point.vm_pu - vm, point.currents_a - (i_ri[:r] + 1j * i_ri[r:]), point.p_src_kw - p_src

    # ------------------------------------------------------------------ local Jacobians
    def _local_jacobians(self, v_iter: torch.Tensor, load_scale: torch.Tensor, s_dev_pu: torch.Tensor):
        """Jacobians of the drawn currents (real-stacked, embedded in all ``2n`` node rows):
        in the node voltages ``[T, 2n, 2n]`` and in the device powers (kW, kvar) ``[T, 2n, 2 n_inj]``."""
        net, n = self.net, self.n
        t_steps, n_i, n_j = v_iter.shape[0], net.n_iter, net.n_inj

        def drawn(xv: torch.Tensor, ps: torch.Tensor) -> torch.Tensor:  # [T, 2 n_I], [T, 2 n_inj] -> [2 n_I]
            vv = torch.complex(xv[:, :n_i], xv[:, n_i:])
            sd = torch.complex(ps[:, :n_j], ps[:, n_j:]) / self.s_base_kva
            c = zbus.injection_coefficients(net, t_steps, load_scale, sd)
            d = zbus.drawn_currents(net, vv, c)
            return torch.cat([d.real, d.imag], dim=1).sum(0)  # rows are independent: sum = stacked Jacobians

        xv = torch.cat([v_iter.real, v_iter.imag], dim=1)
        ps = torch.cat([s_dev_pu.real, s_dev_pu.imag], dim=1) * self.s_base_kva
        j_v, j_s = torch.autograd.functional.jacobian(drawn, (xv, ps), vectorize=True)
        j_v = j_v.permute(1, 0, 2).cpu().numpy()  # [T, 2 n_I, 2 n_I]
        j_s = j_s.permute(1, 0, 2).cpu().numpy()  # [T, 2 n_I, 2 n_inj]
        rows = np.concatenate([self.iter_nodes, n + self.iter_nodes])
        jac = np.zeros((t_steps, 2 * n, 2 * n))
        jac[:, rows[:, None], rows[None, :]] = j_v
        dev = np.zeros((t_steps, 2 * n, 2 * n_j))
        dev[:, rows, :] = j_s
        return jac, dev

    # ------------------------------------------------------------------ operating point
    def at(self, v_all_pu: np.ndarray, load_scale: np.ndarray, p_kw: np.ndarray, q_kvar: np.ndarray) -> StepLinearisation:
        """Values at ``T`` operating points: node voltages ``v_all_pu [T, n]`` (complex, an AC
        solution for an exact zero-order model), ``load_scale [T, L]``, device consumption
        ``p_kw, q_kvar [T, n_inj]``."""
        net, n = self.net, self.n
        v_all = torch.as_tensor(np.asarray(v_all_pu, dtype=complex))
        v_iter = v_all[:, net.iter_nodes.cpu()]
        scale = torch.as_tensor(np.asarray(load_scale, dtype=float))
        s_dev = torch.as_tensor(np.asarray(p_kw, dtype=float) + 1j * np.asarray(q_kvar, dtype=float)) / self.s_base_kva
        jac, dev = self._local_jacobians(v_iter, scale, s_dev)
        x = np.concatenate([v_all.real.numpy(), v_all.imag.numpy()], axis=1)  # [T, 2n]
        s = np.concatenate([np.asarray(p_kw, dtype=float), np.asarray(q_kvar, dtype=float)], axis=1)  # [T, 2 n_inj]
        with torch.no_grad():
            c = zbus.injection_coefficients(net, v_iter.shape[0], scale, s_dev)
            drawn = zbus.drawn_currents(net, v_iter, c).numpy()
        drawn_all = np.zeros((len(x), n), dtype=complex)
        drawn_all[:, self.iter_nodes] = drawn
        resid = self.i_norton[None, :] - drawn_all  # = Y v* at an AC solution
        rhs = (np.concatenate([resid.real, resid.imag], axis=1)
               + np.einsum("tij,tj->ti", jac, x) + np.einsum("tij,tj->ti", dev, s))
        # magnitudes: |u| ~ (Re u* Re u + Im u* Im u) / |u*|
        u = v_all[:, self.node_a].numpy()
        ll = self.node_b >= 0
        u[:, ll] = (u[:, ll] - v_all[:, self.node_b[ll]].numpy()) / math.sqrt(3.0)
        vm = np.abs(u)
        mag = np.zeros((len(x), len(self.node_a), 2 * n))
        rows = np.arange(len(self.node_a))
        scale_a = np.where(ll, 1.0 / math.sqrt(3.0), 1.0)
        mag[:, rows, self.node_a] = (u.real / vm) * scale_a
        mag[:, rows, n + self.node_a] = (u.imag / vm) * scale_a
        mag[:, rows[ll], self.node_b[ll]] = -(u.real / vm)[:, ll] * scale_a[ll]
        mag[:, rows[ll], n + self.node_b[ll]] = -(u.imag / vm)[:, ll] * scale_a[ll]
        # source active power and its gradient in the source-node voltages (kW per pu)
        xs = torch.as_tensor(x[:, self.src_cols]).requires_grad_(True)
        k = self.n_src
        v_src = torch.complex(xs[:, :k], xs[:, k:])
        i_in = (net.source_emf_pu.cpu() - v_src) @ net.source_y_pu.cpu().T
        p_src = (v_src * i_in.conj()).sum(-1).real * self.s_base_kva
        (grad,) = torch.autograd.grad(p_src.sum(), xs)
        grad, p_src = grad.numpy(), p_src.detach().numpy()
        currents = (self.current_map @ v_all.numpy().T).T
        return StepLinearisation(
            jac_values=self.jac_pattern.values(jac), dev_values=self.dev_pattern.values(dev), rhs=rhs.T.copy(),
            mag_values=self.mag_pattern.values(mag), src_grad=grad.T.copy(),
            src_const=p_src - (grad * x[:, self.src_cols]).sum(1), x=x.T.copy(), vm_pu=vm.T.copy(),
            currents_a=currents.T.copy(), p_src_kw=p_src)

    # ------------------------------------------------------------------ check
    def solve_linear(self, point: StepLinearisation, p_kw: np.ndarray, q_kvar: np.ndarray) -> np.ndarray:
        """Real-stacked voltages ``[2n, T]`` of the linear model at device powers ``[T, n_inj]``
        (a direct sparse solve per step; for tests and diagnostics)."""
        from scipy.sparse.linalg import spsolve

        out = []
        s = np.concatenate([p_kw, q_kvar], axis=1)
        jr, jc = self.jac_pattern.rows, self.jac_pattern.cols
        dr, dc = self.dev_pattern.rows, self.dev_pattern.cols
        for t in range(point.rhs.shape[1]):
            a = self.y_real + jr @ sp.diags(point.jac_values[:, t]) @ jc
            b = point.rhs[:, t] - dr @ (point.dev_values[:, t] * (dc @ s[t]))
            out.append(spsolve(a.tocsc(), b))
        return np.stack(out, axis=1)


def _stiff_merge(grid: Grid, y_pu: np.ndarray, stiff_pu: float) -> sp.csr_matrix:
    """Complex map ``[n, n_z]`` from kept voltages to all nodes that eliminates stiff branches.

    A branch (switch, regulator, any series element) whose largest per-unit admittance exceeds
    ``stiff_pu`` is taken as ideal: its terminal-2 voltages follow terminal 1's through its own
    no-current relation ``v_2 = R v_1``, ``R = -Y_22^-1 Y_21`` (identity for a switch, the turns
    ratio for a regulator), applied in sequence so chains (regulator then switch) compose.
    """
    n = grid.n_nodes
    v_base = np.asarray(grid.v_base_ln_v, dtype=float)
    t_map = np.eye(n, dtype=complex)  # columns: candidate variables (one per node)
    eliminated = np.zeros(n, dtype=bool)
    for branch in grid.branches:
        nodes = np.asarray(branch.terminal_nodes)
        m = len(nodes) // 2
        keep = nodes >= 0
        a_idx, b_idx = np.flatnonzero(keep[:m]), m + np.flatnonzero(keep[m:])
        if len(a_idx) == 0 or len(b_idx) == 0:
            continue
        a, b = nodes[a_idx], nodes[b_idx]
        idx = np.concatenate([a_idx, b_idx])
        d = v_base[nodes[idx]]
        y = branch.yprim_si[np.ix_(idx, idx)] * np.outer(d, d) / (grid.s_base_kva * 1e3)
        if np.abs(y).max(initial=0.0) <= stiff_pu or eliminated[b].any():
            continue
        y_bb, y_ba = y[len(a):, len(a):], y[len(a):, : len(a)]
        if np.linalg.cond(y_bb) > 1e12:
            continue  # no unique no-current relation (e.g. an isolated delta side): keep it
        ratio = -np.linalg.solve(y_bb, y_ba)  # v_b = ratio v_a
        # substitute the variables of b: every node that uses them now uses ratio @ (a's expression)
        t_map = t_map + t_map[:, b] @ (ratio @ t_map[a, :] - np.eye(n)[b, :])
        eliminated[b] = True
    t_map[np.abs(t_map) < 1e-14] = 0.0
    return sp.csr_matrix(t_map[:, ~eliminated])


def _drop_cancelled(m: sp.spmatrix, rel: float = 1e-9) -> sp.csr_matrix:
    """Zero the entries left by cancellation (merged switch admittances) and drop them."""
    m = sp.csr_matrix(m)
    m.data[np.abs(m.data) < rel * np.abs(m.data).max(initial=0.0)] = 0.0
    m.eliminate_zeros()
    return m


def _real_stack(m: sp.spmatrix) -> sp.csr_matrix:
    """Complex ``M`` -> real ``[[Re M, -Im M], [Im M, Re M]]`` acting on ``[Re z; Im z]``."""
    m = sp.csr_matrix(m)
    re, im = m.real, m.imag
    return sp.bmat([[re, -im], [im, re]], format="csr")
