"""The SUMO backend, one job per module, behind :class:`~cosim.mobility.BatchMobility`.

``network`` (which files SUMO loads; the road network), ``survey`` (the map's traffic before any
episode), ``placement`` (RSUs where the traffic is), ``routes`` (the episode's CVs on the paper's
road), ``process`` (one running SUMO: start, reload, failure, stop), ``pool`` (which vehicle each CV
slot is), ``drawing`` (sumo-gui), ``capacity`` (how many SUMOs this machine holds) and ``mobility``
(:class:`SumoMobility` and :class:`SumoBatchMobility`, which join them).
"""

from .capacity import SUMO_MEMORY_MB, SUMO_OPEN_FILES, check_sumo_capacity
from .mobility import SumoBatchMobility, SumoMobility, placed_config
from .survey import MapSummary

__all__ = ["SUMO_MEMORY_MB", "SUMO_OPEN_FILES", "MapSummary", "SumoBatchMobility", "SumoMobility",
           "check_sumo_capacity", "placed_config"]
