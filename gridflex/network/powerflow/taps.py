"""Regulator taps per sample as a low-rank update of one base Z-bus network.

Attach a :class:`TapBank` to a :class:`~gridflex.network.powerflow.zbus.ZBusNetwork` with
:func:`build_tap_bank`; solves may then pass per-sample regulator positions, and samples at
different tap states share one batched fixed point, adjoint and reconstruction (the maps live in
:mod:`gridflex.network.powerflow.zbus`: ``fixed_point_map_taps``, ``adjoint_currents``,
``node_voltages_taps``). The method and its conditioning are explained below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from gridflex.network.grid import Grid
from gridflex.network.powerflow.precision import SourceSplit, precise_no_load_voltage, refined_inverse
from gridflex.network.powerflow.sparse import SparseZ
from gridflex.network.powerflow.zbus import ZBusNetwork

# ----------------------------------------------------------------------------------------------
# Regulator taps per sample: a low-rank update of the base network
# ----------------------------------------------------------------------------------------------
#
# A regulator's tap only changes its own primitive, i.e. the entries of Y among its terminal
# nodes. With U the union of all regulators' terminal nodes (k of them; 18 on IEEE 123) and
# D_b = Y(taps_b) - Y0 restricted to U (k x k, block diagonal per regulator, from per-position
# tables), Woodbury gives every sample's impedance from the base one:
#
#     Z_b = Z0 - Z0[:, U] K_b Z0[U, :],      K_b = (I + D_b C)^-1 D_b,   C = Z0[U, U]
#
# so a product Z_b x costs Z0 x, k extra columns (Z0[U, :] x), a k x k matvec per sample and a
# thin product. The fixed point, the adjoint (its exact conjugate transpose), the reconstruction
# of all node voltages and the regulator branches' currents all use this form, so samples at
# *different* tap states share one batched solve. Compensation view: the tap change acts as
# currents -D_b v_U injected at the regulator terminals.
#
# Why this basis. D_b is the regulator primitives' change on their own terminals (taken exactly
# from per-position tables, so D_b = 0 at the base taps and the base state reproduces Z0). A
# "ratio as a per-sample scaling of the winding" basis was considered: an ideal winding's ratio
# scales its terminal's row and column of the regulator block, the same rank-k update written on
# other vectors. It would drop the no-load (magnetising) part and the open/grounded conductor
# handling that the primitive tables carry, and it keeps the large compensating currents below
# (they are physical: the base network's regulator must be driven to the new ratio), which is
# where the digits go; so the tables' D_b is kept and the digits are recovered as follows.
#
# Conditioning. Regulators are stiff (leakage ~1e-4 pu, |D_b| up to ~5e4 pu) and I + D_b C is
# ill-conditioned (up to ~1e6 on IEEE 123): the compensating currents D_b v_U are ~1e3 times the
# load currents and cancel along the regulator. Measured against long-double solves: K_b itself
# is fine (Z_b[I, I] as accurate as a direct inverse of Y_b, ~1e-10), but every product of Z0's
# rows with the large compensating currents amplifies the rows' own rounding (~1e-10 abs in a
# plain float64 inverse at some rows, e.g. behind IEEE 123's 4.16/0.48 kV transformer: up to
# 1e-7 pu in Z_b[:, I]), and the no-load voltage Z i_norton carries the Vsource's ~1e6 pu Norton
# current (~3e-9 pu in any plain float64 evaluation, including the per-state networks'). So:
# (1) Z0 is refined once with a long-double residual (:func:`refined_inverse`; Woodbury's Z_b[:, I]
# then ~1e-11, below a direct inverse); (2) each tap state's no-load voltage is computed once and
# cached, from w_b = e_hat - Z_b (Y_b - Y_src) e_hat (exact; no source-sized terms) plus one
# long-double residual correction (:func:`precise_no_load_voltage`; ~1e-12 pu). The per-iteration
# work is plain float64 (or the network's dtype) products.
#
# Sparse networks (``method="sparse"``, large feeders). Z0 is never formed: its products go
# through the network's sparse LU as everywhere on that path, and only the k columns Z0[:, U] and
# the k rows Z0[U, :] are kept, each solved once and refined with a long-double residual
# (:func:`_refined_solve`; the compensating currents multiply exactly these). The per-state
# no-load voltages use the same split form and residual step with Z_b applied by the LU. Memory
# is O(k n) on top of the LU, so per-sample taps run on IEEE 8500, where the dense Z0 alone
# (8,531 nodes) needs 1.2 GB and its refined inverse minutes.

@dataclass
class RegulatorTable:
    """One regulated transformer's primitive at every tap position (input of :func:`build_tap_bank`)."""

    name: str  # regulator (transformer) name: the order of a taps row
    branch: str  # its Grid branch name, e.g. "transformer.reg1a"
    lo: int  # position of the first table entry (positions lo, lo + 1, ...)
    yprim_si: np.ndarray  # complex [n_pos, c, c]


