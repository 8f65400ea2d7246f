"""SUMO mobility under its former module name: the names callers import, from :mod:`cosim.sumo`."""

from sumo_net import generate_road as road

from .sumo.capacity import SUMO_MEMORY_MB, SUMO_OPEN_FILES, check_sumo_capacity
from .sumo.drawing import GUI_LABEL_LIMIT
from .sumo.mobility import SumoBatchMobility, SumoMobility, placed_config
from .sumo.network import NetInfo as _NetInfo
from .sumo.placement import (BALANCE_SLACK, balance_loads, busiest_share, covered_share, greedy_max_coverage,
                             rsu_loads)
from .sumo.placement import place_by_traffic as _place_by_traffic
from .sumo.placement import survey_samples as _survey_samples
from .sumo.survey import WARMUP_WINDOW_S, MapSummary

__all__ = ["BALANCE_SLACK", "GUI_LABEL_LIMIT", "SUMO_MEMORY_MB", "SUMO_OPEN_FILES", "WARMUP_WINDOW_S",
           "MapSummary", "SumoBatchMobility", "SumoMobility", "_NetInfo", "_place_by_traffic", "_survey_samples",
           "balance_loads", "busiest_share", "check_sumo_capacity", "covered_share", "greedy_max_coverage",
           "placed_config", "road", "rsu_loads"]
