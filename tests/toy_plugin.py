"""A tiny plugin used by the tests: one device, one learner, registered through the real hooks."""

from __future__ import annotations

from pydantic import Field

from gridflex.plugins.contracts import DeviceModel, Learner, StrictConfig
from gridflex.plugins.hookspecs import hookimpl


class ToyStore(DeviceModel):
    """A test device with a few unit-named parameters."""

    name = "toy_store"

    class Config(StrictConfig):
        p_max_kw: float = Field(5.0, gt=0, le=1000, description="rated power (kW)")
        e_max_kwh: float = Field(10.0, gt=0, description="capacity (kWh)")
        efficiency: float = Field(0.95, gt=0, le=1, description="one-way efficiency")


class ToyLearner(Learner):
    """A test learner."""

    name = "toy_learner"

    class Config(StrictConfig):
        eta: float = Field(0.1, gt=0, description="step size")
        epochs: int = Field(3, ge=1, description="inner epochs")


@hookimpl
def gridflex_register_devices(register):
    register(ToyStore)


@hookimpl
def gridflex_register_learners(register):
    register(ToyLearner)
