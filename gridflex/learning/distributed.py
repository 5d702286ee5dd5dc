"""Agents across processes with ``torch.distributed`` (docs/distributed.md).

``W`` processes ("ranks", launched by ``torchrun``) train one scenario together. Rank ``r`` owns a
contiguous block of every fleet's agents (:func:`contiguous_blocks`: the first ``N_f mod W`` ranks
one agent more): their policies, optimiser state and device dynamics live on that rank only.
Everything else is replicated and computed identically on every rank from gathered tensors:

* **Rollout.** Each rank steps its own agents' devices with its own policies, then
  :meth:`AgentShard.gather_agents` all-gathers their per-agent demand (once per rollout, or once
  per step when the power flow feeds back into the observations), so every rank sums the same
  injections ``[B, T, n_inj]`` in the same order and solves the same power flow. The rollout's
  trajectories are gathered the same way, so the Lagrangian, the metrics and the dual variables
  are computed from identical tensors on every rank: the duals never need communicating, and
  :meth:`Ranks.check_identical` verifies (bitwise, at every validation point) that they agree.
* **Gradient.** The all-gather is an autograd function whose backward keeps the rank's own
  slice of the incoming gradient and does *not* sum over ranks: every rank computes the same
  full loss, so the gradient w.r.t. the gathered tensor is already complete and identical on all
  ranks. (A reduce-scatter, as in ``torch.distributed.nn.functional.all_gather``, would multiply
  it by ``W``.)

Collectives come from ``torch.distributed`` (``all_gather_single``,
``all_gather``, ``all_reduce``, ``broadcast_object_list``) on the default process group: gloo on CPU, NCCL on CUDA. With one
process nothing here is used: :class:`~gridflex.learning.environment.Environment` has
``shard = None`` and runs the single-process code unchanged.

Shapes: a fleet ``f`` has ``N_f`` agents; rank ``r`` owns agents ``start_f(r) <= i < stop_f(r)``
(``n_f(r)`` of them). :meth:`AgentShard.gather_agents` maps tensors with ``n_f(r)`` entries along
an agent dimension to tensors with ``N_f`` entries there, in agent order.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from gridflex.errors import GridflexError, UserError
from gridflex.fleet.population import Placement
from gridflex.learning.environment import Environment, Fleet, FleetTrajectory

T = TypeVar("T")


def contiguous_blocks(n_agents: int, world_size: int) -> list[tuple[int, int]]:
    """``[(start, stop)]`` per rank: ``n_agents`` split into ``world_size`` contiguous blocks whose
    sizes differ by at most one (the first ``n_agents mod world_size`` blocks are one longer)."""
    base, extra = divmod(n_agents, world_size)
    bounds, start = [], 0
    for r in range(world_size):
        stop = start + base + (1 if r < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def _memory_order(x: torch.Tensor) -> list[int]:
    """``x``'s dimensions from outermost to innermost in memory (ties: in dimension order)."""
    return sorted(range(x.dim()), key=lambda i: -x.stride(i))


