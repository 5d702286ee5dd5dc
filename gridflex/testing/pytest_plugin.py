"""gridflex's pytest plugin (entry point ``gridflex`` in group ``pytest11``).

Installed with gridflex, so any test session in an environment with gridflex gets:

* the fixture ``gridflex_registry``: the :class:`~gridflex.plugins.registry.Registry` of every
  installed plugin (session-scoped), e.g. to look a component up by name as a scenario would;
* the fixture ``gridflex_tiny_world``: a factory ``gridflex_tiny_world(devices=..., **sections)``
  of tiny IEEE 13 worlds (:func:`gridflex.testing.tiny_world`) on that registry;
* the marker ``gridflex_contract``, put on every test of the contract suites, so
  ``pytest -m gridflex_contract`` runs just those;
* a header line with gridflex's version.

Importing this module is cheap (no torch): pytest loads it in every session of the environment.
The suites themselves (:mod:`gridflex.testing`) do not depend on it: they also run where the
entry point is not installed.
"""

from __future__ import annotations

import pytest

MARKER = "gridflex_contract"
_SUITES = ("DeviceContract", "SolverContract", "LearnerContract")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}: a test of a gridflex.testing contract suite")


def pytest_report_header(config: pytest.Config) -> str:
    import gridflex

    return f"gridflex {gridflex.__version__} (contract suites: gridflex.testing)"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that a contract suite defines with ``gridflex_contract``."""
    for item in items:
        cls = getattr(item, "cls", None)
        if cls is not None and any(base.__name__ in _SUITES and base.__module__.startswith("gridflex.testing")
                                   for base in cls.__mro__):
            item.add_marker(MARKER)


@pytest.fixture(scope="session")
def gridflex_registry():
    """Registry of every installed gridflex plugin (built once per session)."""
    from gridflex.plugins.registry import load_registry

    return load_registry()


@pytest.fixture
def gridflex_tiny_world(gridflex_registry):
    """Factory of tiny IEEE 13 worlds: ``gridflex_tiny_world(devices=[...], learner={...})``
    (:func:`gridflex.testing.tiny_world` on the installed plugins)."""
    from gridflex.testing.learners import TINY_DEVICES, tiny_world

    pm, registry = gridflex_registry

    def build(devices=TINY_DEVICES, **sections):
        return tiny_world(devices, registry=registry, pm=pm, **sections)

    return build
