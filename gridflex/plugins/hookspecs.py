"""The gridflex plugin API: every hook a plugin may implement.

A plugin is any importable module or object exposing functions decorated with
:data:`gridflex.hookimpl`, advertised through an entry point in the group ``gridflex``::

    # a third party's pyproject.toml
    [project.entry-points.gridflex]
    my_devices = "my_package.gridflex_plugin"

    # my_package/gridflex_plugin.py
    import gridflex

    @gridflex.hookimpl
    def gridflex_register_devices(register):
        register(MyDevice)

Built-in plugins (``gridflex_plugins``) are registered in exactly this way.
``gridflex.plugins.hookspecs.hookimpl`` is the same marker object as ``gridflex.hookimpl``.

Components (devices, solvers, learners, feeder readers) are classes with a class attribute
``name`` (the string a scenario uses as ``type``), a class attribute ``kind`` and a nested pydantic
``Config`` model (unknown keys are rejected; units in field names). Plugins hand them to gridflex
through the ``register`` callback passed to each ``gridflex_register_*`` hook. ``register`` checks
each class at once and raises :class:`~gridflex.errors.PluginError` naming the plugin, the class
and what is wrong when it does not subclass its kind's base class
(:mod:`gridflex.plugins.contracts`), lacks ``name`` or ``Config``, still has abstract methods, or
reuses a name already registered (naming both plugins). The behaviour beyond that (shapes, units,
purity, decentralisation) is checked by the contract suites of :mod:`gridflex.testing`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from gridflex import PROJECT, hookimpl, hookspec

if TYPE_CHECKING:  # pragma: no cover - typing only
    from gridflex.learning.training import RunInfo
    from gridflex.network.feeder import Feeder
    from gridflex.plugins.contracts import DeviceModel, FeederReader, Learner, NetworkSolver

__all__ = ["PROJECT", "Register", "hookimpl", "hookspec"]

#: ``register(cls)``: hands one component class to gridflex (checked on the spot)
Register = Callable[[type], None]


@hookspec
def gridflex_register_devices(register: Callable[[type[DeviceModel]], None]) -> None:
    """Register device-model classes (kind ``"device"``), one ``register(cls)`` call each.

    A device class models a *fleet*: every agent of that type as batched ``[B, N, ...]`` tensors
    (:class:`~gridflex.plugins.contracts.DeviceModel`). All implementations are called.

    :param register: callback taking a concrete subclass of
        :class:`~gridflex.plugins.contracts.DeviceModel` with ``name`` and ``Config``; raises
        :class:`~gridflex.errors.PluginError` for anything else.
    :return: nothing (a returned value is ignored).
    """


@hookspec
def gridflex_register_solvers(register: Callable[[type[NetworkSolver]], None]) -> None:
    """Register network-solver classes (kind ``"solver"``), e.g. the exact ``ac3ph``.

    All implementations are called.

    :param register: callback taking a concrete subclass of
        :class:`~gridflex.plugins.contracts.NetworkSolver` with ``name`` and ``Config``.
    :return: nothing (a returned value is ignored).
    """


@hookspec
def gridflex_register_learners(register: Callable[[type[Learner]], None]) -> None:
    """Register learner classes (kind ``"learner"``), including non-learning controllers.

    All implementations are called.

    :param register: callback taking a concrete subclass of
        :class:`~gridflex.plugins.contracts.Learner` with ``name`` and ``Config``.
    :return: nothing (a returned value is ignored).
    """


@hookspec
def gridflex_register_feeder_readers(register: Callable[[type[FeederReader]], None]) -> None:
    """Register feeder-reader classes (kind ``"feeder_reader"``).

    A reader has a class attribute ``suffixes`` (e.g. ``(".dss",)``) and a method
    ``read(path: Path, taps: str) -> Feeder``. All implementations are called.

    :param register: callback taking a subclass of
        :class:`~gridflex.plugins.contracts.FeederReader` with ``name`` and ``Config``.
    :return: nothing (a returned value is ignored).
    """


@hookspec(firstresult=True)
def gridflex_read_feeder(path: Path, taps: str) -> Feeder | None:
    """Read the feeder file ``path`` into an engineering model, or return ``None`` to pass.

    The **first non-None result wins**; gridflex falls back to the registered feeder readers by
    file suffix when no implementation answers.

    :param path: the feeder file (absolute).
    :param taps: ``"file"`` (regulator taps as written) or ``"opendss"`` (taps settled by one
        engine solve of the base case).
    :return: a :class:`~gridflex.network.feeder.Feeder` (SI units, the file's element order), or
        ``None`` to let the next implementation or reader answer.
    """


@hookspec
def gridflex_on_iteration(run: RunInfo | Any, record: dict[str, Any]) -> None:
    """Observe one validation point of a training run.

    Called after every validation point of every learner that trains. All implementations are
    called; an exception aborts the run.

    :param run: a :class:`~gridflex.learning.training.RunInfo` (``scenario``, ``learner``,
        ``seed``, ``out_dir``), or ``None`` when the trainer was built without one (tests).
    :param record: the ``history.csv`` row just written: column name -> value (``iteration``,
        ``wall_s`` in s of training clock, ``val_cost_per_day`` in EUR/day,
        ``val_violation_rate`` as a fraction, ...; ``None`` where not meaningful). A copy: changing
        it changes nothing.
    :return: nothing (a returned value is ignored).
    """
