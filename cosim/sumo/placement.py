"""Where the RSUs go on a map other than the paper's road (``sumo.rsu_placement``).

``fit`` keeps ``scenario.rsus`` when they are not the paper's road's and lie on the map; otherwise
(and always with ``auto`` or ``sumo.n_rsus``) the RSUs go to candidate sites at junctions and along
the roads (``sumo.rsu_sites``) by greedy maximum coverage of the vehicle positions the survey
sampled in the episode window (each gain optionally capped, ``sumo.rsu_load_cap``), at least
``sumo.rsu_spacing_m`` apart (less on small maps, within limits, halved until they fit); a local
search then unloads the busiest RSU (``sumo.rsu_balance``). ``config`` uses ``scenario.rsus`` or
fails. Each map is surveyed, and its RSUs placed, once per process and configuration.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import sumolib

from ..config import Config, ConfigError, CosimError, RSUConfig, ScenarioConfig
from .network import NetInfo, SumoMap
from .survey import MapSummary, traffic_survey

_MAX_CANDIDATES = 2000   # candidate RSU sites along the roads
_MAX_SAMPLES = 10_000    # vehicle positions the greedy choice weighs (a seeded subsample beyond)


def rsus_in_box(rsus: Sequence[RSUConfig], net: NetInfo, name: str) -> tuple[RSUConfig, ...]:
    x0, y0, x1, y1 = net.bbox
    for k, r in enumerate(rsus):
        # Roadside RSUs stand beside the roads: allow their coverage radius around the box.
        if not (x0 - r.radius <= r.x <= x1 + r.radius and y0 - r.radius <= r.y <= y1 + r.radius):
            raise ConfigError(f"scenario.rsus[{k}] at ({r.x:g}, {r.y:g}) is off the map {name}, which spans "
                              f"x {x0:g}..{x1:g}, y {y0:g}..{y1:g} (plus the RSU's {r.radius:g} m radius)")
    return tuple(rsus)


def _road_candidates(net: NetInfo, radius: float) -> np.ndarray:
    """Points along the roads, every radius / 4 (coarser on large maps), shape (C, 2)."""
    total = sum(length for length, _ in net.roads)
    step = max(radius / 4.0, total / _MAX_CANDIDATES)
    points = []
    for length, shape in net.roads:
        for offset in np.arange(min(step, length) / 2.0, length, step):
            points.append(sumolib.geomhelper.positionAtShapeOffset(shape, float(offset)))
    return np.asarray(points, dtype=float).reshape(-1, 2)


_NO_SITES = ("no candidate RSU site on this map: none of its roads that passenger cars may use has a positive "
             "length (zero-length lanes) and no junction joins three of them; place the RSUs yourself "
             "(sumo.rsu_placement=config with scenario.rsus) or fix the network")


def greedy_max_coverage(candidates: np.ndarray, samples: np.ndarray, radii: Sequence[float],
                        spacing: float, cap: float | None = None) -> tuple[list[int], float]:
    """Pick one candidate per radius, each covering the most samples not yet covered.

    A pick keeps at least ``spacing`` from the others; when no candidate does, the spacing
    halves until one does. With ``cap``, a pick's gain counts at most ``cap`` samples and it takes
    only the ``cap`` open samples nearest to it: the rest of a busy place stays open for another RSU
    nearby, so the busiest places get several RSUs and no RSU is credited with more than its share.
    Ties go to the candidate with more open samples, then to the lowest index. Returns the picked
    indices and the spacing that held for all of them.
    """
    if not len(candidates) and len(radii):
        raise CosimError(_NO_SITES)
    cover: dict[float, np.ndarray] = {}
    for r in set(radii):
        cover[r] = np.zeros((len(candidates), len(samples)), dtype=bool)
        for c in range(0, len(candidates), 256):  # in blocks: no (C, N) float matrix at once
            block = candidates[c:c + 256]
            cover[r][c:c + 256] = np.hypot(block[:, None, 0] - samples[None, :, 0],
                                           block[:, None, 1] - samples[None, :, 1]) <= r
    covered = np.zeros(len(samples), dtype=bool)
    chosen: list[int] = []
    held = spacing
    for r in radii:
        open_ = cover[r][:, ~covered].sum(axis=1).astype(float)
        gain = open_ if cap is None else np.minimum(open_, cap)
        score = gain * (len(samples) + 1.0) + open_  # lexicographic: gain, then open samples
        if chosen:
            gap = np.hypot(candidates[:, None, 0] - candidates[None, chosen, 0],
                           candidates[:, None, 1] - candidates[None, chosen, 1]).min(axis=1)
            while not (gap >= held).any() and held > 1e-3:
                held /= 2.0
            score = np.where(gap >= held, score, -1.0)
        best = int(np.argmax(score))
        chosen.append(best)
        taken = np.flatnonzero(cover[r][best] & ~covered)
        if cap is not None and len(taken) > cap:
            d = np.hypot(samples[taken, 0] - candidates[best, 0], samples[taken, 1] - candidates[best, 1])
            taken = taken[np.argsort(d, kind="stable")[:max(int(cap), 1)]]
        covered[taken] = True
    return chosen, held


def covered_share(rsus: Sequence[RSUConfig], samples: np.ndarray) -> float:
    """Share of sample positions (N, 2) within some RSU's radius (0 when there are none)."""
    if len(samples) == 0:
        return 0.0
    hit = np.zeros(len(samples), dtype=bool)
    for r in rsus:
        hit |= np.hypot(samples[:, 0] - r.x, samples[:, 1] - r.y) <= r.radius
    return float(hit.mean())


