"""Mobility backends: where the client vehicles (CVs) are, slot by slot.

Every backend implements :class:`Mobility`: ``reset(seed)`` and ``advance(dt)``
return a :class:`MobilityState` of arrays with one row per CV *slot* (agent),
and ``close()`` releases resources. CV slots never change meaning within an
episode; a slot with no vehicle in it (SUMO maps) has ``active = False``.

The analytic backend is the paper's road: straight, east-west, lanes 0..L-1
from south to north, the southern half eastbound, uniform speeds per episode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from .config import Config


@dataclass
class MobilityState:
    """Positions and motion of every CV slot, in network coordinates (m, m/s, rad)."""

    x: np.ndarray        # (I,) float
    y: np.ndarray        # (I,) float
    speed: np.ndarray    # (I,) float, m/s
    heading: np.ndarray  # (I,) float, radians, 0 = east (+x), pi/2 = north (+y)
    lane: np.ndarray     # (I,) int, lane index (road: 0..3 south to north; SUMO maps: SUMO's lane index)
    active: np.ndarray   # (I,) bool, a vehicle occupies this CV slot

    def copy(self) -> "MobilityState":
        return MobilityState(*(a.copy() for a in (self.x, self.y, self.speed, self.heading, self.lane, self.active)))


@runtime_checkable
class Mobility(Protocol):
    n_cvs: int

    def reset(self, seed: int | None = None) -> MobilityState: ...

    def advance(self, dt: float) -> MobilityState: ...

    def close(self) -> None: ...


def lane_centres(cfg: Config) -> np.ndarray:
    """Lateral positions of the lanes, south to north, centreline at y = 0."""
    n = 2 * cfg.scenario.lanes_per_direction
    w = cfg.scenario.lane_width_m
    return (np.arange(n) - (n - 1) / 2.0) * w


class AnalyticMobility:
    """The paper's straight road with constant speeds, vectorised over environments.

    Arrays have shape (E, I). ``boundary='wrap'`` re-enters a vehicle at the
    other end of its lane; ``'uturn'`` turns it into the mirror lane of the other
    direction (lane j <-> L-1-j), as SUMO does on the ring in ``sumo_net/road``.
    """

    def __init__(self, cfg: Config, n_envs: int = 1, n_cvs: int | None = None):
        self.cfg = cfg
        self.n_envs = n_envs
        self.n_cvs = n_cvs if n_cvs is not None else cfg.scenario.n_cvs
        self.length = cfg.scenario.road_length_m
        self.lanes_y = lane_centres(cfg)
        self.n_lanes = len(self.lanes_y)
        self._rng = np.random.default_rng()
        shape = (n_envs, self.n_cvs)
        self.x = np.zeros(shape)
        self.speed = np.zeros(shape)
        self.lane = np.zeros(shape, dtype=np.int64)

    def _eastbound(self) -> np.ndarray:
        return self.lane < self.n_lanes // 2

    def batch_state(self) -> MobilityState:
        east = self._eastbound()
        return MobilityState(
            x=self.x.copy(), y=self.lanes_y[self.lane], speed=self.speed.copy(),
            heading=np.where(east, 0.0, np.pi), lane=self.lane.copy(),
            active=np.ones_like(self.x, dtype=bool))

    def reset_batch(self, seed: int | None = None) -> MobilityState:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        shape = (self.n_envs, self.n_cvs)
        lo, hi = self.cfg.scenario.cv_speed_mps
        self.x = self._rng.uniform(0.0, self.length, shape)
        self.speed = self._rng.uniform(lo, hi, shape)
        self.lane = self._rng.integers(0, self.n_lanes, shape)
        return self.batch_state()

    def advance_batch(self, dt: float) -> MobilityState:
        east = self._eastbound()
        x = self.x + np.where(east, 1.0, -1.0) * self.speed * dt
        if self.cfg.scenario.boundary == "wrap":
            x = np.mod(x, self.length)
        else:
            # Fold the path onto [0, L]: each pass over an end turns the vehicle around.
            period = 2.0 * self.length
            u = np.mod(x, period)
            flips = np.floor_divide(x, self.length).astype(np.int64) % 2 == 1
            x = np.where(u > self.length, period - u, u)
            self.lane = np.where(flips, self.n_lanes - 1 - self.lane, self.lane)
        self.x = x
        return self.batch_state()

    # Single-environment interface (Mobility protocol): the first environment's row.
    def reset(self, seed: int | None = None) -> MobilityState:
        return _row(self.reset_batch(seed))

    def advance(self, dt: float) -> MobilityState:
        return _row(self.advance_batch(dt))

    def close(self) -> None:
        pass


def _row(s: MobilityState, e: int = 0) -> MobilityState:
    return MobilityState(s.x[e], s.y[e], s.speed[e], s.heading[e], s.lane[e], s.active[e])


def stack_states(states: list[MobilityState]) -> MobilityState:
    """(I,) states of several environments -> one (E, I) state."""
    return MobilityState(*(np.stack([getattr(s, f) for s in states]) for f in
                           ("x", "y", "speed", "heading", "lane", "active")))
