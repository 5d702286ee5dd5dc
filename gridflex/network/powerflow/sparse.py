"""Z-bus products through one sparse LU of the per-unit admittance (large feeders, CPU).

The fixed point ``v_I = w_I + Z_II i_I(v_I)`` (:mod:`gridflex.network.powerflow.zbus`) only needs
products with ``Z = Y_pu^-1`` restricted to the iteration nodes I. With a sparse LU of ``Y_pu``
(SuperLU through :func:`scipy.sparse.linalg.splu`, factorised once per network) every product is
one pair of sparse triangular solves for all batch rows at once (multiple right-hand sides):

    Z_II x   = (Y^-1 E_I x)[I]          forward map               (:meth:`SparseZ.z_ii`)
    Z_II^H x = (Y^-H E_I x)[I]          adjoint, the exact conj. transpose (:meth:`SparseZ.z_ii_h`)
    Z_NI x   = Y^-1 E_I x               all node voltages          (:meth:`SparseZ.z_ni`)
    Z_NI^H y = (Y^-H y)[I]              its vector-Jacobian product

Rows are batch samples (``[B, n_I]`` complex, pu), as in the dense kernels. The dense ``n x n``
inverse is never formed: memory is O(nnz(L + U)) instead of O(n^2), set-up is one factorisation
(milliseconds on radial feeders) instead of an O(n^3) inverse. Solves run in complex128 on the
CPU whatever the network's dtype and device (tensors are moved there and back).

Y is equilibrated before the factorisation (``S Y S`` with ``S = |diag Y|^-1/2``): the stiff
source (~6e6 pu) and regulators otherwise leave ~1e-11 pu of rounding *noise* in every product
(the map is then not reproducible below ~1e-11, and tolerances like 1e-11 never converge);
equilibrated, the noise is ~1e-16 and the products' error ~7e-11 pu against a long-double-refined
inverse (the dense inverse's: ~4e-11). One float64 refinement step per product was tried and made
it worse (the residual of a stiff system is itself rounding-dominated).

The no-load voltage is computed without the Vsource's Norton current (~1e6 pu on feeders with a
stiff source): ``w = e_hat - Z (Y_net e_hat)``, exact since ``Z (Y_net + Y_src) = I``, then
``REFINE_STEPS`` residual corrections in the same split form accumulated in long double, as
:func:`gridflex.network.powerflow.precision.precise_no_load_voltage` does for the dense path
(IEEE 13/123: ~1e-9 pu from the refined dense value, the dense default's ~3e-9; EPRI ckt5:
2.4e-7 pu, where the dense default is at 2.7e-8 -- why ``method: auto`` keeps such feeders dense).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import splu

#: column ordering of the LU: minimum degree on Y + Y^T suits the (structurally symmetric)
#: admittance of a feeder; fill is near zero on radial ones
PERMC_SPEC = "MMD_AT_PLUS_A"
#: long-double residual corrections of the no-load voltage
REFINE_STEPS = 2


class SparseZ:
    """Products with ``Z = Y_pu^-1`` and its conjugate transpose through one sparse LU.

    ``y_pu``: sparse per-unit admittance over all nodes [n, n] (Vsource inside, Norton form);
    ``iter_nodes``: the iteration nodes I (long [n_I]). Inputs and outputs are torch rows.
    """

    def __init__(self, y_pu: sp.spmatrix, iter_nodes: np.ndarray, *, equilibrate: bool = True):
        self.y_pu = sp.csc_matrix(y_pu, dtype=complex)
        self.n = self.y_pu.shape[0]
        self.iter_nodes = np.asarray(iter_nodes, dtype=np.int64)
        # symmetric diagonal scaling S Y S (|diag| -> 1): Y^-1 = S (S Y S)^-1 S, S real
        diag = np.abs(self.y_pu.diagonal())
        self.scale = 1.0 / np.sqrt(np.where(diag > 0, diag, 1.0)) if equilibrate else np.ones(self.n)
        d = sp.diags(self.scale)
        self.lu = splu(sp.csc_matrix(d @ self.y_pu @ d), permc_spec=PERMC_SPEC, options={"SymmetricMode": True})

    @property
    def nnz_factor(self) -> int:
        """Nonzeros of L + U (the per-right-hand-side cost of one solve)."""
        return int(self.lu.L.nnz + self.lu.U.nnz)

    # -------------------------------------------------------------------------- numpy kernels
    def solve(self, rhs: np.ndarray, trans: str = "N") -> np.ndarray:
        """Y^-1 rhs (``trans='N'``) or Y^-H rhs (``'H'``) for columns rhs [n, m] (complex128).

        With :attr:`refine`, one step of iterative refinement (float64 residual): the stiff
        feeder admittance leaves ~1e-11 pu of rounding in a plain solve, which would floor the
        fixed point's residual above tight tolerances; refined, products match the dense Z.
        """
        if rhs.shape[1] == 0:
            return np.zeros_like(rhs)
        scale = self.scale[:, None]
        return self.lu.solve(rhs * scale, trans=trans) * scale

    def _expand(self, x_rows: np.ndarray) -> np.ndarray:
        """E_I x as columns [n, B] (Fortran order: the rows of a C-order [B, n] buffer)."""
        full = np.zeros((x_rows.shape[0], self.n), dtype=complex)
        full[:, self.iter_nodes] = x_rows
        return full.T

    # -------------------------------------------------------------------------- torch rows
    @staticmethod
    def _numpy(x: torch.Tensor) -> np.ndarray:
        return x.detach().to("cpu", torch.complex128).numpy()

    @staticmethod
    def _torch(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(like.device, like.dtype)

    def z_ii(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of (Z_II x^T)^T, i.e. ``x @ Z_II^T``: complex [B, n_I] -> [B, n_I] (no autograd)."""
        out = self.solve(self._expand(self._numpy(x)))[self.iter_nodes]
        return self._torch(out.T, x)

    def z_ii_h(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of (Z_II^H x^T)^T, i.e. ``x @ conj(Z_II)``: [B, n_I] -> [B, n_I] (no autograd)."""
        out = self.solve(self._expand(self._numpy(x)), trans="H")[self.iter_nodes]
        return self._torch(out.T, x)

    def z_ni(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of (Z_{:,I} x^T)^T, i.e. ``x @ Z_{:,I}^T``: [B, n_I] -> [B, n] (differentiable)."""
        return _ZNIProduct.apply(x, self)

    # -------------------------------------------------------------------------- no-load voltage
    def no_load_voltage(self, source_nodes: np.ndarray, y_src_pu: np.ndarray, e_hat_src_pu: np.ndarray) -> np.ndarray:
        """w = Z Y_src e_hat, complex [n] (pu), without the Norton current (module docstring).

        ``y_src_pu`` [k, k]: the Vsource's Thevenin admittance at ``source_nodes``; ``e_hat_src_pu``
        [k]: its EMF.
        """
        src = np.asarray(source_nodes, dtype=np.int64)
        e_hat = np.zeros(self.n, dtype=complex)
        e_hat[src] = e_hat_src_pu

        coo = self.y_pu.tocoo()
        wide = np.clongdouble
        vals = coo.data.astype(wide)

        def y_net(v: np.ndarray) -> np.ndarray:  # (Y - Y_src) v in long double, source apart
            out = np.zeros(self.n, dtype=wide)
            np.add.at(out, coo.row, vals * v.astype(wide)[coo.col])
            out[src] -= y_src_pu.astype(wide) @ v[src].astype(wide)
            return out

        w = e_hat - self.solve(y_net(e_hat).astype(complex)[:, None])[:, 0]
        for _ in range(REFINE_STEPS):  # residual Y_src e_hat - Y w = Y_src (e_hat - w) - Y_net w, long double
            residual = -y_net(w)
            residual[src] += y_src_pu.astype(wide) @ (e_hat[src] - w[src]).astype(wide)
            w = w + self.solve(residual.astype(complex)[:, None])[:, 0]
        return w


class _ZNIProduct(torch.autograd.Function):
    """v = x @ Z_{:,I}^T (rows) with its vector-Jacobian product grad_x = grad_v @ conj(Z_{:,I})."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, op: SparseZ) -> torch.Tensor:
        ctx.op = op
        out = op.solve(op._expand(op._numpy(x)))
        return op._torch(out.T, x)

    @staticmethod
    def backward(ctx, grad_v: torch.Tensor):
        op: SparseZ = ctx.op
        out = op.solve(np.ascontiguousarray(op._numpy(grad_v)).T, trans="H")[op.iter_nodes]
        return op._torch(out.T, grad_v), None


def sparse_per_unit_admittance(y_si: np.ndarray | sp.spmatrix, v_base_v: np.ndarray, s_base_va: float) -> sp.csc_matrix:
    """Y_pu = D Y D / S_base as a sparse CSC matrix [n, n] (``y_si`` dense or sparse, S)."""
    d = sp.diags(np.asarray(v_base_v, dtype=float))
    return sp.csc_matrix(d @ sp.csc_matrix(y_si) @ d / s_base_va)
