"""Which torch device a run, a comparison, a target computation or ``gridflex pf`` uses.

A device is named as on the command line (``--device``) or in a scenario (``device``):

* ``cpu``: always available;
* ``cuda``: the current CUDA device (an NVIDIA GPU with a CUDA build of PyTorch);
* ``cuda:N``: CUDA device number ``N`` (0-based; must exist on this machine);
* ``auto``: ``cuda`` when available, else ``cpu``.

Anything else, or a CUDA device this machine does not have, is a :class:`UserError` (exit 2, one
paragraph naming the value, where it came from and the allowed values), raised by
:func:`check_device` before any long work starts. The syntax rule (:data:`DEVICE_PATTERN`) is
the scenario schema's, so a scenario's ``device`` and ``--device`` accept the same names.
"""

from __future__ import annotations

import re

import torch

from gridflex.errors import UserError
from gridflex.scenario.schema import DEVICE_PATTERN

#: The device names gridflex accepts (``cuda:N`` stands for ``cuda:0``, ``cuda:1``, ...).
DEVICES = ("cpu", "cuda", "cuda:N", "auto")
ALLOWED = (f"{', '.join(DEVICES)} (cpu always works; cuda needs an NVIDIA GPU and a CUDA build of "
           "PyTorch; cuda:N is CUDA device number N, from 0; auto is cuda when available, else cpu)")


def _cuda_summary() -> str:
    return (f"torch {torch.__version__}, cuda build: {torch.version.cuda or 'no'}, "
            f"CUDA devices: {torch.cuda.device_count() if torch.cuda.is_available() else 0}")


def check_device(requested: str, where: str = "--device") -> str:
    """``requested`` if it names a device gridflex accepts and this machine has, else a
    :class:`UserError` that names ``where`` it came from (``--device``, "the scenario's device"),
    the value and the allowed ones (see the module docstring)."""
    if not isinstance(requested, str) or re.fullmatch(DEVICE_PATTERN, requested) is None:
        raise UserError(f"{where} {requested!r} is not a device gridflex knows; allowed: {ALLOWED}")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                f"{where} {requested!r} requested but CUDA is not available on this machine "
                f"({_cuda_summary()}); allowed here: cpu or auto (which falls back to cpu)"
            )
        if ":" in requested:
            index, count = int(requested.split(":", 1)[1]), torch.cuda.device_count()
            if index >= count:
                raise UserError(
                    f"{where} {requested!r} requested but this machine has {count} CUDA "
                    f"device{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1}); allowed here: "
                    f"cpu, cuda, cuda:0 to cuda:{count - 1}, or auto"
                )
    return requested


def resolve_device(requested: str, where: str = "device") -> torch.device:
    """The torch device of ``requested`` (checked with :func:`check_device`; ``auto`` becomes
    ``cuda`` when available, else ``cpu``)."""
    check_device(requested, where)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
