"""Anderson-accelerated fixed-point iteration, batched over rows (type II, real least squares).

Generic numerics: the map, its parameters and the scaling come from the caller
(:func:`gridflex.network.powerflow.zbus.solve_fixed_point` and its adjoint). Converged rows leave
the working set; rows that fail keep a finite fallback and are reported, never hidden.

Two schedules compute the same per-row sequence of iterates:

- adaptive (default): converged and failed rows leave the working set and the loop stops when no
  row is left. Least work, but every iteration asks the host whether any row finished.
- sync-free (``sync_free=True``): exactly ``max_iter`` iterations over every row; a row that
  finishes is frozen by ``torch.where`` and its flags are set on the device. No operation reads a
  tensor's value on the host (no ``.item()``, no boolean indexing), so the loop can be recorded
  as a CUDA graph or compiled whole, at the price of iterating finished rows to ``max_iter``.

Each row's iterates depend on that row alone (the Anderson history, its least-squares problem and
its ridge are per row), so both schedules return the same solution, flags and iteration counts
(tests/test_sync_free.py checks it to 1e-12).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class FixedPointResult:
    x: torch.Tensor  # [B, d] solution (the last map value) or a finite fallback
    converged: torch.Tensor  # bool [B]
    iterations: torch.Tensor  # int [B]: map evaluations until convergence (max_iter if not)
    residual: torch.Tensor  # real [B]: max |G(x) - x| at the last evaluation (inf if it diverged)


def _solve_spd_small(h: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve batched small SPD systems h x = rhs by unpivoted elimination (m <= ~10).

    Vectorised over the batch with O(m) tensor ops: far faster than a LAPACK call per row.
    """
    h, rhs = h.clone(), rhs.clone()
    m = h.shape[-1]
    for j in range(m - 1):
        factor = h[:, j + 1 :, j] / h[:, j, j].unsqueeze(-1)
        h[:, j + 1 :, :] -= factor.unsqueeze(-1) * h[:, j, :].unsqueeze(1)
        rhs[:, j + 1 :] -= factor * rhs[:, j].unsqueeze(-1)
    x = torch.zeros_like(rhs)
    for j in range(m - 1, -1, -1):
        x[:, j] = (rhs[:, j] - (h[:, j, j + 1 :] * x[:, j + 1 :]).sum(-1)) / h[:, j, j]
    return x


def _as_real_rows(z: torch.Tensor) -> torch.Tensor:
    """Complex [..., d] -> real view [..., 2d] (interleaved re/im, no copy)."""
    return torch.view_as_real(z).flatten(-2)


def anderson_fixed_point(
    step: Callable[[torch.Tensor, tuple[torch.Tensor, ...]], torch.Tensor],
    x0: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    *,
    tol: float,
    max_iter: int,
    memory: int = 5,
    start: int = 8,
    scale: torch.Tensor | None = None,
    divergence: float = 1e3,
    regularization: float = 1e-10,
    sync_free: bool = False,
) -> FixedPointResult:
    """Solve x = step(x, params) row by row (complex [B, d]) with Anderson acceleration.

    ``params`` are per-row tensors (leading dim B) handed to ``step`` restricted to the rows still
    iterating. A row converges when max|step(x) - x| <= tol * scale (scale [B], default 1); a row
    whose residual is non-finite or exceeds ``divergence`` stops and is reported non-converged.
    The first ``start - 1`` iterations are plain (Picard): most rows converge there and Anderson's
    bookkeeping (~3x the memory traffic of a plain step) is paid only by the slow tail.
    ``memory = 0`` is plain throughout. Non-converged rows return their last finite iterate,
    else ``x0``: never NaN. ``sync_free``: the schedule without host synchronisation (module
    docstring), same results.
    """
    if sync_free:
        return _sync_free_fixed_point(step, x0, params, tol=tol, max_iter=max_iter, memory=memory,
                                      start=start, scale=scale, divergence=divergence,
                                      regularization=regularization)
    batch = x0.shape[0]
    device = x0.device
    x_out = x0.clone()
    converged = torch.zeros(batch, dtype=torch.bool, device=device)
    iterations = torch.full((batch,), max_iter, dtype=torch.long, device=device)
    residual = torch.full((batch,), float("inf"), dtype=x0.real.dtype, device=device)
    if batch == 0:
        return FixedPointResult(x_out, converged, iterations, residual)
    tol_rows = tol if scale is None else tol * scale
    start = max(int(start), 1)

    rows = torch.arange(batch, device=device)  # global index of each working row
    x, x0_work = x0, x0
    history = _History(memory, regularization)
    for k in range(1, max_iter + 1):
        g, f, res, done, bad = _evaluate(step, x, params, tol_rows, divergence)
        finished = done | bad if k < max_iter else torch.ones_like(done)
        if bool(finished.any()):
            ok = done & ~bad
            fallback = torch.where(torch.isfinite(x).all(-1, keepdim=True), x, x0_work)
            x_out[rows[finished]] = torch.where(bad.unsqueeze(-1), fallback, g)[finished]
            converged[rows[ok]] = True
            iterations[rows[ok]] = k
            residual[rows[finished]] = torch.where(bad, torch.full_like(res, float("inf")), res)[finished]
            live = ~finished
            if not bool(live.any()):
                break
            rows, x, g, f, x0_work = rows[live], x[live], g[live], f[live], x0_work[live]
            if scale is not None:
                tol_rows = tol_rows[live]
            params = tuple(p[live] for p in params)
            history.keep(live)
        x = g if memory == 0 or k < start - 1 else history.next_iterate(f, g)
    return FixedPointResult(x_out, converged, iterations, residual)


