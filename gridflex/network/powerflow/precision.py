"""Extended-precision helpers for stiff feeder admittances (switches, solid grounds, regulators).

A plain float64 inverse of a feeder's Y carries ~1e-10 absolute errors in some rows, and the
no-load voltage ``Z i_norton`` carries the Vsource's ~1e6 pu Norton current (~3e-9 pu after
rounding). These helpers recover the digits with one long-double residual step each; they are
used by :func:`gridflex.network.powerflow.zbus.build_network` (``precise=True``) and by the regulator tap
bank (:mod:`gridflex.network.powerflow.taps`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from gridflex.network.grid import Grid

def refined_inverse(y: np.ndarray) -> np.ndarray:
    """inv(y) with one step of iterative refinement, the residual ``I - y Z`` accumulated in
    extended precision (``np.longdouble``; over the nonzeros of the sparse ``y``, so O(nnz n)).

    Feeder admittances are stiff (switches, solid grounds, regulators: cond ~1e15), and a plain
    float64 inverse carries ~1e-10 absolute errors in some rows; refined, ~1e-12. On platforms
    whose long double is float64 the step changes little.
    """
    z = np.linalg.inv(y)
    if np.finfo(np.longdouble).eps >= np.finfo(np.float64).eps:
        return z
    rows, cols = np.nonzero(y)
    z_ld = z.astype(np.clongdouble)
    residual = np.zeros(y.shape, dtype=np.clongdouble)
    residual[np.arange(len(y)), np.arange(len(y))] = 1.0
    terms = y[rows, cols].astype(np.clongdouble)[:, None] * z_ld[cols]
    np.subtract.at(residual, rows, terms)
    return z + z @ residual.astype(complex)


class SourceSplit:
    """Y_pu = Y_net + Y_src: the network's admittance apart from the Vsource's Thevenin part
    (sparse, for long-double residuals), and the source EMF ``e_hat`` (zero off the source)."""

    def __init__(self, grid: Grid, y_pu: np.ndarray | sp.spmatrix):
        v_base = np.asarray(grid.v_base_ln_v, dtype=float)
        s_base_va = grid.s_base_kva * 1e3
        self.n = y_pu.shape[0]
        self.src = np.asarray(grid.source_nodes)
        self.y_src = grid.source_y_si * np.outer(v_base[self.src], v_base[self.src]) / s_base_va
        self.e_hat = np.zeros(self.n, dtype=complex)
        self.e_hat[self.src] = grid.source_emf_v / v_base[self.src]
        if sp.issparse(y_pu):  # a sparse network's admittance (its tap bank)
            k = len(self.src)
            y_src = sp.coo_matrix((self.y_src.ravel(), (np.repeat(self.src, k), np.tile(self.src, k))),
                                  shape=y_pu.shape)
            y_net = (sp.csr_matrix(y_pu) - y_src).tocoo()
            self.rows, self.cols, self.vals = y_net.row, y_net.col, y_net.data
            self.y_net_e_hat = y_net @ self.e_hat
            return
        y_net = y_pu.copy()
        y_net[np.ix_(self.src, self.src)] -= self.y_src
        self.rows, self.cols = np.nonzero(y_net)
        self.vals = y_net[self.rows, self.cols]
        self.y_net_e_hat = y_net @ self.e_hat

    def residual(self, w: np.ndarray, d: np.ndarray | None = None, u: np.ndarray | None = None) -> np.ndarray:
        """Y_src e_hat - (Y_net + U d U^T + Y_src) w for rows w [S, n], accumulated in long double
        (``d`` [S, k, k] on nodes ``u``: a tap update)."""
        wide = np.clongdouble
        w_ld = w.astype(wide)
        out = np.zeros(w.shape[::-1], dtype=wide)  # [n, S]
        np.subtract.at(out, self.rows, self.vals.astype(wide)[:, None] * w_ld.T[self.cols])
        out = out.T
        if d is not None:
            out[:, u] -= np.einsum("sij,sj->si", d.astype(wide), w_ld[:, u])
        gap = self.e_hat[self.src].astype(wide) - w_ld[:, self.src]
        out[:, self.src] += gap @ self.y_src.T.astype(wide)
        return out.astype(complex)


def precise_no_load_voltage(source: SourceSplit, z, d: np.ndarray | None = None,
                            u: np.ndarray | None = None) -> np.ndarray:
    """No-load voltages w = Z Y_src e_hat without the Vsource's Norton current (~1e6 pu on the
    IEEE feeders, whose rounding costs ~3e-9 pu in ``Z i_norton``): w = e_hat - Z Y_net e_hat,
    exact since Z (Y_net + Y_src) = I, then one residual correction (long-double residual).

    ``z``: the matrix Z [n, n], giving w [n]; or a function x [S, n] -> Z_b x of tap states with
    updates ``d`` [S, k, k] on nodes ``u`` (:class:`TapBank`), giving w [S, n].
    """
    if isinstance(z, np.ndarray):
        w = precise_no_load_voltage(source, lambda x: x @ z.T)
        return w[0]
    rows = 1 if d is None else len(d)
    y_net_e = np.tile(source.y_net_e_hat, (rows, 1))
    if d is not None:
        y_net_e[:, u] += np.einsum("sij,j->si", d, source.e_hat[u])
    w = source.e_hat - z(y_net_e)
    return w + z(source.residual(w, d, u))
