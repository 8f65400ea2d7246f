"""The CVs of an episode on the paper's road, written as SUMO routes.

:func:`draw_episode` draws x, speed and lane with the very numpy calls, in the same order, of
``AnalyticMobility.reset_batch`` (:func:`cosim.mobility.draw_road_start`), so one seed gives both
backends the same start. The CVs are written into a route file and SUMO is (re)loaded with it, rather
than added over TraCI: XML sets every attribute at once. ``departPos`` is the front bumper, which is
what SUMO reports as a vehicle's position; ``departSpeed = v`` and ``speedFactor = v / speed limit``
with the CV vType's ``sigma = speedDev = 0`` give exact constant speeds; ``insertionChecks="none"``
puts every CV on the road at t = 0 however close it was drawn to another; the vType's
``lcKeepRight = 0`` keeps a CV in its lane. The road is a ring (lane-to-lane U-turns at both ends, a
repeating route), so a CV turns into the mirror lane at an end as the analytic fold does. The two
backends part only where the analytic model is unphysical (two CVs drawn closer in one lane than they
can be, or a faster CV reaching a slower one: SUMO's car following brakes or overtakes) and, for the
second a CV's rear takes through a U-turn, in the heading (SUMO reports the body's angle).
``sumo.background_vehicles`` vehicles of vType ``background`` are inserted at free places drawn by
SUMO's own ``--seed``.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sumo_net import generate_road as road

from ..config import Config
from ..mobility import draw_road_start


# The model's lanes 0..2L-1 (south to north) and SUMO's (edge, index).
def to_sumo_lane(lane: int, lanes_per_direction: int) -> tuple[str, int]:
    if lane < lanes_per_direction:
        return road.EAST, lane
    return road.WEST, 2 * lanes_per_direction - 1 - lane


@dataclass(frozen=True)
class RoadStart:
    """Start of the CVs on the road, arrays of shape (E, I) (or (I,) for one environment)."""

    x: np.ndarray
    speed: np.ndarray
    lane: np.ndarray

    def row(self, e: int) -> RoadStart:
        return RoadStart(self.x[e], self.speed[e], self.lane[e])


def draw_episode(rng: np.random.Generator, cfg: Config, n_envs: int, n_cvs: int,
                 on_road: bool) -> tuple[RoadStart | None, np.ndarray]:
    """The CVs' start on the road (None on other maps) and each environment's SUMO seed."""
    placement = None
    if on_road:
        placement = RoadStart(*draw_road_start(rng, cfg, (n_envs, n_cvs)))
    return placement, rng.integers(0, 2**31 - 1, n_envs)


def write_episode_routes(path: Path, cfg: Config, spec: Any, routes_file: Path, start: RoadStart) -> None:
    """The road's routes, looping just long enough for an episode, with this episode's vehicles."""
    routes = ET.parse(routes_file).getroot()
    # Loading a route expands its repeats, which takes time: a vehicle at 1.5 times the faster
    # of the speed limit and the fastest CV must not reach the end of its route in an episode.
    episode_s = cfg.scenario.episode_slots * cfg.scenario.slot_s
    fastest = 1.5 * max(spec.speed_limit_mps, cfg.scenario.cv_speed_mps[1])
    loops = math.ceil(episode_s * fastest / (2.0 * spec.length_m)) + 1
    for route in routes.iter("route"):
        route.set("repeat", str(loops))
    for i, (x, v, lane) in enumerate(zip(start.x, start.speed, start.lane)):
        edge, index = to_sumo_lane(int(lane), spec.lanes_per_direction)
        pos = x if edge == road.EAST else spec.length_m - x
        ET.SubElement(routes, "vehicle", id=f"cv{i}", type=road.CV_VTYPE,
                      route=road.ROUTE_EAST if edge == road.EAST else road.ROUTE_WEST, depart="0",
                      departLane=str(index), departPos=repr(float(pos)), departSpeed=repr(float(v)),
                      speedFactor=repr(float(v) / spec.speed_limit_mps), insertionChecks="none")
    road.add_background(routes, cfg.sumo.background_vehicles)
    ET.ElementTree(routes).write(path, encoding="UTF-8", xml_declaration=True)
