"""Implicit differentiation of the Z-bus fixed point: a thin ``torch.autograd.Function`` adapter.

Forward runs :func:`gridflex.network.powerflow.zbus.solve_fixed_point` without a graph and returns the
real-stacked voltages ``x = [Re v_I, Im v_I]`` (pu) at the iteration nodes. Backward solves the
adjoint fixed point ``lambda = g_bar + G_x^T lambda`` at the converged solution (never unrolling;
docs/design.md §2) and maps it to the inputs by ``s_bar = G_s^T lambda``, i.e. one vector-Jacobian
product of the injection currents with cotangent ``mu = Z_II^H lambda``.

Every other quantity (all node voltages, |V|, line currents, source power) is an ordinary torch
function of ``v_I`` and the inputs, so autograd handles it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from gridflex.network.powerflow import zbus


@dataclass
class SolveOptions:
    """Iteration controls of one solve (forward and adjoint)."""

    tol_pu: float = 1e-9
    max_iter: int = 100
    anderson_m: int = 5
    anderson_start: int = 8  # plain iterations before Anderson (most samples converge by then)
    adjoint_tol: float = 1e-8  # relative to max|g_bar| per sample
    adjoint_max_iter: int = 200
    chunk_rows: int | None = None  # solve in row chunks of this size (cache-sized on CPUs)
    #: exactly max_iter (adjoint: adjoint_max_iter) iterations on every row, flags kept on the
    #: device and the adjoint's report deferred: no host synchronisation (.anderson); same results
    sync_free: bool = False


#: deferred backward passes an AdjointReport keeps before it reads them anyway
MAX_PENDING = 64


@dataclass
class AdjointReport:
    """Filled by each backward pass: how the adjoint fixed point went (rows = flattened batch).

    A sync-free solve only keeps its result's tensors (reading their values would synchronise
    with the host); :meth:`flush` turns what was kept into :attr:`history` entries and warns about
    rows whose adjoint did not converge. Reading :attr:`history` flushes, and the trainer flushes
    after every iteration, so a failure is reported one iteration late at most, never dropped.
    """

    converged: torch.Tensor | None = None
    iterations: torch.Tensor | None = None
    residual: torch.Tensor | None = None  # relative to max|g_bar| per row
    _history: list[dict] = field(default_factory=list)
    _pending: list[tuple[zbus.FixedPointResult, torch.Tensor]] = field(default_factory=list)

    @property
    def history(self) -> list[dict]:
        """The last 16 backward passes: rows, converged, max_iterations, max_residual."""
        self.flush()
        return self._history

    def record(self, result: zbus.FixedPointResult, rows: torch.Tensor, *, defer: bool = False) -> None:
        """Record one backward pass over ``rows`` (bool [B]: the rows that pass a gradient);
        ``defer``: keep the tensors for :meth:`flush` instead of reading them now."""
        self.converged, self.iterations, self.residual = result.converged, result.iterations, result.residual
        self._pending.append((result, rows))
        # deferred results hold their tensors until read: outside the trainer nobody may read
        # them, so they are read (one synchronisation) before they could pile up
        if not defer or len(self._pending) > MAX_PENDING:
            self.flush(stacklevel=5)

    def flush(self, stacklevel: int = 2) -> None:
        """Read what was recorded (one synchronisation) and warn about unconverged adjoint rows."""
        pending, self._pending = self._pending, []
        for result, rows in pending:
            self._history.append({
                "rows": int(rows.sum()),
                "converged": int(result.converged.sum()),
                "max_iterations": int(result.iterations.max()) if result.iterations.numel() else 0,
                "max_residual": float(result.residual.max()) if result.residual.numel() else 0.0,
            })
            failed = int((~result.converged & rows).sum())
            if failed:
                warnings.warn(f"power-flow adjoint did not converge for {failed} sample(s); their "
                              "gradients are inaccurate (see the solver's adjoint_report)",
                              RuntimeWarning, stacklevel=stacklevel)
        del self._history[:-16]


def real_stack(v: torch.Tensor) -> torch.Tensor:
    """Complex [B, d] -> real [B, 2d] = [Re v, Im v]."""
    return torch.cat([v.real, v.imag], dim=-1)


def complex_unstack(x: torch.Tensor) -> torch.Tensor:
    """Real [B, 2d] = [Re v, Im v] -> complex [B, d]."""
    d = x.shape[-1] // 2
    return torch.complex(x[..., :d], x[..., d:])


def _device_power(p_pu: torch.Tensor | None, q_pu: torch.Tensor | None) -> torch.Tensor | None:
    if p_pu is None and q_pu is None:
        return None
    if p_pu is None:
        p_pu = torch.zeros_like(q_pu)
    if q_pu is None:
        q_pu = torch.zeros_like(p_pu)
    return torch.complex(p_pu, q_pu)


class ZBusFixedPoint(torch.autograd.Function):
    """(p_pu [B, n_inj], q_pu [B, n_inj], load_scale [B, n_loads]) -> x [B, 2 n_I] (+ flags).

    ``p_pu``/``q_pu`` are device consumption (positive drawn) in pu of ``S_base``; any of the three
    may be None. Non-differentiable extra outputs: converged [B] bool, iterations [B] long,
    residual [B] (pu). Rows that did not converge get zero gradient. ``taps``: per-row regulator
    taps (:class:`~gridflex.network.powerflow.zbus.TapRows`; constants), else the network's own.
    """

    @staticmethod
    def forward(ctx, p_pu, q_pu, load_scale, net: zbus.ZBusNetwork, options: SolveOptions,
                v0: torch.Tensor | None, batch: int, report: AdjointReport | None,
                taps: zbus.TapRows | None = None):
        c = zbus.injection_coefficients(net, batch, load_scale, _device_power(p_pu, q_pu))
        fp = zbus.solve_fixed_point(net, c, v0, tol=options.tol_pu, max_iter=options.max_iter,
                                    memory=options.anderson_m, start=options.anderson_start,
                                    chunk_rows=options.chunk_rows, taps=taps, sync_free=options.sync_free)
        ctx.net, ctx.options, ctx.batch, ctx.report = net, options, batch, report
        ctx.k_conj = None if taps is None else taps.k.conj()
        ctx.has = (p_pu is not None, q_pu is not None, load_scale is not None)
        ctx.save_for_backward(fp.x, fp.converged, p_pu, q_pu, load_scale)
        ctx.mark_non_differentiable(fp.converged, fp.iterations, fp.residual)
        return real_stack(fp.x), fp.converged, fp.iterations, fp.residual

    @staticmethod
    def backward(ctx, grad_x, _grad_conv, _grad_it, _grad_res):
        v, converged, p_pu, q_pu, load_scale = ctx.saved_tensors
        net, options = ctx.net, ctx.options
        p_pu, q_pu, load_scale = (t if has else None for t, has in zip((p_pu, q_pu, load_scale), ctx.has))
        g_bar = complex_unstack(grad_x) * converged.unsqueeze(-1)
        c = zbus.injection_coefficients(net, ctx.batch, load_scale, _device_power(p_pu, q_pu))
        # a relative tolerance below ~100 ulp is unreachable (float32: 1e-5)
        adjoint_tol = max(options.adjoint_tol, 100 * torch.finfo(net.dtype).eps)
        adjoint = zbus.solve_adjoint(net, v, c, g_bar, tol=adjoint_tol,
                                     max_iter=options.adjoint_max_iter, memory=options.anderson_m,
                                     start=options.anderson_start, chunk_rows=options.chunk_rows,
                                     k_conj=ctx.k_conj, sync_free=options.sync_free)
        _check_adjoint(adjoint, ctx.report, converged, defer=options.sync_free)
        mu = zbus.adjoint_currents(net, adjoint.x, ctx.k_conj)  # cotangent of the injected currents

        inputs = [t.detach().requires_grad_() if t is not None and need else None
                  for t, need in zip((p_pu, q_pu, load_scale), ctx.needs_input_grad[:3])]
        wanted = [t for t in inputs if t is not None]
        if not wanted:
            return (None,) * 9
        with torch.enable_grad():
            p_in = inputs[0] if inputs[0] is not None else p_pu
            q_in = inputs[1] if inputs[1] is not None else q_pu
            scale_in = inputs[2] if inputs[2] is not None else load_scale
            c = zbus.injection_coefficients(net, ctx.batch, scale_in, _device_power(p_in, q_in))
            i = zbus.injection_currents(net, v, c)
            grads = iter(torch.autograd.grad(i, wanted, grad_outputs=mu, allow_unused=True))
        out = [next(grads) if t is not None else None for t in inputs]
        return (*out, None, None, None, None, None, None)


def _check_adjoint(adjoint: zbus.FixedPointResult, report: AdjointReport | None, rows: torch.Tensor,
                   defer: bool = False) -> None:
    """Record the adjoint's outcome and warn about unconverged rows (``defer``: at the report's
    next :meth:`~AdjointReport.flush`; without a report there is nowhere to defer to)."""
    (report if report is not None else AdjointReport()).record(adjoint, rows, defer=defer and report is not None)
