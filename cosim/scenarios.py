"""Scenarios for training across fleets and RSU layouts (``training.scenarios``).

A :class:`Scenario` is a fleet size and an RSU layout on the analytic road;
:class:`ScenarioSampler` draws one per episode batch from the config's ranges,
from its own seeded generator (so a run retrains bit-identically, and a resumed
run draws the same scenarios as an uninterrupted one).

    sampler = ScenarioSampler(cfg)
    scn = sampler.draw()              # Scenario(n_cvs=7, rsus=(...))
    sim = BatchCoSim(scn.apply(cfg), n_envs=16, seed=scn.seed)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import Config, ConfigError, RSUConfig, to_dict

MAX_TRIES = 10_000  # layout redraws before cover_road gives up
GAP_TOL_M = 5.0     # coverage gaps up to this long are ignored by cover_road


@dataclass(frozen=True)
class Scenario:
    """A fleet size and an RSU layout (plus the seed of the episodes played on it)."""

    n_cvs: int
    rsus: tuple[RSUConfig, ...]
    seed: int = 0
    rsu_cpu_hz: float | None = None  # every RSU's F_max (None: the config's)

    def apply(self, cfg: Config) -> Config:
        """``cfg`` with this scenario's CVs, RSUs (and RSU CPU)."""
        cpu = {} if self.rsu_cpu_hz is None else {"compute.rsu_cpu_hz": self.rsu_cpu_hz}
        return cfg.replace(**{"scenario.n_cvs": self.n_cvs, "scenario.rsus": [to_dict(r) for r in self.rsus]}, **cpu)

    @property
    def label(self) -> str:
        xs = ",".join(f"{r.x:.0f}" for r in self.rsus)
        return f"{self.n_cvs} CVs, {len(self.rsus)} RSUs at x={xs}"


def check_ranges(cfg: Config) -> None:
    """One-line ConfigError when ``training.scenarios`` cannot be drawn on this config."""
    s = cfg.training.scenarios
    if not s.enabled:
        return
    if cfg.training.arch != "set":
        raise ConfigError("training.scenarios.enabled needs training.arch=set (the MLP is tied to one CV and RSU "
                          "count)")
    if cfg.backend != "analytic":
        hint = (" (recorded traces bring their own; several trace folders are mixed per batch with "
                "training.scenarios.enabled=false)" if cfg.backend == "trace" else "")
        raise ConfigError(f"training.scenarios.enabled needs backend analytic (got {cfg.backend}): RSU layouts are "
                          f"drawn on the analytic road{hint}")
    lo, hi = s.rsu_x_m
    if hi > cfg.scenario.road_length_m:
        raise ConfigError(f"training.scenarios.rsu_x_m: {hi:g} lies beyond the road "
                          f"(scenario.road_length_m = {cfg.scenario.road_length_m:g})")
    if s.min_gap_m * (s.n_rsus[1] - 1) > hi - lo:
        raise ConfigError(f"training.scenarios.min_gap_m: {s.n_rsus[1]} RSUs {s.min_gap_m:g} m apart do not fit in "
                          f"rsu_x_m [{lo:g}, {hi:g}]")


class ScenarioSampler:
    """Draws scenarios from ``cfg.training.scenarios`` with its own generator."""

    def __init__(self, cfg: Config, seed: int | None = None):
        check_ranges(cfg)
        self.ranges = cfg.training.scenarios
        first = cfg.scenario.rsus[0]
        self.rsu_y, self.rsu_height = first.y, first.height  # drawn RSUs stand where the config's first one does
        sc = cfg.scenario
        self.road_length = sc.road_length_m
        self.lateral = abs(first.y) + (sc.lanes_per_direction - 0.5) * sc.lane_width_m  # farthest lane's centre
        # A stream of its own (the config seed's 'scenarios' child), apart from the simulator's.
        ss = np.random.SeedSequence([cfg.seed if seed is None else seed, 0x5CE7])
        self.rng = np.random.default_rng(ss)
        self.base = Scenario(cfg.scenario.n_cvs, cfg.scenario.rsus)
        self.n_envs = cfg.training.n_envs

    def episodes_per_batch(self, scn: Scenario) -> int:
        """Episodes to play on ``scn`` in one batch (about agents_per_batch agent-episodes, or n_envs)."""
        apb = self.ranges.agents_per_batch
        return max(1, round(apb / scn.n_cvs)) if apb > 0 else self.n_envs

    def draw(self) -> Scenario:
        r, g = self.ranges, self.rng
        if g.random() < r.base_share:
            return Scenario(self.base.n_cvs, self.base.rsus, seed=int(g.integers(0, 2**31 - 1)))
        n_cvs = int(g.integers(r.n_cvs[0], r.n_cvs[1] + 1))
        K = int(g.integers(r.n_rsus[0], r.n_rsus[1] + 1))
        lo, hi = r.rsu_x_m
        for _ in range(MAX_TRIES):
            # Uniform over layouts with gaps >= min_gap: sorted uniforms on the shortened interval, then
            # each one shifted by its rank times the gap.
            x = np.sort(g.uniform(lo, hi - r.min_gap_m * (K - 1), K)) + r.min_gap_m * np.arange(K)
            radius = g.uniform(r.rsu_radius_m[0], r.rsu_radius_m[1], K)
            if not r.cover_road or self.covers_road(x, radius):
                break
        else:
            raise ConfigError(f"training.scenarios: no layout of {K} RSUs drawn in {MAX_TRIES} tries covers the road "
                              f"(widen rsu_radius_m or rsu_x_m, raise n_rsus, or set cover_road=false)")
        # Draws beyond the original ones come after them, so that configs without them draw as before.
        side = np.where(g.random(K) < 0.5, -1.0, 1.0) if r.both_sides else np.ones(K)
        cpu = float(g.uniform(*r.rsu_cpu_hz)) if r.rsu_cpu_hz is not None else None
        rsus = tuple(RSUConfig(float(xk), float(sk * self.rsu_y), self.rsu_height, float(rk))
                     for xk, rk, sk in zip(x, radius, side))
        return Scenario(n_cvs, rsus, seed=int(g.integers(0, 2**31 - 1)), rsu_cpu_hz=cpu)

    def covers_road(self, x: np.ndarray, radius: np.ndarray) -> bool:
        """Whether every lane is within some RSU's radius along the whole road (sorted x), up to
        GAP_TOL_M (the paper's own layout leaves 0.6 m at each end of the outer lanes)."""
        reach = np.sqrt(np.maximum(radius**2 - self.lateral**2, 0.0))  # half-width covered on the farthest lane
        left, right = x - reach, x + reach
        return bool(left[0] <= GAP_TOL_M and right[-1] >= self.road_length - GAP_TOL_M
                    and (np.maximum.accumulate(right)[:-1] + GAP_TOL_M >= left[1:]).all())

    def state_dict(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state