@dataclass
class TapBranchGroup:
    """Regulator branches with the same conductor count: per-position primitive changes."""

    reg: torch.Tensor  # long [m]: regulator index (column of a taps row)
    cols: torch.Tensor  # long [m, c]: columns of the terminal-current layout
    nodes: torch.Tensor  # long [m, c]: terminal conductor nodes, ground = n
    dyprim_si: torch.Tensor  # complex [m, n_pos, c, c]: Yprim(position) - Yprim(base)
    #: the same in complex128 on a float32 network (its currents, :mod:`.wide`), else None
    dyprim_wide: torch.Tensor | None = None


@dataclass
class TapRows:
    """Per-row tap data of one solve: the Woodbury matrix and the no-load voltages."""

    k: torch.Tensor  # complex [B, k, k]
    w_i: torch.Tensor  # complex [B, n_I]
    w_all: torch.Tensor  # complex [B, n]
    w_all_wide: torch.Tensor  # complex128 [B, n]: the same before the cast to the network's dtype


class TapBank:
    """Every regulator tap state of a base network as a rank-k update (see the section comment).

    Per-state data (``K`` and the no-load voltages) are computed on first use in float64 and
    kept (``max_states`` at most, then the cache restarts).
    """

    def __init__(self, net: ZBusNetwork, grid: Grid, tables: Sequence[RegulatorTable],
                 base_taps: Sequence[int], max_states: int = 50_000):
        if not tables:
            raise ValueError("a tap bank needs at least one regulator table")
        self.names = [t.name for t in tables]
        self.max_states = max_states
        n = grid.n_nodes
        v_base = np.asarray(grid.v_base_ln_v, dtype=float)
        s_base_va = grid.s_base_kva * 1e3
        branches = {b.name: b for b in grid.branches}
        base_taps = np.asarray(base_taps, dtype=np.int64)
        lo = np.asarray([t.lo for t in tables], dtype=np.int64)
        sizes = np.asarray([len(t.yprim_si) for t in tables], dtype=np.int64)
        if np.any(base_taps < lo) or np.any(base_taps >= lo + sizes):
            raise ValueError("base taps outside the regulator tables")
        terminals, deltas = [], []
        for r, table in enumerate(tables):
            if table.branch not in branches:
                raise ValueError(f"regulator {table.name!r}: no branch {table.branch!r} in the grid")
            branch = branches[table.branch]
            base_y = np.asarray(branch.yprim_si, dtype=complex)
            yprim = np.asarray(table.yprim_si, dtype=complex)
            if yprim.shape[1:] != base_y.shape:
                raise ValueError(f"regulator {table.name!r}: table primitives are {yprim.shape[1:]}, "
                                 f"the grid's {base_y.shape}")
            # the grid's own primitive at the base position (a tap written off the step grid may
            # differ in the last digits); a mismatch beyond that means other base taps
            if not np.allclose(yprim[base_taps[r] - lo[r]], base_y, rtol=1e-6, atol=1e-9 * np.abs(base_y).max()):
                raise ValueError(f"regulator {table.name!r}: the table's primitive at tap "
                                 f"{base_taps[r]} differs from the grid's (other base taps?)")
            yprim = yprim.copy()
            yprim[base_taps[r] - lo[r]] = base_y
            terminals.append(np.asarray(branch.terminal_nodes, dtype=np.int64))
            deltas.append(yprim - base_y)  # exact zero at the base position
        u_nodes = np.unique(np.concatenate([t[t >= 0] for t in terminals]))
        k = len(u_nodes)
        upos = {int(node): j for j, node in enumerate(u_nodes)}
        dy = np.zeros((len(tables), int(sizes.max()), k, k), dtype=complex)
        for r, (term, delta) in enumerate(zip(terminals, deltas)):
            live = np.flatnonzero(term >= 0)
            nodes = term[live]
            local = np.asarray([upos[int(x)] for x in nodes])
            scale = np.outer(v_base[nodes], v_base[nodes]) / s_base_va
            for p in range(len(delta)):
                np.add.at(dy[r, p], (local[:, None], local[None, :]), delta[p][np.ix_(live, live)] * scale)

        iter_nodes = net.iter_nodes.cpu().numpy()
        self._sparse = net.sparse_z
        if self._sparse is None:
            # base network (float64 numpy), as in build_network but with Z0 refined once (Woodbury
            # multiplies Z0's rows by large compensating currents: see the section comment)
            y_pu = grid.y_si * np.outer(v_base, v_base) / s_base_va
            z = refined_inverse(y_pu)
            z_cols, z_rows = z[:, u_nodes], z[u_nodes]
        else:  # only Z0[:, U] and Z0[U, :], through the LU (section comment)
            y_pu, z = self._sparse.y_pu, None
            unit = np.zeros((n, k), dtype=complex)
            unit[u_nodes, np.arange(k)] = 1.0
            z_cols = _refined_solve(self._sparse, unit)
            z_rows = _refined_solve(self._sparse, unit, transpose=True).T  # Y^-T E_U: rows of Z0
        self._source = SourceSplit(grid, y_pu)

        self._lo = torch.as_tensor(lo, device=net.device)
        self._lo_np, self._hi_np = lo, lo + sizes - 1
        self.base = base_taps
        self.nodes = torch.as_tensor(u_nodes, device=net.device)
        # per-state computations (float64 numpy, residuals in long double)
        self._u = u_nodes
        self._dy = dy
        self._z = z  # dense Z0, or None on a sparse network
        self._z_cols, self._z_rows = z_cols, z_rows  # Z0[:, U] [n, k], Z0[U, :] [k, n]
        self._c = z_cols[u_nodes]
        # per-iteration products: the dense ones in the network's dtype; the thin correction
        # (k columns, where the large compensating currents cancel) always in complex128, so a
        # float32 network keeps float32 accuracy (in float32 throughout: ~1e-3 pu on IEEE 123)
        def cplx(a, dtype=net.w_i.dtype):
            return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=net.device)

        def wide(a):
            return cplx(a, torch.complex128)

        z_ui, z_iu = z_rows[:, iter_nodes], z_cols[iter_nodes]
        self.n_iter = len(iter_nodes)
        if z is None:  # sparse: Z_II products through the LU, the thin ones dense in complex128
            self.z_ext_t = self.adj_ext = self.z_ii_t = self.z_ii_conj = None
            self.z_ui_t, self.z_iu_conj = wide(z_ui.T), wide(z_iu.conj())
        elif net.w_i.dtype == torch.complex128:  # one product for [Z_II x | Z_UI x]
            z_ii = z[np.ix_(iter_nodes, iter_nodes)]
            self.z_ext_t = cplx(np.concatenate([z_ii.T, z_ui.T], axis=1))  # [n_I, n_I + k]
            self.adj_ext = cplx(np.concatenate([z_ii.conj(), z_iu.conj()], axis=1))
            self.z_ii_t, self.z_ui_t = self.z_ext_t[:, : self.n_iter], self.z_ext_t[:, self.n_iter :]
            self.z_ii_conj, self.z_iu_conj = self.adj_ext[:, : self.n_iter], self.adj_ext[:, self.n_iter :]
        else:
            z_ii = z[np.ix_(iter_nodes, iter_nodes)]
            self.z_ext_t = self.adj_ext = None
            self.z_ii_t, self.z_ui_t = cplx(z_ii.T), wide(z_ui.T)  # [n_I, n_I], [n_I, k]
            self.z_ii_conj, self.z_iu_conj = cplx(z_ii.conj()), wide(z_iu.conj())
        self.z_iu_t = wide(z_iu.T)  # [k, n_I]
        self.z_ui_conj = wide(z_ui.conj())  # [k, n_I]
        self.z_nu_t = wide(z_cols.T)  # [k, n]
        # Z_{:,I}: dense products, or None where the LU gives them (ZBusNetwork.sparse_z.z_ni)
        self.z_ni_t = None if z is None else cplx(z[:, iter_nodes].T)  # [n_I, n]
        # a float32 network reports currents from its injection currents in complex128 (.wide)
        self.z_ni_t_wide = wide(z[:, iter_nodes].T) if net.wide is not None and z is not None else None
        self.iter_nodes = net.iter_nodes

        # regulator branch currents
        self.branch_groups: list[TapBranchGroup] = []
        by_size: dict[int, list[int]] = {}
        for r, term in enumerate(terminals):
            by_size.setdefault(len(term), []).append(r)
        long = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64), device=net.device)  # noqa: E731
        for size, regs in sorted(by_size.items()):
            cols = [np.arange(net.branch_slices[tables[r].branch].start,
                              net.branch_slices[tables[r].branch].stop) for r in regs]
            table = np.zeros((len(regs), int(sizes.max()), size, size), dtype=complex)
            for j, r in enumerate(regs):
                table[j, : sizes[r]] = deltas[r]
            self.branch_groups.append(TapBranchGroup(
                long(regs), long(np.stack(cols)), long(np.stack([np.where(terminals[r] < 0, n, terminals[r])
                                                                  for r in regs])),
                torch.as_tensor(table, dtype=net.w_i.dtype, device=net.device),
                wide(table) if net.wide is not None else None))

        radix = np.concatenate([[1], np.cumprod(sizes[:-1].astype(float))])
        fits = float(np.prod(sizes.astype(float))) < 2.0**62
        self._strides = radix.astype(np.int64) if fits else None
        self._index: dict = {}  # state key (see _keys) -> row of the tables
        self._k_table = torch.zeros((0, k, k), dtype=torch.complex128, device=net.device)
        self._w_table = torch.zeros((0, n), dtype=torch.complex128, device=net.device)  # cast per use
        self._dtype = net.w_i.dtype

    @property
    def n_regulators(self) -> int:
        return len(self.names)

    def products(self, x: torch.Tensor, adjoint: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows x [B, n_I] -> (Z_II x, Z_UI x) or, ``adjoint``, (x conj(Z_II), x conj(Z_IU)); the
        second, thin one in complex128."""
        if self._sparse is not None:
            main = self._sparse.z_ii_h(x) if adjoint else self._sparse.z_ii(x)
            thin = self.z_iu_conj if adjoint else self.z_ui_t
            return main, x.to(thin.dtype) @ thin
        ext = self.adj_ext if adjoint else self.z_ext_t
        if ext is not None:
            prod = x @ ext
            return prod[:, : self.n_iter], prod[:, self.n_iter :]
        main, thin = (self.z_ii_conj, self.z_iu_conj) if adjoint else (self.z_ii_t, self.z_ui_t)
        return x @ main, x.to(thin.dtype) @ thin

    @staticmethod
    def add_thin(base: torch.Tensor, q: torch.Tensor, thin: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """base + alpha q @ thin, the product in q's (wide) dtype, the sum in base's."""
        if base.dtype == q.dtype:
            return torch.addmm(base, q, thin, alpha=alpha)
        return base + (q @ thin).mul(alpha).to(base.dtype)

    @property
    def rank(self) -> int:
        return int(self.nodes.numel())

    def __len__(self) -> int:
        """Tap states seen (and cached)."""
        return len(self._index)

    def check(self, taps: np.ndarray) -> None:
        if taps.ndim != 2 or taps.shape[1] != self.n_regulators:
            raise ValueError(f"taps must be [rows, {self.n_regulators}] (regulators {self.names}), "
                             f"got shape {taps.shape}")
        bad = (taps < self._lo_np) | (taps > self._hi_np)
        if bad.any():
            r = int(np.flatnonzero(bad.any(0))[0])
            raise ValueError(f"tap of {self.names[r]!r} outside [{self._lo_np[r]}, {self._hi_np[r]}]: "
                             f"{taps[bad.any(1)][0, r]}")

    def delta_y(self, taps: np.ndarray) -> np.ndarray:
        """D [S, k, k] (pu): Y(taps) - Y0 on the regulator terminals, for positions [S, n_reg]."""
        return self._dy[np.arange(self.n_regulators), np.asarray(taps) - self._lo_np].sum(1)

    def _z_b(self, k: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Z_b x for rows x [S, n] (Woodbury; Z0 x by the LU on a sparse network)."""
        z0_x = x @ self._z.T if self._z is not None else self._sparse.solve(np.ascontiguousarray(x.T)).T
        return z0_x - np.einsum("sij,sj->si", k, x @ self._z_rows.T) @ self._z_cols.T

    def _compute_states(self, taps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """K [S, k, k] and the no-load voltages w [S, n] of tap states [S, n_reg] (float64),
        the latter as in :func:`precise_no_load_voltage` with Z_b in Woodbury form."""
        d = self.delta_y(taps)
        k = np.linalg.solve(np.eye(self.rank) + d @ self._c, d)
        w = precise_no_load_voltage(self._source, lambda x: self._z_b(k, x), d, self._u)
        return k, w

    def states(self) -> set[tuple[int, ...]]:
        """The tap states cached so far."""
        if self._strides is None:
            return set(self._index)
        codes = np.asarray(list(self._index), dtype=np.int64).reshape(-1, 1)
        sizes = self._hi_np - self._lo_np + 1
        return {tuple(row) for row in ((codes // self._strides) % sizes + self._lo_np).tolist()}

    def _keys(self, taps: np.ndarray) -> np.ndarray | list[tuple[int, ...]]:
        """One hashable key per row: an int64 code (mixed radix over the table sizes), or tuples
        where the codes would overflow."""
        if self._strides is None:
            return [tuple(row) for row in taps.tolist()]
        return (taps - self._lo_np) @ self._strides

    def rows(self, taps: torch.Tensor | np.ndarray) -> TapRows:
        """Per-row data for tap positions ``[B, n_reg]`` (cached per distinct state)."""
        taps_np = np.asarray(taps.cpu() if isinstance(taps, torch.Tensor) else taps, dtype=np.int64)
        self.check(taps_np)
        codes = self._keys(taps_np)
        if isinstance(codes, np.ndarray):
            keys, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
            keys = keys.tolist()
        else:
            _, first, inverse = np.unique(taps_np, axis=0, return_index=True, return_inverse=True)
            keys = [codes[j] for j in first]
        missing = [j for j, key in enumerate(keys) if key not in self._index]
        if missing:
            if len(self._index) + len(missing) > self.max_states:
                self._index.clear()
                self._k_table, self._w_table = self._k_table[:0], self._w_table[:0]
                missing = list(range(len(keys)))
            k, w = self._compute_states(taps_np[first[missing]])
            start = len(self._index)
            for j, m in enumerate(missing):
                self._index[keys[m]] = start + j
            device = self._k_table.device
            self._k_table = torch.cat([self._k_table, torch.as_tensor(k, dtype=self._k_table.dtype, device=device)])
            self._w_table = torch.cat([self._w_table, torch.as_tensor(w, dtype=self._w_table.dtype, device=device)])
        device = self._k_table.device
        slots = torch.as_tensor([self._index[key] for key in keys], device=device)
        row_slots = slots[torch.as_tensor(inverse.reshape(-1), device=device)]
        w_wide = self._w_table[row_slots]
        w_all = w_wide.to(self._dtype)
        return TapRows(self._k_table[row_slots], w_all[:, self.iter_nodes], w_all, w_wide)


def _refined_solve(op: SparseZ, rhs: np.ndarray, transpose: bool = False) -> np.ndarray:
    """Y^-1 rhs (``transpose``: Y^-T rhs) for columns rhs [n, m] through the LU of ``op``, with one
    correction whose residual is accumulated in long double (as :func:`refined_inverse` does for
    the dense inverse): these columns multiply the large compensating currents."""
    y = op.y_pu.T.tocoo() if transpose else op.y_pu.tocoo()

    def solve(b: np.ndarray) -> np.ndarray:  # Y^-T b = conj(Y^-H conj(b))
        return op.solve(b.conj(), trans="H").conj() if transpose else op.solve(b)

    x = solve(rhs)
    if np.finfo(np.longdouble).eps >= np.finfo(np.float64).eps:
        return x
    wide = np.clongdouble
    residual = rhs.astype(wide)
    np.subtract.at(residual, y.row, y.data.astype(wide)[:, None] * x.astype(wide)[y.col])
    return x + solve(residual.astype(complex))


def build_tap_bank(net: ZBusNetwork, grid: Grid, tables: Sequence[RegulatorTable],
                   base_taps: Sequence[int]) -> TapBank:
    """Attach a :class:`TapBank` to ``net`` (built from ``grid``, whose regulators sit at
    ``base_taps``) so that solves may pass per-sample taps; returns it."""
    bank = TapBank(net, grid, tables, base_taps)
    net.tap_bank = bank
    return bank
