"""What a plugin implements and how plugins are found.

``contracts`` defines the abstract component kinds (device model, network solver, learner, feeder
reader) with shapes and units; ``hookspecs`` the pluggy hooks a plugin implements to register
them; ``registry`` loads every installed plugin (entry-point group ``gridflex``) into one registry
keyed by kind and name.
"""

from gridflex.plugins.contracts import (
    Component,
    DeviceModel,
    FeederReader,
    Learner,
    NetworkSolver,
    StepInputs,
    StrictConfig,
)
from gridflex.plugins.registry import Registry, load_registry

__all__ = ["Component", "DeviceModel", "FeederReader", "Learner", "NetworkSolver", "Registry",
           "StepInputs", "StrictConfig", "load_registry"]