def _sync_free_fixed_point(step, x0, params, *, tol, max_iter, memory, start, scale, divergence,
                           regularization) -> FixedPointResult:
    """:func:`anderson_fixed_point` on every row for exactly ``max_iter`` iterations, finished
    rows frozen by masks: the same per-row iterates, outputs and flags, no host synchronisation."""
    batch = x0.shape[0]
    device, real = x0.device, x0.real.dtype
    x_out = x0.clone()
    converged = torch.zeros(batch, dtype=torch.bool, device=device)
    iterations = torch.full((batch,), max_iter, dtype=torch.long, device=device)
    residual = torch.full((batch,), float("inf"), dtype=real, device=device)
    if batch == 0:
        return FixedPointResult(x_out, converged, iterations, residual)
    tol_rows = torch.full((batch,), tol, dtype=real, device=device) if scale is None else tol * scale
    inf = torch.full_like(residual, float("inf"))
    start = max(int(start), 1)
    active = torch.ones(batch, dtype=torch.bool, device=device)
    x = x0
    history = _History(memory, regularization)
    for k in range(1, max_iter + 1):
        g, f, res, done, bad = _evaluate(step, x, params, tol_rows, divergence)
        finishing = active & (done | bad) if k < max_iter else active
        fallback = torch.where(torch.isfinite(x).all(-1, keepdim=True), x, x0)
        x_out = torch.where(finishing.unsqueeze(-1), torch.where(bad.unsqueeze(-1), fallback, g), x_out)
        ok = finishing & done & ~bad
        converged = converged | ok
        iterations = torch.where(ok, k, iterations)
        residual = torch.where(finishing, torch.where(bad, inf, res), residual)
        active = active & ~finishing
        if k == max_iter:
            break
        # finished rows go on iterating from their output (finite, never read again): each row's
        # iterates depend on that row alone, so the live rows' sequence is the adaptive one
        x_next = g if memory == 0 or k < start - 1 else history.next_iterate(f, g)
        x = torch.where(active.unsqueeze(-1), x_next, x_out)
    return FixedPointResult(x_out, converged, iterations, residual)


def _evaluate(step, x: torch.Tensor, params, tol_rows, divergence: float):
    """One map evaluation: ``(g, f = g - x, res = max|f| per row, done, bad)``."""
    g = step(x, params)
    f = g - x
    res = torch.linalg.vector_norm(f, ord=float("inf"), dim=-1)
    return g, f, res, res <= tol_rows, ~torch.isfinite(res) | (res > divergence)


class _History:
    """The last ``memory`` secant pairs (differences of residuals f and map values g) per row."""

    def __init__(self, memory: int, regularization: float):
        self.memory, self.regularization = memory, regularization
        self.d_f = self.d_g = self.f_prev = self.g_prev = None
        self.count = 0

    def keep(self, live: torch.Tensor) -> None:
        """Drop the rows that left the working set (``live``: bool mask of those that stay)."""
        if self.f_prev is not None:
            self.f_prev, self.g_prev = self.f_prev[live], self.g_prev[live]
        if self.d_f is not None:
            self.d_f, self.d_g = self.d_f[live], self.d_g[live]

    def next_iterate(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Record (f, g) and return the next iterate: Anderson's once a secant exists, else g."""
        if self.f_prev is not None:
            if self.d_f is None:
                self.d_f = f.new_zeros((f.shape[0], self.memory, f.shape[1]))
                self.d_g = torch.zeros_like(self.d_f)
            slot = self.count % self.memory
            self.d_f[:, slot] = f - self.f_prev
            self.d_g[:, slot] = g - self.g_prev
            self.count += 1
        self.f_prev, self.g_prev = f, g
        return g if self.d_f is None else _anderson_update(f, g, self.d_f, self.d_g, self.regularization)


def _anderson_update(f, g, d_f, d_g, regularization: float) -> torch.Tensor:
    """x = g - dG gamma with gamma = argmin ||f - dF gamma|| over real gamma (type-II Anderson).

    Real coefficients on the real-stacked residuals: the map is not holomorphic, so complex
    coefficients would mix in directions (j dF) that are no secants of it.
    """
    d_f_r = _as_real_rows(d_f)  # [b, m, 2d]
    gram = d_f_r @ d_f_r.transpose(1, 2)
    rhs = (d_f_r @ _as_real_rows(f).unsqueeze(-1)).squeeze(-1)
    diag = gram.diagonal(dim1=1, dim2=2)
    ridge = regularization * diag.amax(-1, keepdim=True) + torch.finfo(diag.dtype).tiny
    gamma = _solve_spd_small(gram + torch.diag_embed(ridge.expand_as(diag)), rhs)
    return g - torch.einsum("bm,bmd->bd", gamma.to(g.dtype), d_g)


def chunked_rows(solve_rows: Callable[[slice], FixedPointResult], batch: int, chunk_rows: int | None) -> FixedPointResult:
    """Run ``solve_rows`` on row chunks and concatenate (cache-sized chunks pay on CPUs)."""
    if not chunk_rows or batch <= chunk_rows:
        return solve_rows(slice(0, batch))
    parts = [solve_rows(slice(k, min(k + chunk_rows, batch))) for k in range(0, batch, chunk_rows)]
    return FixedPointResult(*(torch.cat(fields) for fields in zip(*(
        (p.x, p.converged, p.iterations, p.residual) for p in parts))))