class _GatherAgents(torch.autograd.Function):
    """Forward: every rank's agents of each part, in one padded ``all_gather``. Backward: the
    rank's own block of each incoming gradient, a view of it (no communication, no sum).

    Every rank evaluates the same loss of the gathered tensors, so the gradient arriving here is
    already the complete derivative w.r.t. every rank's entries, identical on all ranks; summing
    over ranks (the reduce-scatter of ``torch.distributed.nn.functional.all_gather``) would
    multiply it by the world size. Returning a view keeps the gradient's memory layout as one
    process has it, so reductions further back sum in the same order.
    """

    @staticmethod
    def forward(ctx, shard: AgentShard, dims: tuple[int, ...], fleets: tuple[int, ...], *xs):  # noqa: D102
        ctx.blocks = [(d, *shard.bounds(f)) for d, f in zip(dims, fleets)]
        return tuple(shard._gather_values(xs, dims, fleets))

    @staticmethod
    def backward(ctx, *grads):  # noqa: D102
        own = [None if g is None else g.narrow(d, a, b - a) for g, (d, a, b) in zip(grads, ctx.blocks)]
        return (None, None, None, *own)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the default process group and the collectives gridflex uses.

    ``rank`` in ``0..world_size-1`` (rank 0 writes the run folder and prints), ``local_rank`` its
    index on its machine (the CUDA device it uses), ``backend`` ``"gloo"`` or ``"nccl"``,
    ``device`` the torch device of its tensors."""

    rank: int
    world_size: int
    local_rank: int = 0
    backend: str = "gloo"
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ scalars and objects
    def _reduce(self, values: Sequence[float], op) -> list[float]:
        buf = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(buf, op=op)
        return buf.tolist()

    def max(self, *values: float) -> list[float]:
        """Element-wise maximum of ``values`` over ranks (the same list on every rank)."""
        return self._reduce(values, dist.ReduceOp.MAX)

    def sum(self, *values: float) -> list[float]:
        """Element-wise sum of ``values`` over ranks (the same list on every rank)."""
        return self._reduce(values, dist.ReduceOp.SUM)

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` (any picklable value) on every rank."""
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` evaluated on rank 0 only (file-system checks and reads), its result on every
        rank. A :class:`UserError` raised there is raised on every rank (so every rank exits 2
        with the same paragraph); any other exception fails rank 0 and stops the others."""
        outcome: tuple[str, Any] = ("ok", None)
        if self.is_main:
            try:
                outcome = ("ok", fn())
            except UserError as exc:
                outcome = ("user", str(exc))
            except BaseException as exc:
                self.broadcast(("failed", f"{type(exc).__name__}: {exc}"))
                raise
        kind, value = self.broadcast(outcome)
        if kind == "user":
            raise UserError(value)
        if kind == "failed":
            raise GridflexError(f"rank 0 failed ({value}); rank {self.rank} stops with it")
        return value

    def check_identical(self, tensors: Sequence[torch.Tensor], what: str) -> None:
        """Raise :class:`GridflexError` unless ``tensors`` are bitwise identical on every rank
        (a sha256 of their bytes, compared through one all-gather)."""
        digest = hashlib.sha256()
        for t in tensors:
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
        mine = torch.tensor([int.from_bytes(digest.digest()[:7], "little")], dtype=torch.int64,
                            device=self.device)
        every = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(every, mine)
        if any(int(e) != int(mine) for e in every):
            raise GridflexError(f"{what} differ between ranks (they are computed from identical "
                                "gathered tensors, so this is a bug; please report it)")

    def all_gather_into(self, mine: torch.Tensor) -> torch.Tensor:
        """``[W, L]``: every rank's 1-D ``mine`` (length ``L`` on every rank); not differentiable."""
        out = mine.new_empty(self.world_size * mine.numel())  # the concatenated form (gloo's)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # torch < 2.13
        gather(out, mine)
        return out.view(self.world_size, mine.numel())


@dataclass(frozen=True)
class AgentShard:
    """Which agents of each fleet this rank owns (contiguous blocks) and the gathers over them.

    ``fleet_sizes[f] = N_f``; :meth:`bounds` gives ``(start, stop)`` of any rank's block."""

    ranks: Ranks
    fleet_sizes: tuple[int, ...]

    @property
    def rank(self) -> int:
        return self.ranks.rank

    @property
    def world_size(self) -> int:
        return self.ranks.world_size

    def bounds(self, fleet: int, rank: int | None = None) -> tuple[int, int]:
        """``(start, stop)``: the agents of fleet ``fleet`` that ``rank`` (default: this one) owns."""
        return contiguous_blocks(self.fleet_sizes[fleet], self.world_size)[self.rank if rank is None else rank]

    def own(self, fleet: int) -> slice:
        """This rank's agents of fleet ``fleet`` as a slice of the fleet's agent index."""
        return slice(*self.bounds(fleet))

    def gather_agents(self, parts: Sequence[tuple[int, torch.Tensor, int]]) -> list[torch.Tensor]:
        """All ranks' agents, in one collective: ``parts`` are ``(fleet f, x, dim)`` with this
        rank's ``n_f(r)`` agents along dimension ``dim`` of ``x`` (other dimensions equal on every
        rank, one dtype for all parts); returns each ``x`` with all ``N_f`` agents along ``dim``,
        in ``x``'s memory order. Differentiable: the gradient of a returned tensor reaches ``x``
        as a view of its own block (:class:`_GatherAgents`)."""
        if not parts:
            return []
        dims = tuple(d % x.dim() for _, x, d in parts)
        return list(_GatherAgents.apply(self, dims, tuple(f for f, _, _ in parts), *(x for _, x, _ in parts)))

    def _gather_values(self, xs: Sequence[torch.Tensor], dims: Sequence[int], fleets: Sequence[int]) -> list[torch.Tensor]:
        """The forward of :class:`_GatherAgents`. Each part is copied once into this rank's
        buffer as laid out in memory, the buffers are all-gathered, and each rank's block is
        copied once into the whole tensor, laid out in the part's memory order."""
        orders = [_memory_order(x) for x in xs]
        views = [x.permute(o) for x, o in zip(xs, orders)]  # memory order: contiguous for a dense x
        axes = [o.index(d) for o, d in zip(orders, dims)]  # the agent dimension there
        counts = [[b - a for a, b in (self.bounds(f, q) for q in range(self.world_size))] for f in fleets]
        per_agent = [v.numel() // max(v.shape[a], 1) for v, a in zip(views, axes)]
        offsets = [[0] for _ in range(self.world_size)]  # offsets[q][i]: part i in rank q's buffer
        for q in range(self.world_size):
            for c, k in zip(counts, per_agent):
                offsets[q].append(offsets[q][-1] + c[q] * k)
        longest, mine = max(o[-1] for o in offsets), offsets[self.rank]
        buffer = xs[0].new_empty(longest)
        buffer[mine[-1]:].zero_()
        for i, v in enumerate(views):
            buffer[mine[i]:mine[i + 1]].view(v.shape).copy_(v)
        gathered = self.ranks.all_gather_into(buffer)  # [W, longest]
        out = []
        for i, (v, o, a) in enumerate(zip(views, orders, axes)):
            shape = list(v.shape)
            shape[a] = sum(counts[i])
            whole, start = v.new_empty(shape), 0  # contiguous in the part's memory order
            for q in range(self.world_size):
                shape[a] = counts[i][q]
                whole.narrow(a, start, shape[a]).copy_(gathered[q, offsets[q][i]:offsets[q][i + 1]].view(shape))
                start += shape[a]
            out.append(whole.permute([o.index(j) for j in range(len(o))]))
        return out

    def gather_trajectories(self, trajectories: Sequence[FleetTrajectory]) -> list[FleetTrajectory]:
        """Every fleet's :class:`FleetTrajectory` of this rank's agents -> of all agents (one
        collective for every field of every fleet; agents along dim 2, ``terminal`` along dim 1)."""
        names = [f.name for f in fields(FleetTrajectory)]
        parts = [(f, getattr(tr, name), 1 if name == "terminal" else 2)
                 for f, tr in enumerate(trajectories) for name in names]
        full = iter(self.gather_agents(parts))
        return [FleetTrajectory(**{name: next(full) for name in names}) for _ in trajectories]


def shard_environment(env: Environment, ranks: Ranks) -> Environment:
    """A view of ``env`` in which this rank steps its contiguous block of every fleet
    (``acting_fleets``: models from :meth:`~gridflex.plugins.contracts.DeviceModel.select_agents`,
    placements sliced) and gathers the rest (``shard``); grid, solvers, maps, households and
    counters are shared with ``env``, ``fleets`` stay whole."""
    shard = AgentShard(ranks, tuple(f.n_agents for f in env.fleets))
    view = copy.copy(env)
    view.shard = shard
    view.acting_fleets = []
    for f, fleet in enumerate(env.fleets):
        start, stop = shard.bounds(f)
        placement = Placement(fleet.placement.household[start:stop], list(fleet.placement.nodes[start:stop]))
        view.acting_fleets.append(Fleet(fleet.name, fleet.model.select_agents(start, stop), placement))
    view._fleet_households = [h[start:stop] for h, (start, stop) in
                              zip(env._fleet_households, (shard.bounds(f) for f in range(len(env.fleets))))]
    return view
