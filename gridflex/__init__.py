"""gridflex: decentralised learning for grid-edge flexibility with differentiable AC physics.

Importing ``gridflex`` is light (pluggy only, no torch): it defines the version and the pluggy
markers a plugin uses, ``gridflex.hookimpl`` for its hook implementations (and
``gridflex.hookspec``, used by :mod:`gridflex.plugins.hookspecs`). Everything else lives in
subpackages: the plugin API in :mod:`gridflex.plugins`, contract test suites for plugin authors in
:mod:`gridflex.testing`. Writing a plugin: docs/plugins.md.
"""

import pluggy

__version__ = "0.1.0"

#: pluggy project name: hook names are prefixed ``gridflex_`` and entry points use group ``gridflex``
PROJECT = "gridflex"
#: marks the hook specifications in :mod:`gridflex.plugins.hookspecs`
hookspec = pluggy.HookspecMarker(PROJECT)
#: marks a plugin's hook implementations: ``@gridflex.hookimpl def gridflex_register_devices(register): ...``
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = ["PROJECT", "__version__", "hookimpl", "hookspec"]
