"""The fleet floor: who sits where, and the exogenous days they live through.

``population`` places households and devices on the grid's load nodes; ``profiles`` reads the
shipped household, PV, temperature and price data and splits it, leak-free, into training,
validation and test days.
"""

from gridflex.fleet.population import Placement, place_devices, place_households
from gridflex.fleet.profiles import DayBatch, DaySet, ProfileData, load_test_days

__all__ = ["DayBatch", "DaySet", "Placement", "ProfileData", "load_test_days", "place_devices",
           "place_households"]
