"""Z-bus fixed point for the three-phase AC power flow, batched, in per unit (docs/design.md §2).

Pure numerics on torch tensors; no autograd here (the implicit-differentiation adapter lives in
:mod:`gridflex.network.powerflow.implicit`).

Per unit: ``Y_pu = D Y D / S_base`` with ``D = diag(V_base)``, so ``v_pu = V / V_base`` and
``i_pu = V_base I / S_base`` (then ``v_pu conj(i_pu) = S / S_base``). The Vsource's Thevenin
admittance is inside ``Y`` (Norton form): ``Y`` over *all* nodes is invertible, the source's
Norton current is the only fixed injection, and ``w = Z i_norton`` is the no-load voltage.

Only nodes with injections ("iteration nodes": load nodes plus device nodes) are iterated:

    v_I <- w_I + Z_II i_I(v_I, s)                    (complex [batch, n_I], row vectors)

and the remaining nodes are reconstructed once as ``w + Z_{:,I} i_I``. Iteration is batched over
rows, converged rows leave the working set, and Anderson acceleration (type II, real least
squares over the real-stacked residuals, :mod:`gridflex.network.powerflow.anderson`) handles the
slow or plainly divergent tail.

Size: the precomputed network and the kernels that index its layout (fixed-point map, adjoint,
node voltages, terminal currents, their per-sample-tap variants) stay in one module on purpose:
every kernel reads the private index tables built here, and splitting them would spread that
layout over several files. The generic iteration lives in ``anderson``, the tap bank in ``taps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from gridflex.errors import UserError
from gridflex.network.grid import Grid
from gridflex.network.powerflow import loads as lm
from gridflex.network.powerflow.anderson import FixedPointResult, chunked_rows, anderson_fixed_point
from gridflex.network.powerflow.precision import SourceSplit, precise_no_load_voltage, refined_inverse
from gridflex.network.powerflow.sparse import SparseZ, sparse_per_unit_admittance

if TYPE_CHECKING:  # annotations only: gridflex.network.powerflow.taps builds on this module
    from gridflex.network.powerflow.taps import TapBank, TapRows

# ----------------------------------------------------------------------------------------------
# Precomputed network
# ----------------------------------------------------------------------------------------------


@dataclass
class BranchCurrentGroup:
    """Branches with the same number of terminal conductors, stacked for one batched product."""

    rows: torch.Tensor  # long [k]: positions of these branches in Grid.branches
    nodes: torch.Tensor  # long [k, c]: terminal conductor nodes, ground = n (a zero column)
    yprim_si: torch.Tensor  # complex [k, c, c]


@dataclass
class WideNetwork:
    """What a float32 network keeps in complex128 to report currents (:mod:`.wide`).

    Shapes: n nodes, n_I iteration nodes, k source nodes; pu unless the name says so.
    """

    v_base_v: torch.Tensor  # float64 [n]: the base voltages (V; float32 rounding alone is 4 mV at 66 kV)
    w_all: torch.Tensor  # complex128 [n]: no-load voltage, computed without the Norton current
    z_ni_t: torch.Tensor  # complex128 [n_I, n]: Z_{:,I} transposed ([0, 0] on the sparse method)
    z_si_t: torch.Tensor  # complex128 [n_I, k]: its source columns ([0, 0] on the sparse method)
    source_y_pu: torch.Tensor  # complex128 [k, k]
    source_emf_pu: torch.Tensor  # complex128 [k]
    yprim_si: list[torch.Tensor]  # complex128 [k_g, c, c] per entry of ZBusNetwork.branch_groups


@dataclass
class ZBusNetwork:
    """Everything the fixed point needs, precomputed once per Grid and kept on one device.

    Shapes: n nodes, n_I iteration nodes, n_loads load elements, n_G general load branches,
    n_inj device injection nodes. All voltages/currents/powers in pu unless the name says so.
    """

    grid_name: str
    node_names: list[str]
    s_base_va: float
    v_base_v: torch.Tensor  # real [n]
    iter_nodes: torch.Tensor  # long [n_I]
    inj_pos: torch.Tensor  # long [n_inj]: position of each device injection node in iter_nodes
    z_ii_t: torch.Tensor  # complex [n_I, n_I]: Z_II transposed (row-vector products)
    z_ii_conj: torch.Tensor  # complex [n_I, n_I]: conj(Z_II) (adjoint: mu = lambda @ conj(Z_II))
    z_ni_t: torch.Tensor  # complex [n_I, n]: Z_{:,I} transposed
    w_i: torch.Tensor  # complex [n_I]: no-load voltage at the iteration nodes
    w_all: torch.Tensor  # complex [n]
    # wye loads aggregated per iteration node: load element (rows) -> coefficient (cols), as one
    # real matrix [n_loads, 2 (n_I + n_Z + n_C)] with (re, im) interleaved: constant power s (pu)
    # at every iteration node, constant-Z admittance conj(s)/v_nom^2 at the n_Z nodes z_cols,
    # constant-|I| coefficient conj(s)/v_nom at the n_C nodes i_cols
    m_coef: torch.Tensor
    z_cols: torch.Tensor  # long [n_Z]
    i_cols: torch.Tensor  # long [n_C]
    coef_nominal: torch.Tensor  # complex [n_I + n_Z + n_C]: coefficients at load_scale = 1
    # general load branches (delta, CVR, or every branch when the vlimits rule is on)
    g_a: torch.Tensor  # long [n_G]: node a (position in iter_nodes)
    g_b: torch.Tensor  # long [n_G]: node b (position in iter_nodes; = g_a where b is ground)
    g_has_b: torch.Tensor  # real [n_G]: 1 where b is a node, 0 where b is ground
    local_idx: torch.Tensor  # long [n_Z + n_C + 2 n_G]: z_cols, i_cols, g_a, g_b (one gather/scatter)
    g_load: torch.Tensor  # long [n_G]: load element index
    g_p_pu: torch.Tensor  # real [n_G] nominal consumption
    g_q_pu: torch.Tensor
    g_v_nom_pu: torch.Tensor
    g_exp_p: torch.Tensor  # real [n_G] power-law exponents inside the band
    g_exp_q: torch.Tensor
    g_vmin_pu: torch.Tensor
    g_vmax_pu: torch.Tensor
    g_vlow_pu: torch.Tensor  # real [n_G]: OpenDSS VLowpu (0 for generation: constant Z below vmin)
    g_const_i: torch.Tensor  # bool [n_G]: model 5
    g_rule: torch.Tensor  # bool [n_G]: apply the vlimits rule (vlimits on and model != 2)
    vlimits_rule: bool
    # reporting
    source_nodes: torch.Tensor  # long [k]
    source_y_pu: torch.Tensor  # complex [k, k]
    source_emf_pu: torch.Tensor  # complex [k]
    branch_names: list[str]
    branch_slices: dict[str, slice]  # name -> slice of the terminal-current layout
    branch_groups: list[BranchCurrentGroup]
    branch_perm: torch.Tensor  # long [T]: concatenated group outputs -> Grid branch order
    tap_bank: "TapBank | None" = None  # per-sample regulator taps (build_tap_bank), else None
    #: sparse LU of Y (``method="sparse"``): the Z products go through it and z_ii_t, z_ii_conj,
    #: z_ni_t are empty [0, 0]; None: the dense Z-bus above
    sparse_z: SparseZ | None = None
    #: m_coef transposed as a sparse COO tensor (sparse method only: each load touches one or two
    #: nodes, and on large feeders the dense [n_loads, 2 (n_I + ...)] product costs more than a
    #: fixed-point iteration); None: the dense m_coef product
    m_coef_t_sparse: torch.Tensor | None = None
    #: float32 networks: complex128 data for currents through stiff branches and the source
    #: (:mod:`gridflex.network.powerflow.wide`); None in float64, where the plain path is exact
    wide: WideNetwork | None = None

    @property
    def n_iter(self) -> int:
        return int(self.iter_nodes.numel())

    @property
    def n_loads(self) -> int:
        return int(self.m_coef.shape[0])

    @property
    def n_inj(self) -> int:
        return int(self.inj_pos.numel())

    @property
    def dtype(self) -> torch.dtype:
        return self.v_base_v.dtype

    @property
    def device(self) -> torch.device:
        return self.v_base_v.device


def _resolve_nodes(grid: Grid, nodes: Sequence[int | str] | np.ndarray | None) -> np.ndarray:
    if nodes is None:
        return np.empty(0, dtype=np.int64)
    return np.asarray([grid.node_index(n) if isinstance(n, str) else int(n) for n in nodes], dtype=np.int64)


def load_nodes(grid: Grid) -> np.ndarray:
    """Sorted node indices that carry any load branch terminal."""
    nodes = np.concatenate([grid.load_node_a, grid.load_node_b])
    return np.unique(nodes[nodes >= 0])


def per_unit_impedance(grid: Grid) -> np.ndarray:
    """Z_pu = inv(D Y D / S_base) over all nodes (float64 numpy; the source is inside Y)."""
    v_base = np.asarray(grid.v_base_ln_v, dtype=float)
    y_pu = grid.y_si * np.outer(v_base, v_base) / (grid.s_base_kva * 1e3)
    return np.linalg.inv(y_pu)


def build_network(
    grid: Grid,
    injection_nodes: Sequence[int | str] | np.ndarray | None = None,
    *,
    vlimits_rule: bool = False,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    precise: bool = False,
    method: str = "dense",
) -> ZBusNetwork:
    """Precompute Z, the no-load voltage and the load tables of ``grid`` (once per Grid).

    ``injection_nodes`` (indices or ``"bus.phase"`` names) are the device nodes; default: every
    load node. The iteration set is their union with the load nodes. ``precise``: Z refined
    once and the no-load voltage computed without the Vsource's large Norton current, both with
    long-double residuals (:func:`refined_inverse`, :func:`precise_no_load_voltage`): ~1e-12 pu
    instead of ~3e-9 pu on the IEEE feeders, at ~4x the (small) build cost. Off by default; the
    per-sample tap bank always works this way, and so does every float32 network: it keeps Z, the
    no-load voltage and the branch primitives in complex128 as well, to report currents through
    stiff branches and the source from its injection currents (:mod:`.wide`).

    ``method``: ``"dense"`` (the n x n inverse) or ``"sparse"`` (one sparse LU of Y, products by
    triangular solves, :mod:`gridflex.network.powerflow.sparse`; its no-load voltage is always
    computed the ``precise`` way, without the Norton current).
    """
    if method not in ("dense", "sparse"):
        raise ValueError(f"method must be 'dense' or 'sparse', not {method!r}")
    n = grid.n_nodes
    inj = load_nodes(grid) if injection_nodes is None else _resolve_nodes(grid, injection_nodes)
    iter_nodes = np.union1d(load_nodes(grid), inj)
    pos = {int(node): k for k, node in enumerate(iter_nodes)}
    s_base_va = grid.s_base_kva * 1e3
    v_base = np.asarray(grid.v_base_ln_v, dtype=float)

    src = np.asarray(grid.source_nodes)
    sparse_z = None
    if method == "sparse":
        sparse_z = SparseZ(sparse_per_unit_admittance(grid.y_si, v_base, s_base_va), iter_nodes)
        w_all = sparse_z.no_load_voltage(
            src, grid.source_y_si * np.outer(v_base[src], v_base[src]) / s_base_va,
            grid.source_emf_v / v_base[src])
        z_ni = z_ii = np.zeros((0, 0), dtype=complex)
    elif precise or dtype == torch.float32:
        y_pu = grid.y_si * np.outer(v_base, v_base) / s_base_va
        z = refined_inverse(y_pu)
        w_all = precise_no_load_voltage(SourceSplit(grid, y_pu), z)
    else:
        z = per_unit_impedance(grid)
        i_norton_pu = np.zeros(n, dtype=complex)
        i_norton_pu[src] = v_base[src] * (grid.source_y_si @ grid.source_emf_v) / s_base_va
        w_all = z[:, src] @ i_norton_pu[src]
    if sparse_z is None:
        z_ni = z[:, iter_nodes]
        z_ii = z_ni[iter_nodes]

    loads = _load_tables(grid, pos, len(iter_nodes), vlimits_rule)
    coef = np.concatenate([loads["m_pq"], loads["m_z"], loads["m_i"]], axis=1)
    groups, perm, slices = _branch_groups(grid)

    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    real = lambda a: torch.as_tensor(np.asarray(a, dtype=float), dtype=dtype, device=device)  # noqa: E731
    cplx = lambda a: torch.as_tensor(np.asarray(a, dtype=complex), dtype=cdtype, device=device)  # noqa: E731
    long = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64), device=device)  # noqa: E731
    boolean = lambda a: torch.as_tensor(np.asarray(a, dtype=bool), device=device)  # noqa: E731

    v_base_src = v_base[src]
    source_y_pu = grid.source_y_si * np.outer(v_base_src, v_base_src) / s_base_va
    wide = None
    if dtype == torch.float32:
        c128 = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.complex128, device=device)  # noqa: E731
        wide = WideNetwork(
            v_base_v=torch.as_tensor(v_base, dtype=torch.float64, device=device),
            w_all=c128(w_all),
            z_ni_t=c128(z_ni.T),
            z_si_t=c128(z_ni[src].T) if sparse_z is None else c128(np.zeros((0, 0))),
            source_y_pu=c128(source_y_pu),
            source_emf_pu=c128(grid.source_emf_v / v_base_src),
            yprim_si=[c128(yprim) for _, _, yprim in groups],
        )
    return ZBusNetwork(
        grid_name=grid.name,
        node_names=list(grid.node_names),
        s_base_va=s_base_va,
        v_base_v=real(v_base),
        iter_nodes=long(iter_nodes),
        inj_pos=long([pos[int(k)] for k in inj]),
        z_ii_t=cplx(z_ii.T.copy()),
        z_ii_conj=cplx(z_ii.conj()),
        z_ni_t=cplx(z_ni.T.copy()),
        w_i=cplx(w_all[iter_nodes]),
        w_all=cplx(w_all),
        m_coef=real(np.stack([coef.real, coef.imag], axis=-1).reshape(coef.shape[0], -1)),
        z_cols=long(loads["z_cols"]),
        i_cols=long(loads["i_cols"]),
        coef_nominal=cplx(coef.sum(0)),
        g_a=long(loads["g_a"]),
        g_b=long(np.where(loads["g_b"] < len(iter_nodes), loads["g_b"], loads["g_a"])),
        g_has_b=real(loads["g_b"] < len(iter_nodes)),
        local_idx=long(np.concatenate([
            loads["z_cols"], loads["i_cols"], loads["g_a"],
            np.where(loads["g_b"] < len(iter_nodes), loads["g_b"], loads["g_a"])])),
        g_load=long(loads["g_load"]),
        g_p_pu=real(loads["g_p"]),
        g_q_pu=real(loads["g_q"]),
        g_v_nom_pu=real(loads["g_vn"]),
        g_exp_p=real(loads["g_exp_p"]),
        g_exp_q=real(loads["g_exp_q"]),
        g_vmin_pu=real(loads["g_vmin"]),
        g_vmax_pu=real(loads["g_vmax"]),
        g_vlow_pu=real(loads["g_vlow"]),
        g_const_i=boolean(loads["g_const_i"]),
        g_rule=boolean(loads["g_rule"]),
        vlimits_rule=vlimits_rule,
        source_nodes=long(src),
        # pu Norton admittance and EMF so that i_pu = y_pu (e_pu - v_pu) at the source nodes
        source_y_pu=cplx(source_y_pu),
        source_emf_pu=cplx(grid.source_emf_v / v_base_src),
        branch_names=[b.name for b in grid.branches],
        branch_slices=slices,
        branch_groups=[
            BranchCurrentGroup(long(rows), long(np.where(nodes < 0, n, nodes)), cplx(yprim))
            for rows, nodes, yprim in groups
        ],
        branch_perm=long(perm),
        sparse_z=sparse_z,
        m_coef_t_sparse=None if sparse_z is None else real(
            np.stack([coef.real, coef.imag], axis=-1).reshape(coef.shape[0], -1).T.copy()).to_sparse(),
        wide=wide,
    )


def _load_exponents(model: np.ndarray, cvr_p: np.ndarray, cvr_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unknown = set(np.unique(model)) - {1, 2, 4, 5}
    if unknown:
        raise UserError(
            f"the feeder uses OpenDSS load model(s) {sorted(int(m) for m in unknown)}, which ac3ph "
            "does not support; supported: 1 (constant PQ), 2 (constant Z), 4 (exponential), "
            "5 (constant |I|). Set those loads to a supported model, or use feeder.load_model: "
            "constant_pq in the scenario"
        )
    base = np.select([model == 1, model == 2, model == 5], [0.0, 2.0, 1.0], default=np.nan)
    exp_p = np.where(model == 4, cvr_p, base)
    exp_q = np.where(model == 4, cvr_q, base)
    return exp_p, exp_q


def _load_tables(grid: Grid, pos: dict[int, int], n_iter: int, vlimits_rule: bool) -> dict[str, np.ndarray]:
    """Split load branches into per-node wye aggregates (1, 2, 5) and general branches."""
    s_base_kva = grid.s_base_kva
    a, b = np.asarray(grid.load_node_a), np.asarray(grid.load_node_b)
    v_base_a = np.asarray(grid.v_base_ln_v)[a]
    if np.any((b >= 0) & ~np.isclose(np.asarray(grid.v_base_ln_v)[np.maximum(b, 0)], v_base_a)):
        raise ValueError("a node-to-node load branch joins nodes with different voltage bases")
    model = np.asarray(grid.load_model)
    exp_p, exp_q = _load_exponents(model, np.asarray(grid.load_cvr_p), np.asarray(grid.load_cvr_q))
    s_pu = (np.asarray(grid.load_p_kw) + 1j * np.asarray(grid.load_q_kvar)) / s_base_kva
    v_nom_pu = np.asarray(grid.load_v_nom_v) / v_base_a
    load = np.asarray(grid.load_index)
    n_loads = len(grid.load_elements)

    rule = vlimits_rule & (model != 2)
    aggregated = (b < 0) & (model != 4) & ~rule
    tables = {key: np.zeros((n_loads, n_iter), dtype=complex) for key in ("m_pq", "m_z", "m_i")}
    for k in np.flatnonzero(aggregated):
        column = pos[int(a[k])]
        if model[k] == 1:
            tables["m_pq"][load[k], column] += s_pu[k]
        elif model[k] == 2:
            tables["m_z"][load[k], column] += np.conj(s_pu[k]) / v_nom_pu[k] ** 2
        else:
            tables["m_i"][load[k], column] += np.conj(s_pu[k]) / v_nom_pu[k]
    z_cols = np.flatnonzero(np.abs(tables["m_z"]).sum(0) > 0)
    i_cols = np.flatnonzero(np.abs(tables["m_i"]).sum(0) > 0)
    tables["m_z"], tables["m_i"] = tables["m_z"][:, z_cols], tables["m_i"][:, i_cols]
    general = np.flatnonzero(~aggregated)
    tables.update(
        z_cols=z_cols,
        i_cols=i_cols,
        g_a=np.asarray([pos[int(a[k])] for k in general], dtype=np.int64),
        g_b=np.asarray([pos[int(b[k])] if b[k] >= 0 else n_iter for k in general], dtype=np.int64),
        g_load=load[general],
        g_p=s_pu.real[general],
        g_q=s_pu.imag[general],
        g_vn=v_nom_pu[general],
        g_exp_p=exp_p[general],
        g_exp_q=exp_q[general],
        g_vmin=np.asarray(grid.load_vmin_pu)[general],
        g_vmax=np.asarray(grid.load_vmax_pu)[general],
        g_vlow=(np.full(len(model), lm.VLOW_PU) if grid.load_vlow_pu is None
                else np.asarray(grid.load_vlow_pu, dtype=float))[general],
        g_const_i=(model == 5)[general],
        g_rule=rule[general],
    )
    return tables


def _branch_groups(grid: Grid):
    """Group Grid.branches by conductor count; layout: branches in Grid order, conductors inside."""
    sizes = [len(b.terminal_nodes) for b in grid.branches]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    slices = grid.branch_slices
    groups, concat_positions = [], []
    for size in sorted(set(sizes)):
        rows = np.asarray([k for k, s in enumerate(sizes) if s == size], dtype=np.int64)
        nodes = np.stack([np.asarray(grid.branches[k].terminal_nodes, dtype=np.int64) for k in rows])
        yprim = np.stack([np.asarray(grid.branches[k].yprim_si, dtype=complex) for k in rows])
        groups.append((rows, nodes, yprim))
        concat_positions.extend(int(starts[k]) + j for k in rows for j in range(size))
    perm = np.empty(len(concat_positions), dtype=np.int64)
    perm[np.asarray(concat_positions, dtype=np.int64)] = np.arange(len(concat_positions))
    return groups, perm, slices


# ----------------------------------------------------------------------------------------------
# Per-solve coefficients and the injection-current map
# ----------------------------------------------------------------------------------------------


@dataclass
class Injections:
    """Per-sample coefficients of the injection map, rows = flattened batch (pu).

    Aggregated wye terms: constant power ``s_pq`` at every iteration node (loads of model 1 and
    the devices), constant admittance ``y_z`` at ``z_cols``, constant-|I| coefficient ``k_i`` at
    ``i_cols``; general load branches carry their scaled nominal ``p_g``, ``q_g``.
    """

    s_pq: torch.Tensor  # complex [B, n_I]
    y_z: torch.Tensor  # complex [B, n_Z]
    k_i: torch.Tensor  # complex [B, n_C]
    p_g: torch.Tensor  # real [B, n_G]
    q_g: torch.Tensor  # real [B, n_G]

    def fields(self) -> tuple[torch.Tensor, ...]:
        return (self.s_pq, self.y_z, self.k_i, self.p_g, self.q_g)


def injection_coefficients(
    net: ZBusNetwork, batch: int, load_scale: torch.Tensor | None, s_dev_pu: torch.Tensor | None
) -> Injections:
    """Coefficients for ``batch`` rows. ``load_scale`` [B, n_loads] real, ``s_dev_pu`` [B, n_inj]
    complex consumption at the device nodes; None = 1 and 0. Differentiable in both."""
    if load_scale is None:
        coef = net.coef_nominal.expand(batch, -1)
        p_g, q_g = net.g_p_pu.expand(batch, -1), net.g_q_pu.expand(batch, -1)
    else:
        if net.m_coef_t_sparse is None:
            coef = torch.view_as_complex((load_scale @ net.m_coef).view(batch, -1, 2))
        else:
            flat = torch.sparse.mm(net.m_coef_t_sparse, load_scale.T).T.contiguous()
            coef = torch.view_as_complex(flat.view(batch, -1, 2))
        scale_g = load_scale[:, net.g_load]
        p_g, q_g = scale_g * net.g_p_pu, scale_g * net.g_q_pu
    n_i, n_z = net.n_iter, net.z_cols.numel()
    s_pq, y_z, k_i = coef[:, :n_i], coef[:, n_i : n_i + n_z], coef[:, n_i + n_z :]
    if s_dev_pu is not None:
        s_pq = s_pq.index_add(1, net.inj_pos, s_dev_pu.to(s_pq.dtype))
    return Injections(s_pq, y_z, k_i, p_g, q_g)


def _general_factors(net: ZBusNetwork, u: torch.Tensor):
    """(f_p, f_q, df_p, df_q) of the general branches at branch voltages u [B, n_G]."""
    r = u.abs() / net.g_v_nom_pu
    f_p, df_p = lm.power_law_factor(r, net.g_exp_p)
    f_q, df_q = lm.power_law_factor(r, net.g_exp_q)
    if net.vlimits_rule and bool(net.g_rule.any()):
        fr_p, dfr_p = lm.vlimits_factor(r, net.g_exp_p, net.g_vmin_pu, net.g_vmax_pu, net.g_const_i,
                                        net.g_vlow_pu)
        fr_q, dfr_q = lm.vlimits_factor(r, net.g_exp_q, net.g_vmin_pu, net.g_vmax_pu, net.g_const_i,
                                        net.g_vlow_pu)
        f_p, df_p = torch.where(net.g_rule, fr_p, f_p), torch.where(net.g_rule, dfr_p, df_p)
        f_q, df_q = torch.where(net.g_rule, fr_q, f_q), torch.where(net.g_rule, dfr_q, df_q)
    return f_p, f_q, df_p, df_q


def _with_ground(v: torch.Tensor) -> torch.Tensor:
    return torch.cat([v, v.new_zeros(v.shape[:-1] + (1,))], dim=-1)


def general_branch_voltages(net: ZBusNetwork, v: torch.Tensor) -> torch.Tensor:
    """u = v_a - v_b of every general load branch (ground = 0). v: [B, n_I] -> [B, n_G]."""
    return v[:, net.g_a] - v[:, net.g_b] * net.g_has_b


def _split_local(net: ZBusNetwork, gathered: torch.Tensor):
    """Split a gather over ``local_idx`` into its (z, i, a, b) column groups (views)."""
    n_z, n_c, n_g = net.z_cols.numel(), net.i_cols.numel(), net.g_a.numel()
    return torch.split(gathered, [n_z, n_c, n_g, n_g], dim=1)


def drawn_currents(net: ZBusNetwork, v: torch.Tensor, c: Injections) -> torch.Tensor:
    """Current drawn at each iteration node by loads and devices, pu [B, n_I] (differentiable).

    Constant power everywhere, then the few voltage-dependent and node-to-node terms through one
    gather and one in-place scatter (``local_idx``): on a GPU, kernel count is what costs here.
    """
    drawn = lm.constant_power_current(v, c.s_pq)
    if net.local_idx.numel() == 0:
        return drawn
    v_z, v_c, v_a, v_b = _split_local(net, v[:, net.local_idx])
    parts = [c.y_z * v_z, lm.constant_current_current(v_c, c.k_i)]
    if net.g_a.numel():
        u = v_a - v_b * net.g_has_b
        f_p, f_q, _, _ = _general_factors(net, u)
        i_branch = lm.branch_current(u, c.p_g, c.q_g, f_p, f_q)
        parts += [i_branch, -i_branch * net.g_has_b]
    drawn.index_add_(1, net.local_idx, torch.cat(parts, dim=1))
    return drawn


def injection_currents(net: ZBusNetwork, v: torch.Tensor, c: Injections) -> torch.Tensor:
    """Current injected into each iteration node, i(v) = -(current drawn), pu [B, n_I]."""
    return -drawn_currents(net, v, c)


def fixed_point_map(net: ZBusNetwork, v: torch.Tensor, c: Injections) -> torch.Tensor:
    """G(v) = w_I + Z_II i(v) = w_I - Z_II drawn(v): one Z-bus step, [B, n_I]."""
    if net.sparse_z is not None:
        return net.w_i - net.sparse_z.z_ii(drawn_currents(net, v, c))
    return torch.addmm(net.w_i.expand(v.shape[0], -1), drawn_currents(net, v, c), net.z_ii_t, alpha=-1)


# ----------------------------------------------------------------------------------------------
# Batched Anderson-accelerated fixed-point iteration
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Forward solve and the adjoint
# ----------------------------------------------------------------------------------------------


def solve_fixed_point(
    net: ZBusNetwork,
    c: Injections,
    v0: torch.Tensor | None = None,
    *,
    tol: float = 1e-9,
    max_iter: int = 100,
    memory: int = 5,
    start: int = 8,
    chunk_rows: int | None = None,
    taps: TapRows | None = None,
    sync_free: bool = False,
) -> FixedPointResult:
    """Voltages at the iteration nodes, v = G(v), for every row of ``c`` (no autograd).

    ``taps``: per-row regulator taps (:class:`TapRows` of ``net.tap_bank``), else the network's own.
    ``sync_free``: exactly ``max_iter`` iterations without host synchronisation (:mod:`.anderson`).
    """
    batch = c.s_pq.shape[0]
    w_i = net.w_i.expand(batch, -1) if taps is None else taps.w_i
    x0 = w_i if v0 is None else v0.to(net.w_i.dtype)
    fields = c.fields() if taps is None else (*c.fields(), taps.k, taps.w_i)
    n_fields = len(c.fields())

    def step(v, p):
        if taps is None:
            return fixed_point_map(net, v, Injections(*p))
        return fixed_point_map_taps(net, v, Injections(*p[:n_fields]), *p[n_fields:])

    def solve_rows(rows: slice) -> FixedPointResult:
        return anderson_fixed_point(step, x0[rows].clone(), tuple(f[rows] for f in fields), tol=tol,
                                    max_iter=max_iter, memory=memory, start=start, sync_free=sync_free)

    with torch.no_grad():
        return chunked_rows(solve_rows, batch, chunk_rows)


@dataclass
class LocalJacobian:
    """Wirtinger derivatives of the drawn currents at a solution (rows = batch).

    d(drawn_n) = B_n dconj(v_n) (constant power, every node) + A_n dv_n + B_n' dconj(v_n) at the
    constant-Z/-|I| columns ``zi_cols``; general branches: d(I_g) = a_g du_g + b_g dconj(u_g).
    """

    b_node: torch.Tensor  # complex [B, n_I]
    a_zi: torch.Tensor  # complex [B, n_Z + n_C]
    b_zi: torch.Tensor
    a_gen: torch.Tensor  # complex [B, n_G]
    b_gen: torch.Tensor

    def fields(self) -> tuple[torch.Tensor, ...]:
        return (self.b_node, self.a_zi, self.b_zi, self.a_gen, self.b_gen)


def local_jacobian(net: ZBusNetwork, v: torch.Tensor, c: Injections) -> LocalJacobian:
    b_node = lm.constant_power_b(v, c.s_pq)
    a_i, b_i = lm.constant_current_derivatives(v[:, net.i_cols], c.k_i)
    a_zi = torch.cat([c.y_z, a_i], dim=1)
    b_zi = torch.cat([torch.zeros_like(c.y_z), b_i], dim=1)
    if net.g_a.numel() == 0:
        empty = v.new_zeros((v.shape[0], 0))
        return LocalJacobian(b_node, a_zi, b_zi, empty, empty)
    u = general_branch_voltages(net, v)
    f_p, f_q, df_p, df_q = _general_factors(net, u)
    a_gen, b_gen = lm.branch_current_derivatives(u, net.g_v_nom_pu, c.p_g, c.q_g, f_p, f_q, df_p, df_q)
    return LocalJacobian(b_node, a_zi, b_zi, a_gen, b_gen)


def adjoint_step(net: ZBusNetwork, lam: torch.Tensor, g_bar: torch.Tensor, jac: LocalJacobian,
                 k_conj: torch.Tensor | None = None) -> torch.Tensor:
    """lambda <- g_bar + G_x^T lambda in complex form (conj-linear; docs/design.md §2).

    mu = Z_II^H lambda is the cotangent of the injected currents i = -drawn; through a term with
    d(drawn) = A dv + B dconj(v) the cotangent of v is -(conj(A) mu + B conj(mu)). ``k_conj``:
    conj(K_b) per row for per-sample taps (Z_b,II^H lambda, :func:`adjoint_currents`).
    """
    mu = adjoint_currents(net, lam, k_conj)
    out = torch.addcmul(g_bar, jac.b_node, mu.conj(), value=-1)
    if net.local_idx.numel() == 0:
        return out
    gathered = mu[:, net.local_idx]
    n_zi = net.z_cols.numel() + net.i_cols.numel()
    mu_zi, (_, _, mu_a, mu_b) = gathered[:, :n_zi], _split_local(net, gathered)
    parts = [-(jac.a_zi.conj() * mu_zi + jac.b_zi * mu_zi.conj())]
    if jac.a_gen.shape[1]:
        g_branch = mu_a - mu_b * net.g_has_b  # minus the cotangent of I_g (drawn_a += I_g, drawn_b -= I_g)
        g_u = -(jac.a_gen.conj() * g_branch + jac.b_gen * g_branch.conj())
        parts += [g_u, -g_u * net.g_has_b]
    out.index_add_(1, net.local_idx, torch.cat(parts, dim=1))
    return out


def solve_adjoint(
    net: ZBusNetwork,
    v: torch.Tensor,
    c: Injections,
    g_bar: torch.Tensor,
    *,
    tol: float = 1e-10,
    max_iter: int = 200,
    memory: int = 5,
    start: int = 8,
    chunk_rows: int | None = None,
    k_conj: torch.Tensor | None = None,
    sync_free: bool = False,
) -> FixedPointResult:
    """lambda = g_bar + G_x^T lambda at the solution v (complex cotangents, [B, n_I]).

    ``tol`` and the returned residual are relative to max|g_bar| per row. ``k_conj``: conj(K_b)
    [B, k, k] of per-row taps.
    ``sync_free``: exactly ``max_iter`` iterations without host synchronisation (:mod:`.anderson`).
    """
    jac = local_jacobian(net, v, c)
    scale = g_bar.abs().amax(-1).clamp_min(torch.finfo(v.real.dtype).tiny)
    per_row = (g_bar, *jac.fields()) + (() if k_conj is None else (k_conj,))
    n_jac = len(jac.fields())

    def step(lam, p):
        g_bar_rows, *fields = p
        k_rows = fields[n_jac] if len(fields) > n_jac else None
        return adjoint_step(net, lam, g_bar_rows, LocalJacobian(*fields[:n_jac]), k_rows)

    def solve_rows(rows: slice) -> FixedPointResult:
        params = tuple(t[rows] for t in per_row)
        return anderson_fixed_point(step, g_bar[rows].clone(), params, tol=tol, max_iter=max_iter,
                                    memory=memory, start=start, scale=scale[rows],
                                    divergence=float("inf"), sync_free=sync_free)

    with torch.no_grad():
        result = chunked_rows(solve_rows, g_bar.shape[0], chunk_rows)
    result.residual = result.residual / scale  # relative, like tol
    return result


def node_voltages(net: ZBusNetwork, v_iter: torch.Tensor, c: Injections) -> torch.Tensor:
    """All node voltages w + Z_{:,I} i(v_I), pu [B, n] (differentiable)."""
    return node_voltages_from_currents(net, injection_currents(net, v_iter, c))


def node_voltages_from_currents(net: ZBusNetwork, i_iter: torch.Tensor) -> torch.Tensor:
    """All node voltages w + Z_{:,I} i from the injected currents i [B, n_I], pu [B, n]
    (differentiable in ``i_iter``; dense product or sparse solves)."""
    if net.sparse_z is not None:
        return net.w_all + net.sparse_z.z_ni(i_iter)
    return torch.addmm(net.w_all.expand(i_iter.shape[0], -1), i_iter, net.z_ni_t)


def terminal_currents_a(net: ZBusNetwork, v_all_pu: torch.Tensor, taps: torch.Tensor | None = None) -> torch.Tensor:
    """Currents into every branch at every terminal conductor, A [B, T], Grid branch order.

    I = Yprim @ V_terminals per branch: one batched product per group of branches with the same
    conductor count, with the batch as the long matrix dimension (node-major layout). ``taps``
    (positions [B, n_reg] of ``net.tap_bank``): regulator branches use each row's primitive,
    ``Yprim(base) + (Yprim(tap) - Yprim(base))``. (A float32 result reports its currents through
    :func:`gridflex.network.powerflow.wide.terminal_currents_a` instead.)
    """
    tap_tables = None if taps is None else [g.dyprim_si for g in net.tap_bank.branch_groups]
    return primitive_currents_a(net, v_all_pu * net.v_base_v, [g.yprim_si for g in net.branch_groups],
                                taps, tap_tables)


def primitive_currents_a(net: ZBusNetwork, v_all_v: torch.Tensor, yprims: list[torch.Tensor],
                         taps: torch.Tensor | None = None,
                         tap_tables: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The products of :func:`terminal_currents_a` on node voltages in volts ``v_all_v`` [B, n],
    with the primitives ``yprims`` (one per branch group, S) and, with ``taps``, the regulator
    tables ``tap_tables`` (one per tap-bank branch group), all in ``v_all_v``'s dtype."""
    v_t = _with_ground(v_all_v).T  # [n + 1, B]
    parts = [torch.bmm(yprim, v_t[group.nodes]).flatten(0, 1) for group, yprim in zip(net.branch_groups, yprims)]
    if not parts:
        return v_all_v.new_zeros((v_all_v.shape[0], 0))
    out = torch.cat(parts, dim=0)[net.branch_perm].T
    if taps is None:
        return out
    bank = net.tap_bank
    v_rows = v_t.T  # [B, n + 1]
    taps = taps.to(bank._lo.device)
    for group, table in zip(bank.branch_groups, tap_tables):
        index = taps[:, group.reg] - bank._lo[group.reg]  # [B, m]
        dy = table[torch.arange(group.reg.numel(), device=index.device), index]  # [B, m, c, c]
        delta = (dy @ v_rows[:, group.nodes].unsqueeze(-1)).squeeze(-1)  # [B, m, c]
        out = out.index_add(1, group.cols.flatten(), delta.flatten(1))
    return out


