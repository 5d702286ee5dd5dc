"""The network floor: an engineering feeder in, differentiable three-phase AC physics out.

``feeder`` (the engineering description read from a file) → ``grid_build`` with ``admittance``
(primitives, node and branch tables) → ``grid.Grid`` → ``powerflow`` (the Z-bus fixed point and
its implicit-differentiation adapter). Beside them: ``regulators`` (tap treatments),
``constraints`` (monitored nodes and conductors with their limits), ``linearised`` and
``equations`` (the linear and sparse network models) and ``feasibility`` (the convex projection
layer). Nothing here knows about devices, learners or scenarios.
"""

from gridflex.network.feeder import Feeder
from gridflex.network.grid import Branch, Grid
from gridflex.network.grid_build import build_grid

__all__ = ["Branch", "Feeder", "Grid", "build_grid"]
