"""gridflex: decentralised learning for grid-edge flexibility with differentiable AC physics."""

__version__ = "0.1.0"
