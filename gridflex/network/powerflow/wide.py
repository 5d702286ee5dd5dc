"""float32 networks: currents through stiff branches and the source, evaluated from i_I.

In float32 the node voltages are right to ~1e-7 pu, but a current through a near-zero impedance
is the difference of two nearly equal voltages times a huge admittance (a closed switch:
1e-6 ohm, ~5e6 pu; the regulators ~2e5 pu; the Vsource's Thevenin admittance ~6e6 pu). Formed
from float32 voltages, IEEE 123's switch currents came out up to 290 % off, regulator reg3a's
20 %, line l32's 1.2 %, and the source power (hence the losses and every energy cost) up to
3 kW off (docs/network.md, "Precision").

The currents injected at the iteration nodes, ``i_I``, are as accurate as the voltages (relative
~1e-7), and every node voltage is affine in them: ``v = w + Z_{:,I} i_I``. So a float32 network
keeps ``w`` (computed without the Norton current), ``Z_{:,I}`` and the branch primitives in
complex128 too (:class:`~gridflex.network.powerflow.zbus.WideNetwork`), and its currents are
evaluated from ``i_I`` in complex128: the cancellation across a stiff branch happens in float64,
and the currents inherit ``i_I``'s relative error. For a closed switch this is what merging its
buses and taking its current from Kirchhoff's current law gives (its current is the sum of what
flows beyond it), without changing the node set the rest of gridflex indexes, and it covers
regulators, short lines and the source too, which merging switches would not. The fixed point,
its adjoint and the voltages stay float32; results are cast back to the network's dtype.
Differentiable (autograd follows the casts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from gridflex.network.powerflow import zbus

if TYPE_CHECKING:
    from gridflex.network.powerflow.taps import TapRows

WIDE = torch.complex128


def node_voltages_pu(net: zbus.ZBusNetwork, i_iter: torch.Tensor, rows: TapRows | None = None,
                     source_only: bool = False) -> torch.Tensor:
    """Node voltages ``w + Z_{:,I} i_I`` in complex128 from float32 injection currents ``i_iter``
    [B, n_I] (pu): all nodes [B, n], or the source nodes [B, k] with ``source_only``; ``rows``:
    per-sample regulator taps (Woodbury form, :mod:`.taps`)."""
    wide = net.wide
    i = i_iter.to(WIDE)
    if rows is not None:
        bank = net.tap_bank
        q = torch.bmm((i @ bank.z_ui_t.to(WIDE)).unsqueeze(1), rows.k.mT).squeeze(1)  # K_b Z_UI i
        z_ni_i = net.sparse_z.z_ni(i) if bank.z_ni_t_wide is None else i @ bank.z_ni_t_wide
        v = rows.w_all_wide + z_ni_i - q @ bank.z_nu_t
        return v[:, net.source_nodes] if source_only else v
    if net.sparse_z is not None:  # its solves run in complex128 whatever the network's dtype
        v = wide.w_all + net.sparse_z.z_ni(i)
        return v[:, net.source_nodes] if source_only else v
    if source_only:
        return torch.addmm(wide.w_all[net.source_nodes].expand(i.shape[0], -1), i, wide.z_si_t)
    return torch.addmm(wide.w_all.expand(i.shape[0], -1), i, wide.z_ni_t)


def source_power_pu(net: zbus.ZBusNetwork, i_iter: torch.Tensor, rows: TapRows | None = None) -> torch.Tensor:
    """Complex power drawn from the source at the source bus terminal, pu [B], in complex128."""
    wide = net.wide
    v_src = node_voltages_pu(net, i_iter, rows, source_only=True)
    i_in = (wide.source_emf_pu - v_src) @ wide.source_y_pu.T
    return (v_src * i_in.conj()).sum(-1)


def terminal_currents_a(net: zbus.ZBusNetwork, i_iter: torch.Tensor, taps: torch.Tensor | None = None) -> torch.Tensor:
    """Currents into every branch at every terminal conductor, A [B, T] in the network's complex
    dtype (layout of :func:`gridflex.network.powerflow.zbus.terminal_currents_a`), evaluated in
    complex128 from the injection currents ``i_iter`` [B, n_I]; ``taps`` [B, n_reg]: per-sample
    regulator positions."""
    rows = None if taps is None else net.tap_bank.rows(taps)
    v_all_v = node_voltages_pu(net, i_iter, rows) * net.wide.v_base_v
    tables = None if taps is None else [g.dyprim_wide for g in net.tap_bank.branch_groups]
    currents = zbus.primitive_currents_a(net, v_all_v, net.wide.yprim_si, taps, tables)
    return currents.to(i_iter.dtype)
