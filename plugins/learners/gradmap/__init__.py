"""The GradMAP family of learners (docs/design.md §3): ``gradmap``, ``gradmap_e1``, ``ssl_penalty``, ``ssl_pd``.

One plugin package: shared code in :mod:`.lagrangian` (Lagrangian, duals, dual ascent),
:mod:`.surrogate` (proximal targets, batched regression) and :mod:`.learners` (the four learners).
"""

from __future__ import annotations

from gridflex.plugins.hookspecs import hookimpl

from .learners import LEARNERS


@hookimpl
def gridflex_register_learners(register) -> None:
    for cls in LEARNERS:
        register(cls)
