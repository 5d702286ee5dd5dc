"""Power-flow results and their assembly from a fixed-point solution.

:func:`solve_power_flow` is the one differentiable entry point: it flattens the batch, runs
:class:`~gridflex.network.powerflow.implicit.ZBusFixedPoint` and derives every reported quantity from the
iteration-node voltages with ordinary torch operations (so autograd reaches them all).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gridflex.network.powerflow import wide, zbus
from gridflex.network.powerflow.implicit import AdjointReport, SolveOptions, ZBusFixedPoint, complex_unstack


@dataclass
class PowerFlowResult:
    """One batched power flow. Leading dims ``[...]`` are the batch (days x steps x scenarios).

    Voltages are per unit of each node's line-to-neutral base (:meth:`v_volts` gives volts);
    powers are positive when drawn: ``source_power_kw`` from the source at the source bus
    terminal, ``load_power_kw`` by the feeder's loads at the solution voltages,
    ``device_power_kw`` by the devices; ``losses_kw = source - load - device`` (capacitors'
    output appears as negative reactive losses). Samples with ``converged == False`` hold finite
    but meaningless values: count them, never use them.
    """

    v_pu: torch.Tensor  # complex [..., n]
    source_power_kw: torch.Tensor  # [...]
    source_power_kvar: torch.Tensor
    load_power_kw: torch.Tensor
    load_power_kvar: torch.Tensor
    device_power_kw: torch.Tensor
    device_power_kvar: torch.Tensor
    losses_kw: torch.Tensor
    losses_kvar: torch.Tensor
    converged: torch.Tensor  # bool [...]
    iterations: torch.Tensor  # long [...]
    residual_pu: torch.Tensor  # [...]: max |G(v) - v| at the last iteration (inf if diverged)
    node_names: list[str]
    v_base_v: torch.Tensor  # [n]
    network: zbus.ZBusNetwork = field(repr=False)
    #: regulator tap positions [..., n_reg] each sample was solved at (per-sample taps through
    #: ``network.tap_bank``); None: the network's own taps
    taps: torch.Tensor | None = None
    #: complex [..., n_I]: currents injected at the iteration nodes (pu), kept by float32
    #: networks, whose branch currents are evaluated from them in complex128 (:mod:`.wide`)
    i_iter_pu: torch.Tensor | None = None
    _branch_currents: torch.Tensor | None = field(default=None, init=False, repr=False)

    @property
    def branch_currents_a(self) -> torch.Tensor:
        """Complex currents into each branch at each terminal conductor, A [..., T].

        Computed on first access (about as costly as the solve itself on large batches) and
        differentiable; :attr:`branch_slices` maps branch names to slices of the last dim.
        """
        if self._branch_currents is None:
            shape = self.v_pu.shape[:-1]
            taps = None if self.taps is None else self.taps.reshape(-1, self.taps.shape[-1])
            if self.i_iter_pu is not None:
                flat = wide.terminal_currents_a(self.network, self.i_iter_pu.reshape(-1, self.i_iter_pu.shape[-1]), taps)
            else:
                flat = zbus.terminal_currents_a(self.network, self.v_pu.reshape(-1, self.v_pu.shape[-1]), taps)
            self._branch_currents = flat.reshape(tuple(shape) + (flat.shape[-1],))
        return self._branch_currents

    @property
    def branch_slices(self) -> dict[str, slice]:
        """Branch name -> slice of the last dim of :attr:`branch_currents_a` (terminal 1, then 2)."""
        return self.network.branch_slices

    @property
    def vm_pu(self) -> torch.Tensor:
        """Node voltage magnitudes, pu [..., n]."""
        return self.v_pu.abs()

    def v_volts(self) -> torch.Tensor:
        """Complex node voltages in volts [..., n]."""
        return self.v_pu * self.v_base_v

    @property
    def n_nonconverged(self) -> int:
        return int((~self.converged).sum())


def _batch_shape(*tensors: torch.Tensor | None) -> torch.Size:
    shapes = [t.shape[:-1] for t in tensors if t is not None]
    return torch.broadcast_shapes(*shapes) if shapes else torch.Size([])


def _rows(t: torch.Tensor | None, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor | None:
    if t is None:
        return None
    return t.to(dtype).expand(*shape, t.shape[-1]).reshape(-1, t.shape[-1])


def solve_power_flow(
    net: zbus.ZBusNetwork,
    load_scale: torch.Tensor | None = None,
    p_kw: torch.Tensor | None = None,
    q_kvar: torch.Tensor | None = None,
    warm_start: torch.Tensor | PowerFlowResult | None = None,
    *,
    options: SolveOptions | None = None,
    adjoint_report: AdjointReport | None = None,
    taps: torch.Tensor | None = None,
) -> PowerFlowResult:
    """Batched, differentiable AC power flow on a precomputed network.

    Args:
        load_scale: [..., n_loads] multiplier of each load element's nominal kW and kvar (None = 1).
        p_kw, q_kvar: [..., n_inj] extra constant-power wye consumption at the device nodes.
        warm_start: complex node voltages [..., n] in pu (or a previous result).
        taps: [..., n_reg] regulator tap positions per sample (ordered like
            ``net.tap_bank.names``; needs a tap bank, :func:`~gridflex.network.powerflow.taps.build_tap_bank`):
            every sample at its own taps in one batched solve. None: the network's own taps.
    """
    options = options or SolveOptions()
    if isinstance(warm_start, PowerFlowResult):
        warm_start = warm_start.v_pu.detach()
    if taps is not None and net.tap_bank is None:
        raise ValueError("per-sample taps need a network with a tap bank (gridflex.network.powerflow.taps.build_tap_bank)")
    taps = None if taps is None else torch.as_tensor(taps, device=net.device)
    shape = _batch_shape(load_scale, p_kw, q_kvar, warm_start, taps)
    batch = int(torch.Size(shape).numel())
    real = net.dtype
    s_base_kva = net.s_base_va / 1e3
    scale = _rows(load_scale, shape, real)
    p_pu = None if p_kw is None else _rows(p_kw, shape, real) / s_base_kva
    q_pu = None if q_kvar is None else _rows(q_kvar, shape, real) / s_base_kva
    v0 = None
    if warm_start is not None:
        v0 = _rows(warm_start.to(net.w_i.dtype), shape, net.w_i.dtype)[:, net.iter_nodes]
    tap_rows = None
    if taps is not None:
        taps = _rows(taps, shape, torch.long)
        tap_rows = net.tap_bank.rows(taps)

    x, converged, iterations, residual = ZBusFixedPoint.apply(
        p_pu, q_pu, scale, net, options, v0, batch, adjoint_report, tap_rows)
    v_iter = complex_unstack(x)
    # non-converged samples pass no gradient at all (the adjoint already zeroes their own path)
    scale, p_pu, q_pu = (_detach_rows(t, converged) for t in (scale, p_pu, q_pu))
    c = zbus.injection_coefficients(net, batch, scale, _device(p_pu, q_pu))
    i_iter = zbus.injection_currents(net, v_iter, c)
    if tap_rows is None:
        v_all = zbus.node_voltages_from_currents(net, i_iter)
    else:
        v_all = zbus.node_voltages_taps(net, i_iter, tap_rows)

    drawn = -(v_iter * i_iter.conj()).sum(-1) * s_base_kva  # loads + devices, kVA
    device = _device(p_pu, q_pu)
    device = device.sum(-1) * s_base_kva if device is not None else torch.zeros_like(drawn)
    if net.wide is None:
        source = zbus.source_power_pu(net, v_all) * s_base_kva
    else:  # float32: the source's stiff admittance needs the wide evaluation (.wide)
        source = wide.source_power_pu(net, i_iter, tap_rows).to(v_all.dtype) * s_base_kva
    losses = source - drawn
    load = drawn - device

    def out(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(tuple(shape) + tuple(t.shape[1:]))

    return PowerFlowResult(
        v_pu=out(v_all),
        source_power_kw=out(source.real), source_power_kvar=out(source.imag),
        load_power_kw=out(load.real), load_power_kvar=out(load.imag),
        device_power_kw=out(device.real), device_power_kvar=out(device.imag),
        losses_kw=out(losses.real), losses_kvar=out(losses.imag),
        converged=out(converged), iterations=out(iterations), residual_pu=out(residual),
        node_names=net.node_names, v_base_v=net.v_base_v, network=net,
        taps=None if taps is None else out(taps),
        i_iter_pu=None if net.wide is None else out(i_iter),
    )


def _device(p_pu: torch.Tensor | None, q_pu: torch.Tensor | None) -> torch.Tensor | None:
    if p_pu is None and q_pu is None:
        return None
    p_pu = torch.zeros_like(q_pu) if p_pu is None else p_pu
    q_pu = torch.zeros_like(p_pu) if q_pu is None else q_pu
    return torch.complex(p_pu, q_pu)


def _detach_rows(t: torch.Tensor | None, keep: torch.Tensor) -> torch.Tensor | None:
    if t is None or not t.requires_grad:
        return t
    return torch.where(keep.unsqueeze(-1), t, t.detach())


# ------------------------------------------------------------------------------------------------
# Re-shaping and joining results (several regulator tap states, step-by-step solves)
# ------------------------------------------------------------------------------------------------
_SHARED_FIELDS = ("v_base_v", "node_names", "network")


def map_batch(flow: PowerFlowResult, fn) -> PowerFlowResult:
    """A result with ``fn`` applied to every batched tensor (e.g. a row selection or reshape).

    Branch currents are carried along when they have been computed; otherwise they are computed
    later from ``flow.network``, which is right for a result that came from one network.
    """
    kwargs = {}
    for name in PowerFlowResult.__dataclass_fields__:
        if name == "_branch_currents":
            continue
        value = getattr(flow, name)
        kwargs[name] = value if name in _SHARED_FIELDS or value is None else fn(value)
    out = PowerFlowResult(**kwargs)
    if flow._branch_currents is not None:
        out._branch_currents = fn(flow._branch_currents)
    return out


def combine_results(flows: list[PowerFlowResult], how: str,
                    index: torch.Tensor | None = None) -> PowerFlowResult:
    """Join results: ``how="stack"`` along a new dim 1 (steps), or ``"cat"`` along dim 0, then
    reorder rows by ``index``. Parts from one network, none with evaluated branch currents and
    with taps all known alike (all None, or all per-sample ``taps``), stay lazy in their branch
    currents; otherwise those are evaluated per part first, since the parts may come from
    networks at different regulator taps (the joined result keeps the first part's network only
    for its shared node data). Invariant: a result whose branch currents are not evaluated gets
    them right from its ``network`` and ``taps``."""
    if len(flows) == 1 and how == "cat" and index is None:
        return flows[0]

    def join(tensors):
        out = torch.stack(tensors, 1) if how == "stack" else torch.cat(tensors, 0)
        return out if index is None else out[index]

    with_taps = [f.taps is not None for f in flows]
    one_network = all(f.network is flows[0].network for f in flows) and len(set(with_taps)) == 1
    kwargs = {}
    for name in PowerFlowResult.__dataclass_fields__:
        if name == "_branch_currents":
            continue
        value = getattr(flows[0], name)
        if name in _SHARED_FIELDS:
            kwargs[name] = value
        elif name == "taps":
            kwargs[name] = join([f.taps for f in flows]) if one_network and all(with_taps) else None
        elif name == "i_iter_pu":  # kept only where every part has it (float32 networks)
            parts = [f.i_iter_pu for f in flows]
            kwargs[name] = join(parts) if one_network and all(p is not None for p in parts) else None
        else:
            kwargs[name] = join([getattr(f, name) for f in flows])
    combined = PowerFlowResult(**kwargs)
    if not one_network or any(f._branch_currents is not None for f in flows):
        combined._branch_currents = join([f.branch_currents_a for f in flows])
    return combined


def replace_rows(flow: PowerFlowResult, rows: torch.Tensor, part: PowerFlowResult) -> PowerFlowResult:
    """``flow`` with its rows ``rows`` (dim 0) replaced by ``part``'s rows (a re-solve of some
    samples). Branch currents stay lazy under :func:`combine_results`' rule, else are evaluated."""
    kwargs = {}
    for name in PowerFlowResult.__dataclass_fields__:
        if name == "_branch_currents":
            continue
        value, new = getattr(flow, name), getattr(part, name)
        if name in _SHARED_FIELDS or value is None or new is None:  # taps: known only if both are
            kwargs[name] = value if name in _SHARED_FIELDS else None
            continue
        value = value.clone()
        value[rows] = new
        kwargs[name] = value
    out = PowerFlowResult(**kwargs)
    lazy = (part.network is flow.network and (flow.taps is None) == (part.taps is None)
            and flow._branch_currents is None and part._branch_currents is None)
    if not lazy:
        currents = flow.branch_currents_a.clone()
        currents[rows] = part.branch_currents_a
        out._branch_currents = currents
    return out
