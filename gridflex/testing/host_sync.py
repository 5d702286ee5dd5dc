"""Find the operations that would make a GPU wait for the host, on any device, CPU included.

A CUDA stream runs ahead of Python until an operation needs a tensor's *value* on the host: a
Python ``bool``/``int``/``float`` of a tensor, ``.item()``, ``.tolist()``, or an operation whose
output shape depends on the data (boolean-mask indexing, ``nonzero``, ``masked_select``,
``unique``). Each one stalls the stream, and none of them can be recorded in a CUDA graph. On a
CPU they cost nothing visible, which is how they creep in.

:class:`HostSyncs` is a :class:`~torch.utils._python_dispatch.TorchDispatchMode` that watches the
aten operations under it and records every one of those, with the Python line that caused it, so
a CPU test can assert that a code path is free of them (tests/test_sync_free.py)::

    with HostSyncs() as syncs:
        loss = env.rollout(exo, controller)...
        loss.backward()
    assert not syncs.found, syncs.report()

Copies to the CPU (``.cpu()``, ``.numpy()``) are not flagged: on a CPU tensor they are no-ops
that cannot be told apart from device-side copies at this level; CUDA's own
``torch.cuda.set_sync_debug_mode("error")`` catches them on a GPU.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

#: operations that read a value on the host, or whose output shape depends on the data
_SYNCING = {
    aten._local_scalar_dense.default,  # bool(t), int(t), float(t), t.item(), t.tolist()
    aten.nonzero.default,
    aten.nonzero_static.default,
    aten.masked_select.default,
    aten.unique_consecutive.default,
    aten._unique2.default,
    aten.repeat_interleave.Tensor,
}
#: indexing operations that sync when an index is a boolean mask
_MASK_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
                  aten._index_put_impl_.default}


@dataclass
class HostSync:
    """One operation that needs the host: the aten op and where in the caller's code it ran."""

    op: str
    where: str


@dataclass
class HostSyncs(TorchDispatchMode):
    """Records host-synchronising operations run under it (module docstring)."""

    found: list[HostSync] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SYNCING or (func in _MASK_INDEXING and _has_mask(args)):
            self.found.append(HostSync(str(func), _caller()))
        return func(*args, **kwargs)

    def report(self) -> str:
        """One line per distinct (operation, place), with its count."""
        counts: dict[tuple[str, str], int] = {}
        for sync in self.found:
            counts[(sync.op, sync.where)] = counts.get((sync.op, sync.where), 0) + 1
        return "\n".join(f"{n} x {op} at {where}" for (op, where), n in counts.items())


def _has_mask(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


def _caller() -> str:
    """The innermost frame outside torch and this module: the line that asked for the value."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        name = frame.filename
        if "/torch/" not in name and not name.endswith("host_sync.py"):
            return f"{name}:{frame.lineno} ({frame.line})"
    return "<torch internals>"
