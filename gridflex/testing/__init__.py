"""Contract test suites for gridflex plugins (pytest).

Subclass a suite in a test module, name your class and its scenario ``params``, and pytest runs
every check of the contract on it::

    from gridflex.testing import DeviceContract

    class TestWaterHeater(DeviceContract):
        device_class = WaterHeater
        config = {"p_max_kw": [2.0, 3.0]}
        demand_sign = "load"

* :class:`DeviceContract` (:mod:`gridflex.testing.devices`): shapes, dtypes, bounds, sign
  convention, determinism, purity, agent and day independence, gradients, optional convex model;
* :class:`SolverContract` (:mod:`gridflex.testing.solvers`): result type and shapes, convergence,
  agreement with ``ac3ph`` on the shipped IEEE 13 feeder, gradients w.r.t. ``p_kw``;
* :class:`LearnerContract` (:mod:`gridflex.testing.learners`): construction on a tiny world built
  from the shipped ``ieee13_small`` scenario, ``act`` shapes and range, decentralisation, a tiny
  training budget;
* :class:`HostSyncs` (:mod:`gridflex.testing.host_sync`): records the operations that would make
  a GPU wait for the host, on a CPU too (for code meant to run captured, e.g. a device step).

The package is also a pytest plugin (entry point ``gridflex`` in group ``pytest11``,
:mod:`gridflex.testing.pytest_plugin`) that adds the fixtures ``gridflex_registry`` and
``gridflex_tiny_world``. Requires pytest (the ``test`` extra). Nothing in gridflex imports this
package; it may import all of gridflex. Guide: docs/plugins.md.
"""

import importlib

#: public name -> module that defines it; imported on first use (PEP 562), so that importing the
#: pytest plugin (this package's submodule, loaded in every pytest session) stays light
_EXPORTS = {
    "synthetic_day": "gridflex.testing._common",
    "HostSyncs": "gridflex.testing.host_sync",
    "CONTROLLERS": "gridflex.testing.devices",
    "DEMAND_SIGNS": "gridflex.testing.devices",
    "DeviceContract": "gridflex.testing.devices",
    "device_outputs": "gridflex.testing.devices",
    "SolverContract": "gridflex.testing.solvers",
    "build_solver": "gridflex.testing.solvers",
    "shipped_grid": "gridflex.testing.solvers",
    "TINY_DEVICES": "gridflex.testing.learners",
    "ActCall": "gridflex.testing.learners",
    "LearnerContract": "gridflex.testing.learners",
    "record_days": "gridflex.testing.learners",
    "tiny_scenario": "gridflex.testing.learners",
    "tiny_world": "gridflex.testing.learners",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gridflex.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