def source_power_pu(net: ZBusNetwork, v_all_pu: torch.Tensor) -> torch.Tensor:
    """Complex power drawn from the source at the source bus terminal, pu [B]."""
    v_src = v_all_pu[:, net.source_nodes]
    i_in = (net.source_emf_pu - v_src) @ net.source_y_pu.T
    return (v_src * i_in.conj()).sum(-1)


# ----------------------------------------------------------------------------------------------
# Regulator taps per sample: the maps on a network with a tap bank (gridflex.network.powerflow.taps)
# ----------------------------------------------------------------------------------------------

def fixed_point_map_taps(net: ZBusNetwork, v: torch.Tensor, c: Injections, k: torch.Tensor,
                         w_i: torch.Tensor) -> torch.Tensor:
    """G_b(v) = w_b - Z_b drawn(v) with Z_b = Z0 - Z0[:, U] K_b Z0[U, :] per row, [B, n_I]."""
    bank = net.tap_bank
    prod_i, prod_u = bank.products(drawn_currents(net, v, c))  # Z_II drawn, Z_UI drawn (rows)
    q = torch.bmm(prod_u.unsqueeze(1), k.mT).squeeze(1)  # (K Z_UI drawn)^T
    return bank.add_thin(w_i - prod_i, q, bank.z_iu_t)


