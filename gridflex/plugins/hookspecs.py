"""The gridflex plugin API: every hook a plugin may implement.

A plugin is any importable module or object exposing functions decorated with
:data:`gridflex.hookimpl`, advertised through an entry point in the group ``gridflex``::

    # a third party's pyproject.toml
    [project.entry-points.gridflex]
    my_devices = "my_package.gridflex_plugin"

Built-in plugins (``gridflex_plugins``) are registered in exactly this way.

Components (devices, solvers, learners, feeder readers) are classes with a class attribute
``name`` (the string a scenario uses as ``type``), a class attribute ``kind`` and a nested pydantic
``Config`` model (unknown keys are rejected; units in field names). Plugins hand them to gridflex
through the ``register`` callback passed to each ``gridflex_register_*`` hook; registering a name
twice is an error naming both plugins.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover - typing only
    from gridflex.network.feeder import Feeder

PROJECT = "gridflex"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[[type], None]


@hookspec
def gridflex_register_devices(register: Register) -> None:
    """Register device-model classes (kind ``"device"``) by calling ``register(cls)`` once each.

    A device class models a *fleet*: every agent of that type as batched tensors.
    Returns nothing; all implementations are called.
    """


@hookspec
def gridflex_register_solvers(register: Register) -> None:
    """Register network-solver classes (kind ``"solver"``), e.g. the exact ``ac3ph``.

    Returns nothing; all implementations are called.
    """


@hookspec
def gridflex_register_learners(register: Register) -> None:
    """Register learner classes (kind ``"learner"``), including non-learning controllers.

    Returns nothing; all implementations are called.
    """


@hookspec
def gridflex_register_feeder_readers(register: Register) -> None:
    """Register feeder-reader classes (kind ``"feeder_reader"``).

    A reader has a class attribute ``suffixes`` (e.g. ``(".dss",)``) and a method
    ``read(path: Path, taps: str) -> Feeder``. Returns nothing; all implementations are called.
    """


@hookspec(firstresult=True)
def gridflex_read_feeder(path: Path, taps: str) -> "Feeder | None":
    """Read the feeder file ``path`` into an engineering model, or return ``None`` to pass.

    ``taps`` is ``"file"`` (regulator taps as written) or ``"opendss"`` (taps settled by one
    engine solve of the base case). The **first non-None result wins**; gridflex falls back to
    the registered feeder readers by file suffix when no implementation answers.
    """


@hookspec
def gridflex_on_iteration(run: Any, record: dict[str, Any]) -> None:
    """Observe one training iteration: ``record`` maps history-column names to values.

    Called after every validation point of every learner. Returns nothing; all
    implementations are called; an exception aborts the run.
    """
