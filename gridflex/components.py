"""Base classes of the components plugins register.

Every component has a class attribute ``name`` (the scenario's ``type``), ``kind`` and a nested
pydantic model ``Config`` that validates its ``params`` (unknown keys rejected, units in field
names). A component class documents each config field with a one-line ``description``.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class StrictConfig(BaseModel):
    """Base of every component config: unknown keys are errors; values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class Component:
    """A pluggable component. Subclasses set ``name``, ``kind`` and ``Config``."""

    name: ClassVar[str]
    kind: ClassVar[str]
    Config: ClassVar[type[StrictConfig]] = StrictConfig

    @classmethod
    def summary(cls) -> str:
        """First line of the class docstring."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


class DeviceModel(Component):
    """A fleet of one device type: all agents of the type as batched tensors.

    Shapes: ``B`` days in a batch, ``N`` agents of this type, ``d = action_dim``. A fleet is
    built once per scenario from its ``Config`` (parameter ranges) and a seeded generator, then
    stepped through a day one time step at a time by the environment; every method is batched
    over ``[B, N]`` and differentiable in torch (no per-agent Python loops).

    Sign convention (DESIGN §1): ``demand`` returns power drawn from the grid (positive = load).
    Subclasses implement ``initial_state``, ``observation``, ``action_bounds``, ``step``,
    ``cost``, ``residuals``, ``terminal_residuals`` and ``demand``; see the built-in battery,
    heat-pump and generator plugins.
    """

    kind = "device"
    action_dim: ClassVar[int] = 1


class NetworkSolver(Component):
    """A network solver: nodal injections in, voltages, currents and source power out."""

    kind = "solver"


class Learner(Component):
    """A learner or non-learning controller."""

    kind = "learner"


class FeederReader(Component):
    """Reads a feeder file into a :class:`gridflex.feeder.Feeder`. ``suffixes`` lists file suffixes."""

    kind = "feeder_reader"
    suffixes: ClassVar[tuple[str, ...]] = ()
