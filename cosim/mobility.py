"""Mobility backends: where the client vehicles (CVs) are, slot by slot.

Every backend is a :class:`BatchMobility`: ``reset_batch(seed)`` and
``advance_batch(dt)`` return a :class:`MobilityState` of (E, I) arrays, one row
per environment and one column per CV *slot* (agent); ``rsu_configs()`` names
the RSUs in use and ``close()`` releases resources. GUI backends also implement
``show_decisions`` and ``screenshot``. CV slots never change meaning within an
episode; a slot with no vehicle in it (SUMO maps) has ``active = False``.
Backends are registered by name in :mod:`cosim.backends`.

The analytic backend is the paper's road: straight, east-west, lanes 0..L-1
from south to north, the southern half eastbound, uniform speeds per episode.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from .backends import BACKENDS, get_backend
from .config import Config, CosimError, RSUConfig


@dataclass
class MobilityState:
    """Positions and motion of every CV slot, in network coordinates (m, m/s, rad)."""

    x: np.ndarray        # (I,) float
    y: np.ndarray        # (I,) float
    speed: np.ndarray    # (I,) float, m/s
    heading: np.ndarray  # (I,) float, radians, 0 = east (+x), pi/2 = north (+y)
    lane: np.ndarray     # (I,) int, lane index (road: 0..3 south to north; SUMO maps: SUMO's lane index)
    active: np.ndarray   # (I,) bool, a vehicle occupies this CV slot

    def copy(self) -> MobilityState:
        return MobilityState(*(a.copy() for a in (self.x, self.y, self.speed, self.heading, self.lane, self.active)))


@runtime_checkable
class Mobility(Protocol):
    """One simulation (E = 1) with (I,) arrays: what :class:`~cosim.sumo_mobility.SumoMobility` is."""

    n_cvs: int

    def reset(self, seed: int | None = None) -> MobilityState: ...

    def advance(self, dt: float) -> MobilityState: ...

    def close(self) -> None: ...


class BatchMobility(ABC):
    """The interface the environment calls, and all of it: E simulations with (E, I) arrays.

    A subclass is constructed as ``Backend(cfg, n_envs=E, n_cvs=I, **options)``; only backends
    registered with ``gui=True`` receive ``gui``/``record_dir`` options.
    """

    cfg: Config
    n_envs: int
    n_cvs: int

    @abstractmethod
    def reset_batch(self, seed: int | None = None) -> MobilityState:
        """Start a new episode in every environment (``seed`` restarts the backend's stream)."""

    @abstractmethod
    def advance_batch(self, dt: float) -> MobilityState:
        """Move every environment on by ``dt`` seconds."""

    def rsu_configs(self) -> tuple[RSUConfig, ...]:
        """The RSUs in use (by default the config's; a map backend may check or place them)."""
        return self.cfg.scenario.rsus

    def close(self) -> None:  # noqa: B027 - optional: a backend without processes or files has nothing to release
        """Release simulators, processes and files; calling it twice is harmless."""

    # GUI hooks: only backends registered with gui=True implement them.
    def show_decisions(self, colors: Sequence[Sequence[int]], labels: Sequence[str] | None = None,
                       tags: Sequence[str] | None = None) -> None:
        raise CosimError(f"the {type(self).__name__} backend has no GUI")

    def screenshot(self, path: str | Path) -> None:
        raise CosimError(f"the {type(self).__name__} backend has no GUI")


def make_mobility(cfg: Config, backend: str, n_envs: int, n_cvs: int, **options: Any) -> BatchMobility:
    """The registered backend ``backend`` for E = ``n_envs`` environments of ``n_cvs`` CVs.

    ``options`` go to the backend's constructor; ``gui``/``record_dir`` only to GUI backends.
    """
    spec = get_backend(backend)
    gui_options = {k: v for k, v in options.items() if k in ("gui", "record_dir") and v}
    if gui_options and not spec.gui:
        gui_names = ", ".join(n for n, b in BACKENDS.items() if b.gui)
        raise CosimError(f"--gui and --record need a backend with a GUI ({gui_names}), not '{backend}'")
    if not spec.gui:
        options = {k: v for k, v in options.items() if k not in ("gui", "record_dir")}
    return spec.load()(cfg, n_envs=n_envs, n_cvs=n_cvs, **options)


def draw_road_start(rng: np.random.Generator, cfg: Config, shape: tuple[int, ...]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The CVs' start on the paper's road: position x, speed, lane (0..2L-1), uniform.

    Both backends draw the road's episode start here, so one seed gives the same start.
    """
    lo, hi = cfg.scenario.cv_speed_mps
    x = rng.uniform(0.0, cfg.scenario.road_length_m, shape)
    speed = rng.uniform(lo, hi, shape)
    lane = rng.integers(0, 2 * cfg.scenario.lanes_per_direction, shape)
    return x, speed, lane


def lane_centres(cfg: Config) -> np.ndarray:
    """Lateral positions of the lanes, south to north, centreline at y = 0."""
    n = 2 * cfg.scenario.lanes_per_direction
    w = cfg.scenario.lane_width_m
    return (np.arange(n) - (n - 1) / 2.0) * w


class AnalyticMobility(BatchMobility):
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
        self.x, self.speed, self.lane = draw_road_start(self._rng, self.cfg, (self.n_envs, self.n_cvs))
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


def _row(s: MobilityState, e: int = 0) -> MobilityState:
    return MobilityState(s.x[e], s.y[e], s.speed[e], s.heading[e], s.lane[e], s.active[e])


def stack_states(states: list[MobilityState]) -> MobilityState:
    """(I,) states of several environments -> one (E, I) state."""
    return MobilityState(*(np.stack([getattr(s, f) for s in states]) for f in
                           ("x", "y", "speed", "heading", "lane", "active")))