def adjoint_currents(net: ZBusNetwork, lam: torch.Tensor, k_conj: torch.Tensor | None = None) -> torch.Tensor:
    """mu = Z_II^H lambda (rows), or Z_b,II^H lambda per row when ``k_conj`` = conj(K_b) is given:
    Z_b,II^H = Z_II^H - Z_UI^H K_b^H Z_IU^H, the exact conjugate transpose of the forward map."""
    if k_conj is None:
        return lam @ net.z_ii_conj if net.sparse_z is None else net.sparse_z.z_ii_h(lam)
    bank = net.tap_bank
    prod_i, prod_u = bank.products(lam, adjoint=True)  # lambda conj(Z_II), lambda conj(Z_IU)
    s = torch.bmm(prod_u.unsqueeze(1), k_conj).squeeze(1)
    return bank.add_thin(prod_i, s, bank.z_ui_conj, alpha=-1)


def node_voltages_taps(net: ZBusNetwork, i_iter: torch.Tensor, rows: TapRows) -> torch.Tensor:
    """All node voltages w_b + Z_b[:, I] i(v_I) per row, pu [B, n] (differentiable in ``i_iter``)."""
    bank = net.tap_bank
    prod_u = i_iter.to(bank.z_ui_t.dtype) @ bank.z_ui_t  # Z_UI i (rows)
    q = torch.bmm(prod_u.unsqueeze(1), rows.k.mT).squeeze(1)
    if bank.z_ni_t is None:  # sparse network: Z_{:,I} i by the LU
        base = rows.w_all + net.sparse_z.z_ni(i_iter)
    else:
        base = torch.addmm(rows.w_all, i_iter, bank.z_ni_t)
    return bank.add_thin(base, q, bank.z_nu_t, alpha=-1)
