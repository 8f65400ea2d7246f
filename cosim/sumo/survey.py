"""The traffic survey of a map: a separate SUMO runs the map's own demand before any episode.

It runs from the map's begin through the warm-up and one episode. The warm-up is ``sumo.warmup_s``
or, with null, lasts until the number of vehicles has levelled off (:func:`cosim.maps.levelled_off`,
at most ``sumo.warmup_max_s``). An episode window without vehicles is refused here, naming a warm-up
that has some. The survey's vehicle positions are what :mod:`cosim.sumo.placement` covers with RSUs;
:class:`MapSummary` is its one-line account.
"""

from __future__ import annotations

import math
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import maps
from ..config import Config, CosimError
from .network import SumoMap, begin_args
from .process import argv_map, error_line, sumo_binary, sumo_env

WARMUP_WINDOW_S = 120.0  # the automatic warm-up compares the vehicle count's means over windows this long


@dataclass(frozen=True)
class MapSummary:
    """What a map offers and how its RSUs cover it (printed once when RSUs are placed)."""

    name: str
    width_m: float
    height_m: float
    vehicles: int            # distinct vehicles seen in the surveyed window (CV candidates only)
    vehicle_seconds: float   # vehicle presence in the window, slot-sampled
    n_rsus: int
    placement: str           # "config" or "auto"
    spacing_m: float         # least distance between placed RSUs (0 for config RSUs)
    covered_share: float     # of the window's vehicle-seconds within some RSU's radius
    window_s: tuple[float, float]  # surveyed simulation time, relative to the map's begin
    reason: str = ""         # why RSUs were placed automatically
    begin_s: float = 0.0     # the map's begin (simulation time, s)
    warmup_s: float = 0.0    # SUMO runs this long before an episode's first slot
    warmup: str = "given"    # "given" (sumo.warmup_s), "levelled" (levelled off) or "cap" (sumo.warmup_max_s)
    busiest_share: float = 0.0  # the largest share of covered vehicle-seconds one RSU is nearest to

    def line(self) -> str:
        rsus = (f"{self.n_rsus} RSUs placed where the traffic is ({self.reason}), >= {self.spacing_m:.0f} m apart"
                if self.placement == "auto" else f"{self.n_rsus} RSUs from scenario.rsus")
        how = {"given": "sumo.warmup_s", "levelled": "traffic levelled off",
               "cap": "sumo.warmup_max_s; traffic had not levelled off"}[self.warmup]
        return (f"map {Path(self.name).name}: {self.width_m:.0f} x {self.height_m:.0f} m, begins at "
                f"{self.begin_s:g} s, warm-up {self.warmup_s:g} s ({how}); {self.vehicles} vehicles "
                f"in {self.window_s[0]:g}..{self.window_s[1]:g} s; {rsus}; they cover "
                f"{self.covered_share:.1%} of {self.vehicle_seconds:.0f} vehicle-seconds, the busiest RSU "
                f"{self.busiest_share:.0%} of them")


@dataclass(frozen=True)
class Survey:
    samples: np.ndarray            # CV candidates' positions at every slot of the episode window (N, 2)
    vehicles: int                  # distinct vehicles among them
    window: tuple[float, float]    # s after the map's begin
    warmup_s: float
    warmup: str                    # MapSummary.warmup


def traffic_survey(m: SumoMap, cfg: Config, workdir: Path) -> Survey:
    """Run the map's own demand in a separate SUMO through the warm-up (given, or until the number of
    vehicles has levelled off) and one episode; refuse a window without vehicles, naming a warm-up
    that has some."""
    given = cfg.sumo.warmup_s
    episode_s = cfg.scenario.episode_slots * cfg.scenario.slot_s
    span = (given if given is not None else cfg.sumo.warmup_max_s) + episode_s
    fcd, summary = workdir / "survey.fcd.xml", workdir / "survey.summary.xml"
    argv = [sumo_binary("sumo"), *m.args, *begin_args(m), "--end", repr(m.begin + span), "--seed", str(cfg.seed),
            "--no-step-log", "true", "--no-warnings", "true", "--fcd-output", str(fcd),
            "--device.fcd.period", repr(cfg.scenario.slot_s), "--fcd-output.attributes", "x,y,type",
            "--summary-output", str(summary)]
    if cfg.sumo.step_length_s is not None:
        argv += ["--step-length", repr(cfg.sumo.step_length_s)]
    done = subprocess.run(argv, capture_output=True, text=True, env=sumo_env())
    if done.returncode != 0 or not fcd.is_file() or not summary.is_file():
        raise CosimError(f"SUMO could not load {argv_map(m.args)}: {error_line(done.stderr) or 'no message'} "
                         f"(running the map to place the RSUs)")
    times, running = [], []
    for _, element in ET.iterparse(summary):
        if element.tag == "step":
            times.append(float(element.get("time", "0")) - m.begin)
            running.append(float(element.get("running", "0")))
            element.clear()
    summary.unlink()
    if given is None:
        warmup, levelled = maps.levelled_off(times, running, WARMUP_WINDOW_S, cfg.sumo.warmup_tolerance,
                                             cfg.sumo.warmup_max_s)
        how = "levelled" if levelled else "cap"
    else:
        warmup, how = given, "given"
    lo, hi = warmup - 1e-6, warmup + episode_s + 1e-6
    if not any(lo <= t <= hi and n > 0 for t, n in zip(times, running)):
        fcd.unlink()
        busy = [t for t, n in zip(times, running) if n > 0]
        where = (f"sumo.map, sumo.routes or the .sumocfg's begin: its demand puts no vehicle on the road within "
                 f"{span:g} s of its begin at {m.begin:g} s" if not busy else
                 f"set sumo.warmup_s to at most {max(busy[-1] - episode_s, busy[0]):g} s (vehicles are on the "
                 f"road from {busy[0]:g} to {busy[-1]:g} s after the begin at {m.begin:g} s)")
        raise CosimError(f"no vehicle is on {Path(m.name).name} in the episode window {warmup:g}..{warmup + episode_s:g} s "
                         f"after its begin: {where}")
    xy: list[tuple[float, float]] = []
    seen: set[str] = set()
    vtype = cfg.sumo.cv_vtype
    t = -math.inf
    for event, element in ET.iterparse(fcd, events=("start", "end")):
        if element.tag == "timestep":
            if event == "start":
                t = float(element.get("time", "0")) - m.begin
                if t > hi:
                    break  # the rest of the file lies past the window
            else:
                element.clear()  # the survey of a large map is long
        elif event == "start" and element.tag == "vehicle" and lo <= t <= hi and \
                (vtype is None or element.get("type") == vtype):
            xy.append((float(element.get("x", "nan")), float(element.get("y", "nan"))))
            seen.add(element.get("id", ""))
    fcd.unlink()
    return Survey(np.asarray(xy, dtype=float).reshape(-1, 2), len(seen), (warmup, warmup + episode_s), warmup, how)
