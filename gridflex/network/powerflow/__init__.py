"""Exact three-phase AC power flow (Z-bus fixed point) with implicit differentiation.

* :mod:`~gridflex.network.powerflow.zbus`: precomputed network, fixed point, Anderson, adjoint (numerics);
* :mod:`~gridflex.network.powerflow.loads`: OpenDSS load-model currents and their derivatives;
* :mod:`~gridflex.network.powerflow.implicit`: the ``torch.autograd.Function`` adapter;
* :mod:`~gridflex.network.powerflow.result`: :class:`PowerFlowResult` and :func:`solve_power_flow`;
* :mod:`~gridflex.network.powerflow.taps`: per-sample regulator taps as a low-rank update of one network;
* :mod:`~gridflex.network.powerflow.precision`: extended-precision residual steps for stiff admittances;
* :mod:`~gridflex.network.powerflow.sparse`: Z products by one sparse LU of Y (large feeders, ``method="sparse"``).

The ``ac3ph`` solver plugin (``gridflex_plugins.solvers.ac3ph``) wraps these for scenarios.
"""

from gridflex.network.powerflow.implicit import AdjointReport, SolveOptions, ZBusFixedPoint
from gridflex.network.powerflow.result import PowerFlowResult, combine_results, map_batch, solve_power_flow
from gridflex.network.powerflow.zbus import ZBusNetwork, build_network, load_nodes

__all__ = [
    "AdjointReport",
    "PowerFlowResult",
    "SolveOptions",
    "ZBusFixedPoint",
    "ZBusNetwork",
    "build_network",
    "combine_results",
    "load_nodes",
    "map_batch",
    "solve_power_flow",
]