def _nearest_loads(d: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances (K, N) of N samples to K RSUs with radii (K, 1) -> which samples some RSU covers (N,)
    and how many of them each RSU is the nearest covering RSU of (K,)."""
    near = np.where(d <= radii, d, np.inf)
    inside = np.isfinite(near).any(axis=0)
    return inside, np.bincount(near[:, inside].argmin(axis=0), minlength=len(d))


def rsu_loads(rsus: Sequence[RSUConfig], samples: np.ndarray) -> np.ndarray:
    """How many of the sample positions (N, 2) each RSU is the nearest covering RSU of, shape (K,)."""
    if len(samples) == 0 or not len(rsus):
        return np.zeros(len(rsus), dtype=np.int64)
    d = np.stack([np.hypot(samples[:, 0] - r.x, samples[:, 1] - r.y) for r in rsus])
    return _nearest_loads(d, np.array([[r.radius] for r in rsus]))[1]


def busiest_share(rsus: Sequence[RSUConfig], samples: np.ndarray) -> float:
    """The largest share of the covered samples that one RSU is nearest to (1/K at a perfect balance)."""
    loads = rsu_loads(rsus, samples)
    return float(loads.max() / loads.sum()) if loads.sum() else 0.0


BALANCE_SLACK = 0.01     # balancing may give up this share of the covered vehicle-seconds
_BALANCE_SAMPLES = 5000  # vehicle positions the balancing weighs (a seeded subsample beyond)


def balance_loads(candidates: np.ndarray, samples: np.ndarray, chosen: Sequence[int], radii: Sequence[float],
                  spacing: float, slack: float = BALANCE_SLACK, rounds: int = 30) -> list[int]:
    """Local search after the greedy placement: move the busiest RSU, or one near it, to a nearby
    candidate site while that lowers the busiest RSU's share of the covered samples (each counted at
    its nearest covering RSU) and keeps the covered share within ``slack`` of where it started and
    the RSUs ``spacing`` apart. Returns the new picks (the same order, so the same radii)."""
    chosen = list(chosen)
    k = len(chosen)
    if k < 2 or not len(samples):
        return chosen
    r = np.asarray(radii, dtype=float)[:, None]

    def dist(c: int) -> np.ndarray:
        return np.hypot(samples[:, 0] - candidates[c, 0], samples[:, 1] - candidates[c, 1])

    def score(d: np.ndarray) -> tuple[float, float, np.ndarray]:
        inside, loads = _nearest_loads(d, r)
        return float(inside.mean()), float(loads.max() / max(inside.sum(), 1)), loads

    d = np.stack([dist(c) for c in chosen])
    floor, busiest, loads = score(d)
    floor -= slack
    for _ in range(rounds):
        b = int(np.argmax(loads))
        site = candidates[chosen]
        movers = np.flatnonzero(np.hypot(*(site - site[b]).T) <= 2.5 * r.max())
        best: tuple[float, int, int] | None = None
        for j in movers:
            others = np.delete(site, j, axis=0)
            gap = np.hypot(candidates[:, None, 0] - others[None, :, 0], candidates[:, None, 1] - others[None, :, 1])
            near = np.flatnonzero((np.hypot(*(candidates - site[j]).T) <= 1.5 * r[j, 0]) & (gap.min(axis=1) >= spacing))
            for c in near[np.linspace(0, len(near) - 1, min(len(near), 24)).astype(int)] if len(near) else []:
                if c == chosen[j]:
                    continue
                trial = d.copy()
                trial[j] = dist(c)
                cov, bus, _ = score(trial)
                if cov >= floor and bus < (best[0] if best else busiest) - 1e-9:
                    best = (bus, int(j), int(c))
        if best is None:
            break
        _, moved, site_c = best
        chosen[moved] = site_c
        d[moved] = dist(site_c)
        _, busiest, loads = score(d)
    return chosen


def _candidates(net: NetInfo, radius: float, sites: str) -> np.ndarray:
    road_sites = _road_candidates(net, radius) if sites != "junctions" else np.zeros((0, 2))
    junctions = np.asarray(net.junctions, dtype=float).reshape(-1, 2) if sites != "roads" else np.zeros((0, 2))
    found = np.concatenate([junctions, road_sites])
    return found if len(found) else _road_candidates(net, radius)  # a map without junctions: its roads


def place_by_traffic(template: Sequence[RSUConfig], net: NetInfo, samples: np.ndarray,
                     spacing: float, seed: int, sites: str = "roads", load_cap: float = 0.0,
                     balance: bool = False) -> tuple[tuple[RSUConfig, ...], float]:
    """Maximum coverage of the sampled vehicle positions by RSUs at junctions and along the roads,
    each RSU's gain capped at ``load_cap`` fair shares (0: uncapped)."""
    radii = [t.radius for t in template]
    candidates = _candidates(net, min(radii), sites)
    if not len(candidates):
        raise CosimError(_NO_SITES)
    x0, y0, x1, y1 = net.bbox
    k = len(template)
    # Smaller maps get closer RSUs, at most the map's larger side over the number of RSUs; but never
    # closer than the smaller of the radius and half the spacing of K RSUs spread evenly over the map.
    even = 0.5 * math.sqrt(max((x1 - x0) * (y1 - y0), 1.0) / k)
    spacing = min(spacing, max(max(x1 - x0, y1 - y0, 1.0) / k, min(min(radii), even)))
    weighed = samples if len(samples) else candidates  # no traffic seen: cover the roads themselves
    if len(weighed) > _MAX_SAMPLES:
        weighed = weighed[np.random.default_rng(seed).choice(len(weighed), _MAX_SAMPLES, replace=False)]
    cap = load_cap * len(weighed) / k if load_cap > 0 else None
    chosen, held = greedy_max_coverage(candidates, weighed, radii, spacing, cap)
    if balance:
        few = weighed
        if len(few) > _BALANCE_SAMPLES:
            few = few[np.random.default_rng(seed + 1).choice(len(few), _BALANCE_SAMPLES, replace=False)]
        chosen = balance_loads(candidates, few, chosen, radii, held)
    rsus = tuple(RSUConfig(float(candidates[c, 0]), float(candidates[c, 1]), t.height, t.radius)
                 for c, t in zip(chosen, template))
    return rsus, held


