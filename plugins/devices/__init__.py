"""Built-in device fleets: battery, heat pump, generator.

Models, parameters with sources, sign convention and reference controllers: ``docs/devices.md``.
"""

from __future__ import annotations

from gridflex.plugins.hookspecs import hookimpl

from .battery import Battery
from .generator import Generator
from .heat_pump import HeatPump

__all__ = ["Battery", "Generator", "HeatPump", "gridflex_register_devices"]


@hookimpl
def gridflex_register_devices(register):
    """Register the battery, heat-pump and generator fleets."""
    register(Battery)
    register(HeatPump)
    register(Generator)