_placements: dict[tuple, tuple[tuple[RSUConfig, ...], MapSummary]] = {}
survey_samples: dict[str, np.ndarray] = {}  # map name -> the last survey's vehicle positions (map pictures)


def resolve_rsus(cfg: Config, m: SumoMap, net: NetInfo,
                 workdir: Path) -> tuple[tuple[RSUConfig, ...], MapSummary | None]:
    """The RSUs of this map (see ``sumo.rsu_placement``) and, on other maps, a summary of it.

    Other maps are surveyed (and RSUs placed) once per process and configuration.
    """
    s = cfg.sumo
    if m.road is not None:
        return rsus_in_box(cfg.scenario.rsus, net, m.name), None
    given: tuple[RSUConfig, ...] = ()
    if s.rsu_placement == "config":
        given, reason = rsus_in_box(cfg.scenario.rsus, net, m.name), ""
        if s.warmup_s is not None:  # nothing to place or measure (record_traces.py's workers)
            return given, None
    elif s.rsu_placement == "auto":
        reason = "sumo.rsu_placement = auto"
    elif s.n_rsus is not None:
        reason = f"sumo.n_rsus = {s.n_rsus}"
    elif cfg.scenario.rsus == ScenarioConfig().rsus:
        reason = "the configured RSUs are the paper's road's"
    else:
        try:
            given = rsus_in_box(cfg.scenario.rsus, net, m.name)
            reason = ""
        except ConfigError as exc:
            reason = str(exc).split(", which")[0]
    key = (m.name, cfg.seed, repr(s), repr(dataclasses.replace(cfg.scenario, n_cvs=1)))  # any CV count
    if key not in _placements:
        survey = traffic_survey(m, cfg, workdir)
        samples = survey.samples
        if given:
            rsus, held, how = given, 0.0, "config"
        else:
            k = s.n_rsus if s.n_rsus is not None else len(cfg.scenario.rsus)
            template = tuple(cfg.scenario.rsus[i % len(cfg.scenario.rsus)] for i in range(k))
            rsus, held = place_by_traffic(template, net, samples, s.rsu_spacing_m, cfg.seed, s.rsu_sites,
                                           s.rsu_load_cap, s.rsu_balance)
            how = "auto"
        x0, y0, x1, y1 = net.bbox
        summary = MapSummary(m.name, x1 - x0, y1 - y0, survey.vehicles, len(samples) * cfg.scenario.slot_s,
                             len(rsus), how, held, covered_share(rsus, samples), survey.window, reason,
                             begin_s=m.begin, warmup_s=survey.warmup_s, warmup=survey.warmup,
                             busiest_share=busiest_share(rsus, samples))
        _placements[key] = (rsus, summary)
        survey_samples[m.name] = samples
        print(summary.line(), file=sys.stderr)  # once per map and configuration
    return _placements[key]
