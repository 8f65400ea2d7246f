"""SUMO mobility: the CVs are vehicles in a SUMO simulation (libsumo or TraCI).

:class:`SumoMobility` runs one simulation and implements the :class:`~cosim.mobility.Mobility`
protocol; :class:`SumoBatchMobility` runs several side by side with (E, I) arrays like
:class:`~cosim.mobility.AnalyticMobility`'s batch methods.

Maps
    * default (``sumo.sumocfg`` and ``sumo.net`` null): the paper's road in ``sumo_net/road``
      (rebuilt into a temporary directory when ``scenario``'s geometry or RSUs differ from the
      committed files);
    * ``sumo.map``: a named map (:mod:`cosim.maps`: RESCO's, the wheel's tools/game scenarios);
    * ``sumo.sumocfg``: that configuration as it is (beginning at its demand's first departure
      when that comes after its ``<begin>``);
    * ``sumo.net``: with ``sumo.routes``, or else random trips from SUMO's ``randomTrips.py``
      (seeded by ``cfg.seed``, one episode long).

How the paper's road mirrors ``AnalyticMobility(boundary='uturn')``
    * ``reset(seed)`` draws x, speed and lane with the very numpy calls, in the same order, of
      ``AnalyticMobility.reset_batch``, so one seed gives both backends the same start.
    * The CVs of an episode are written to a small route file and SUMO is (re)loaded with it,
      rather than added over TraCI: XML sets every attribute at once. ``departPos`` is the
      front bumper, which is what SUMO reports as a vehicle's position; ``departSpeed = v``
      and ``speedFactor = v / speed limit`` with the CV vType's ``sigma = speedDev = 0`` give
      exact constant speeds; ``insertionChecks="none"`` puts every CV on the road at t = 0
      however close it was drawn to another; the vType's ``lcKeepRight = 0`` keeps a CV in
      the lane it was drawn in.
    * The road is a ring (lane-to-lane U-turns at both ends, a repeating route), so a CV turns
      into the mirror lane at an end exactly as the analytic fold does.
    * The backends part only where the analytic model is unphysical: two CVs drawn closer in
      one lane than they can be, or a faster CV reaching a slower one. SUMO's car following
      then brakes the follower, or it overtakes in the next lane. Otherwise positions agree
      to rounding (with 5 CVs, in about three episodes of 30 slots out of four).
    * SUMO reports the body's angle, from rear to front: for the second it takes a CV's rear
      to follow it through a U-turn, its heading is askew, where the analytic one has flipped.
    * ``sumo.background_vehicles`` vehicles of vType ``background`` are inserted at free
      places drawn by SUMO's own ``--seed``.

Survey, warm-up and RSUs on other maps (``sumo.rsu_placement``)
    Once per process and configuration a separate SUMO runs the map's own demand from its begin
    (a ``--net``/``--routes`` map: the routes' first departure) through the warm-up and one
    episode: the warm-up is ``sumo.warmup_s``, or with null until the number of vehicles has
    levelled off (:func:`cosim.maps.levelled_off`, at most ``sumo.warmup_max_s``); an episode
    window without vehicles is refused there, before any episode runs. ``fit`` keeps
    ``scenario.rsus`` when they are not the paper's road's and lie on the map; otherwise (and
    always with ``auto`` or ``sumo.n_rsus``) the RSUs go to candidate sites at junctions and
    along the roads (``sumo.rsu_sites``) by greedy maximum coverage of the vehicle positions
    sampled in the episode window (each gain optionally capped, ``sumo.rsu_load_cap``), at least
    ``sumo.rsu_spacing_m`` apart (less on small maps, within limits, halved until they fit), and a
    local search then unloads the busiest RSU (``sumo.rsu_balance``). ``config`` uses
    ``scenario.rsus`` or fails. A one-line summary of the map goes to stderr (:class:`MapSummary`).

CV slots
    Slot i is the agent i for the whole episode. On the road slot i is vehicle ``cv<i>``,
    which never leaves the ring (``sumo.cv_vtype`` does not apply there). On other maps, with
    ``sumo.cv_pool: coverage``, each RSU is a POI whose context subscription reports the
    vehicles (of vType ``sumo.cv_vtype``, or any) within its radius; at the end of every slot a
    slot whose vehicle is gone or outside every radius passes to a free vehicle inside coverage
    at the RSU with the fewest CVs (the nearest to it first), or with none free inside to one
    heading into coverage (with nobody free it keeps its vehicle). With ``departure`` the CVs are
    the vehicles in the order they depart; a CV that arrives frees its slot, which the next to
    depart fills. With ``penetration`` each departing vehicle is a CV with probability
    ``sumo.penetration`` (one seeded draw each, in SUMO's order); CVs without a free slot wait,
    and a slot freed by an arrival goes to the one that has waited longest.
    A slot without a vehicle (or whose vehicle is being teleported) has ``active = False`` and
    zeros elsewhere.

Each reset (re)loads SUMO with its own ``--seed`` and performs SUMO's first step, which
inserts the vehicles that depart at time 0; ``advance(dt)`` performs as many steps as dt
spans. Every CV's position, speed, angle and lane come from subscriptions.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import weakref
import xml.etree.ElementTree as ET
import xml.sax
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import sumo
import sumolib
import traci
import traci.constants as tc
from traci.exceptions import FatalTraCIError, TraCIException

from sumo_net import generate_road as road

from . import maps
from .config import Config, ConfigError, CosimError, RSUConfig, ScenarioConfig, with_rsus
from .gui import LabelMetrics, layout_labels
from .mobility import BatchMobility, MobilityState, draw_road_start, stack_states
from .outputs import remove_stale_temp_dirs
from .resources import available_memory_mb
from .palette import pale, rsu_hue



_VEHICLE_VARS = (tc.VAR_POSITION, tc.VAR_SPEED, tc.VAR_ANGLE, tc.VAR_LANE_INDEX, tc.VAR_ROAD_ID)
_SIM_VARS = (tc.VAR_TIME, tc.VAR_DEPARTED_VEHICLES_IDS, tc.VAR_ARRIVED_VEHICLES_IDS)
_CONNECT_TIMEOUT_S = 60.0
_RSU_POI = "cosim_rsu"                # other maps: POI ids of the RSUs
# sumo-gui on other maps: vehicles that are not (or no longer) CVs, faint, so that the CVs' colours stand out
_OTHER_COLOR = (150, 150, 150, 90)
_GUI_FRAME_PX = (10, 215)             # sumo-gui's window minus its view (menus, tool bars, status bar), measured
_labels = itertools.count()
GUI_LABEL_LIMIT = 40                  # sumo-gui: more active CVs than this are drawn in colour only, no labels
# libsumo runs one simulation per process: the _Sumo that holds it, if any.
_libsumo_holder: "_Sumo | None" = None


_TMP_PREFIX = "cosim-sumo-"  # temp folders: cosim-sumo-<pid>-<random>


def _binary(name: str) -> str:
    # Not sumolib.checkBinary, which prefers a user's SUMO_HOME (maybe another version), and not
    # os.environ["SUMO_HOME"], which importing libsumo points at a directory without bin/.
    return os.path.join(sumo.SUMO_HOME, "bin", name)


def _sumo_env() -> dict[str, str]:
    return dict(os.environ, SUMO_HOME=sumo.SUMO_HOME)


def _error_line(text: str) -> str:
    """SUMO's first error message (``Error: ...`` and its indented location lines) as one line.

    Without one, the last line it printed (sumo-gui's display errors have no prefix), or ''.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if line.startswith("Error:")), None)
    if start is None:
        return lines[-1].strip() if lines else ""
    block = [lines[start]] + list(itertools.takewhile(lambda s: s.startswith(" "), lines[start + 1:]))
    return " ".join(s.strip() for s in block)


# ---------------------------------------------------------------------------
# The map: which files SUMO loads, and what the network offers

@dataclass(frozen=True)
class _Map:
    name: str                    # the file the user named, for messages
    args: tuple[str, ...]        # how SUMO loads it
    net: Path
    demand: tuple[Path, ...]     # route and additional files: where vTypes are defined
    road: Any = None             # generate_road.RoadSpec on the paper's road, else None
    begin: float = 0.0           # simulation time at which the map starts (s)
    set_begin: bool = False      # pass --begin: the demand starts after the .sumocfg's begin, or there is none


@dataclass(frozen=True)
class _NetInfo:
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1
    # (length, shape) of each road passenger cars may use, one per pair of opposite edges, longest first
    roads: tuple[tuple[float, tuple[tuple[float, float], ...]], ...]
    junctions: tuple[tuple[float, float], ...] = ()  # where three or more of those roads meet


@lru_cache(maxsize=16)
def _net_info(path: str, mtime: float) -> _NetInfo:
    """Parsed once per file version (``mtime`` is part of the cache key only)."""
    try:
        return _read_net_info(path)
    except xml.sax.SAXException as exc:
        raise CosimError(f"network {path} does not parse: {exc}") from None
    except (KeyError, ValueError, IndexError, AttributeError, TypeError) as exc:
        # sumolib trusts the file: an edge naming a missing node, a bad number or shape ends up here.
        raise CosimError(f"network {path} is not a valid SUMO network ({type(exc).__name__}: "
                         f"{_one_line(exc)[:80]}); rebuild it with netconvert") from None


def _read_net_info(path: str) -> _NetInfo:
    net = sumolib.net.readNet(path)
    roads: dict[frozenset[str], tuple[float, tuple[tuple[float, float], ...]]] = {}
    for edge in net.getEdges():
        if edge.getFunction() or not edge.allows("passenger"):  # '' is a normal road
            continue
        key = frozenset((edge.getFromNode().getID(), edge.getToNode().getID()))
        if key not in roads or edge.getLength() > roads[key][0]:
            roads[key] = (edge.getLength(), tuple(edge.getShape()))
    if not roads:
        raise CosimError(f"network {path} has no road that passenger cars may use")
    degree: dict[str, int] = {}
    for key in roads:
        for node in key:
            degree[node] = degree.get(node, 0) + 1
    junctions = tuple(net.getNode(n).getCoord()[:2] for n in sorted(degree) if degree[n] >= 3)
    (x0, y0), (x1, y1) = net.getBBoxXY()
    return _NetInfo((x0, y0, x1, y1), tuple(sorted(roads.values(), key=lambda r: -r[0])), junctions)


def _existing(value: str, key: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}: file not found: {path}")
    return path


def _sumocfg_inputs(path: Path) -> dict[str, list[Path]]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise CosimError(f"sumo.sumocfg: {path} is not valid XML ({exc})") from None
    for option in ("remote-port", "num-clients"):
        if root.find(f".//{option}") is not None:  # SUMO would wait for a client; libsumo never returns
            raise CosimError(f"sumo.sumocfg: {path} sets {option}, which makes SUMO wait for a TraCI client and "
                             f"would hang the run; remove it (the co-simulation connects to SUMO itself)")
    inputs: dict[str, list[Path]] = {}
    for key in ("net-file", "route-files", "additional-files"):
        element = root.find(f".//{key}")
        value = element.get("value", "") if element is not None else ""
        inputs[key] = [path.parent / v for v in value.replace(",", " ").split()]
        for f in inputs[key]:
            if not f.is_file():
                raise CosimError(f"sumo.sumocfg: {path} names {key} {f}, which does not exist")
    if len(inputs["net-file"]) != 1:
        raise CosimError(f"sumo.sumocfg: {path} names no net-file")
    return inputs


def _random_trips(net: Path, out_dir: Path, cfg: Config) -> Path:
    trips = out_dir / "random.trips.xml"
    warmup = cfg.sumo.warmup_s if cfg.sumo.warmup_s is not None else cfg.sumo.warmup_max_s
    episode_s = warmup + cfg.scenario.episode_slots * cfg.scenario.slot_s  # trips span both
    cmd = [sys.executable, os.path.join(sumo.SUMO_HOME, "tools", "randomTrips.py"),
           "--net-file", str(net.resolve()), "--output-trip-file", str(trips), "--seed", str(cfg.seed),
           "--begin", "0", "--end", repr(episode_s), "--period", repr(cfg.sumo.random_trips_period_s),
           "--validate"]  # drop trips that have no route
    done = subprocess.run(cmd, cwd=out_dir, env=_sumo_env(), capture_output=True, text=True)
    if done.returncode != 0 or not trips.is_file():
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise CosimError(f"randomTrips.py failed on {net}: {last}")
    return trips


def _is_shipped_road(sumocfg: str) -> bool:
    try:
        return Path(sumocfg).expanduser().resolve() == (road.ROAD_DIR / f"{road.NAME}.sumocfg").resolve()
    except (OSError, RuntimeError):
        return False


def _resolve_map(cfg: Config, workdir: Path) -> _Map:
    s = cfg.sumo
    sumocfg = str(maps.resolve(s.map).sumocfg) if s.map else s.sumocfg
    if sumocfg and not s.map and _is_shipped_road(sumocfg):
        sumocfg = None  # the paper's road named explicitly: the default run, which runs that very file
    if sumocfg:
        path = _existing(sumocfg, "sumo.sumocfg")
        inputs = _sumocfg_inputs(path)
        # A .sumocfg whose begin lies before its demand's first departure starts at that departure.
        own = _sumocfg_begin(path)
        first = maps.demand_begin(inputs["route-files"] + inputs["additional-files"])
        later = first is not None and first > own
        return _Map(s.map or str(path), ("-c", str(path)), inputs["net-file"][0],
                    tuple(inputs["route-files"] + inputs["additional-files"]), begin=first if later else own,
                    set_begin=later)
    if s.net:
        net = _existing(s.net, "sumo.net")
        _net_info(str(net), net.stat().st_mtime)  # a broken network fails here, not inside randomTrips.py
        routes = _existing(s.routes, "sumo.routes") if s.routes else _random_trips(net, workdir, cfg)
        # Real demand often starts hours into the day (RESCO's at 25200 or 57600 s): begin with it.
        first = maps.demand_begin([routes]) if s.routes else None
        return _Map(str(net), ("-n", str(net), "-r", str(routes)), net, (routes,), begin=first or 0.0,
                    set_begin=bool(first))
    sc = cfg.scenario
    spec = road.RoadSpec(length_m=sc.road_length_m, lanes_per_direction=sc.lanes_per_direction,
                         lane_width_m=sc.lane_width_m, rsus=tuple((r.x, r.y, r.radius) for r in sc.rsus))
    directory = road.ROAD_DIR if spec == road.RoadSpec() else road.build(workdir / "road", spec).parent
    sumocfg = directory / f"{road.NAME}.sumocfg"
    return _Map(str(sumocfg), ("-c", str(sumocfg)), directory / f"{road.NAME}.net.xml",
                (directory / f"{road.NAME}.rou.xml",), spec)


def _check_vtype(vtype: str, files: Sequence[Path]) -> None:
    defined = {"DEFAULT_VEHTYPE"}
    for f in files:
        try:
            with sumolib.openz(str(f), "rb") as stream:
                for _, element in ET.iterparse(stream):
                    if element.tag == "vType":
                        defined.add(element.get("id", ""))
                    element.clear()  # route files can be large
        except ET.ParseError as exc:
            raise CosimError(f"{f} is not valid XML ({exc})") from None
    if vtype not in defined:
        raise ConfigError(f"sumo.cv_vtype: vType '{vtype}' is not defined in "
                          f"{', '.join(str(f) for f in files)} (defined: {', '.join(sorted(defined))})")


def _rsus_in_box(rsus: Sequence[RSUConfig], net: _NetInfo, name: str) -> tuple[RSUConfig, ...]:
    x0, y0, x1, y1 = net.bbox
    for k, r in enumerate(rsus):
        # Roadside RSUs stand beside the roads: allow their coverage radius around the box.
        if not (x0 - r.radius <= r.x <= x1 + r.radius and y0 - r.radius <= r.y <= y1 + r.radius):
            raise ConfigError(f"scenario.rsus[{k}] at ({r.x:g}, {r.y:g}) is off the map {name}, which spans "
                              f"x {x0:g}..{x1:g}, y {y0:g}..{y1:g} (plus the RSU's {r.radius:g} m radius)")
    return tuple(rsus)


WARMUP_WINDOW_S = 120.0  # the automatic warm-up compares the vehicle count's means over windows this long
_MAX_CANDIDATES = 2000   # candidate RSU sites along the roads
_MAX_SAMPLES = 10_000    # vehicle positions the greedy choice weighs (a seeded subsample beyond)


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


def _sumocfg_begin(path: Path) -> float:
    element = ET.parse(path).getroot().find(".//begin")
    if element is None:
        return 0.0
    return float(sumolib.miscutils.parseTime(element.get("value", "0")))


@dataclass(frozen=True)
class _Survey:
    samples: np.ndarray            # CV candidates' positions at every slot of the episode window (N, 2)
    vehicles: int                  # distinct vehicles among them
    window: tuple[float, float]    # s after the map's begin
    warmup_s: float
    warmup: str                    # MapSummary.warmup


def _begin_args(m: "_Map") -> list[str]:
    return ["--begin", repr(m.begin)] if m.set_begin else []


def _traffic_survey(m: "_Map", cfg: Config, workdir: Path) -> _Survey:
    """Run the map's own demand in a separate SUMO through the warm-up (given, or until the number of
    vehicles has levelled off) and one episode; refuse a window without vehicles, naming a warm-up
    that has some."""
    given = cfg.sumo.warmup_s
    episode_s = cfg.scenario.episode_slots * cfg.scenario.slot_s
    span = (given if given is not None else cfg.sumo.warmup_max_s) + episode_s
    fcd, summary = workdir / "survey.fcd.xml", workdir / "survey.summary.xml"
    argv = [_binary("sumo"), *m.args, *_begin_args(m), "--end", repr(m.begin + span), "--seed", str(cfg.seed),
            "--no-step-log", "true", "--no-warnings", "true", "--fcd-output", str(fcd),
            "--device.fcd.period", repr(cfg.scenario.slot_s), "--fcd-output.attributes", "x,y,type",
            "--summary-output", str(summary)]
    if cfg.sumo.step_length_s is not None:
        argv += ["--step-length", repr(cfg.sumo.step_length_s)]
    done = subprocess.run(argv, capture_output=True, text=True, env=_sumo_env())
    if done.returncode != 0 or not fcd.is_file() or not summary.is_file():
        raise CosimError(f"SUMO could not load {_argv_map(m.args)}: {_error_line(done.stderr) or 'no message'} "
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
    return _Survey(np.asarray(xy, dtype=float).reshape(-1, 2), len(seen), (warmup, warmup + episode_s), warmup, how)


def _road_candidates(net: _NetInfo, radius: float) -> np.ndarray:
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
        _, j, c = best
        chosen[j] = c
        d[j] = dist(c)
        _, busiest, loads = score(d)
    return chosen


def _candidates(net: _NetInfo, radius: float, sites: str) -> np.ndarray:
    road_sites = _road_candidates(net, radius) if sites != "junctions" else np.zeros((0, 2))
    junctions = np.asarray(net.junctions, dtype=float).reshape(-1, 2) if sites != "roads" else np.zeros((0, 2))
    found = np.concatenate([junctions, road_sites])
    return found if len(found) else _road_candidates(net, radius)  # a map without junctions: its roads


def _place_by_traffic(template: Sequence[RSUConfig], net: _NetInfo, samples: np.ndarray,
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
_survey_samples: dict[str, np.ndarray] = {}  # map name -> the last survey's vehicle positions (map pictures)


def _resolve_rsus(cfg: Config, m: "_Map", net: _NetInfo,
                  workdir: Path) -> tuple[tuple[RSUConfig, ...], MapSummary | None]:
    """The RSUs of this map (see ``sumo.rsu_placement``) and, on other maps, a summary of it.

    Other maps are surveyed (and RSUs placed) once per process and configuration.
    """
    s = cfg.sumo
    if m.road is not None:
        return _rsus_in_box(cfg.scenario.rsus, net, m.name), None
    given: tuple[RSUConfig, ...] = ()
    if s.rsu_placement == "config":
        given, reason = _rsus_in_box(cfg.scenario.rsus, net, m.name), ""
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
            given = _rsus_in_box(cfg.scenario.rsus, net, m.name)
            reason = ""
        except ConfigError as exc:
            reason = str(exc).split(", which")[0]
    key = (m.name, cfg.seed, repr(s), repr(dataclasses.replace(cfg.scenario, n_cvs=1)))  # any CV count
    if key not in _placements:
        survey = _traffic_survey(m, cfg, workdir)
        samples = survey.samples
        if given:
            rsus, held, how = given, 0.0, "config"
        else:
            k = s.n_rsus if s.n_rsus is not None else len(cfg.scenario.rsus)
            template = tuple(cfg.scenario.rsus[i % len(cfg.scenario.rsus)] for i in range(k))
            rsus, held = _place_by_traffic(template, net, samples, s.rsu_spacing_m, cfg.seed, s.rsu_sites,
                                           s.rsu_load_cap, s.rsu_balance)
            how = "auto"
        x0, y0, x1, y1 = net.bbox
        summary = MapSummary(m.name, x1 - x0, y1 - y0, survey.vehicles, len(samples) * cfg.scenario.slot_s,
                             len(rsus), how, held, covered_share(rsus, samples), survey.window, reason,
                             begin_s=m.begin, warmup_s=survey.warmup_s, warmup=survey.warmup,
                             busiest_share=busiest_share(rsus, samples))
        _placements[key] = (rsus, summary)
        _survey_samples[m.name] = samples
        print(summary.line(), file=sys.stderr)  # once per map and configuration
    return _placements[key]


def placed_config(cfg: Config) -> Config:
    """``cfg`` with the RSUs this map gets (placed once per process; unchanged on the paper's road)."""
    if cfg.backend != "sumo" or not (cfg.sumo.sumocfg or cfg.sumo.net):
        return cfg
    mob = SumoMobility(cfg)
    mob.close()
    placed = with_rsus(cfg, mob.rsu_configs())
    if mob.map_summary is not None and cfg.sumo.warmup_s is None:  # measured once: later runs need not
        placed = placed.replace(**{"sumo.warmup_s": mob.map_summary.warmup_s})
    return placed


# ---------------------------------------------------------------------------
# The paper's road: the model's lanes 0..2L-1 (south to north) and SUMO's (edge, index)

def _to_sumo_lane(lane: int, lanes_per_direction: int) -> tuple[str, int]:
    if lane < lanes_per_direction:
        return road.EAST, lane
    return road.WEST, 2 * lanes_per_direction - 1 - lane


@dataclass(frozen=True)
class _Placement:
    """Start of the CVs on the road, arrays of shape (E, I) (or (I,) for one environment)."""

    x: np.ndarray
    speed: np.ndarray
    lane: np.ndarray

    def row(self, e: int) -> "_Placement":
        return _Placement(self.x[e], self.speed[e], self.lane[e])


def _draw_episode(rng: np.random.Generator, cfg: Config, n_envs: int, n_cvs: int,
                  on_road: bool) -> tuple[_Placement | None, np.ndarray]:
    """The CVs' start on the road (None on other maps) and each environment's SUMO seed."""
    placement = None
    if on_road:
        placement = _Placement(*draw_road_start(rng, cfg, (n_envs, n_cvs)))
    return placement, rng.integers(0, 2**31 - 1, n_envs)


def _write_episode_routes(path: Path, cfg: Config, spec: Any, routes_file: Path, start: _Placement) -> None:
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
        edge, index = _to_sumo_lane(int(lane), spec.lanes_per_direction)
        pos = x if edge == road.EAST else spec.length_m - x
        ET.SubElement(routes, "vehicle", id=f"cv{i}", type=road.CV_VTYPE,
                      route=road.ROUTE_EAST if edge == road.EAST else road.ROUTE_WEST, depart="0",
                      departLane=str(index), departPos=repr(float(pos)), departSpeed=repr(float(v)),
                      speedFactor=repr(float(v) / spec.speed_limit_mps), insertionChecks="none")
    road.add_background(routes, cfg.sumo.background_vehicles)
    ET.ElementTree(routes).write(path, encoding="UTF-8", xml_declaration=True)


# ---------------------------------------------------------------------------
# One running SUMO

class _Sumo:
    """A SUMO process behind TraCI, or libsumo in this process; ``api`` has TraCI's interface."""

    def __init__(self, label: str, gui: bool, want_libsumo: bool, log: Path, timeout_s: float | None = None):
        self.label = label
        self.gui = gui
        # TraCI: the longest wait for one answer (sumo.traci_timeout_s); none with the GUI, which may be paused.
        self.timeout_s = None if gui else timeout_s
        self.want_libsumo = want_libsumo and not gui
        self.log = log
        self.api: Any = None
        self.proc: subprocess.Popen | None = None
        # What SUMO failing looks like: TraCI's exceptions, a dropped socket, (later) libsumo's exceptions.
        self.errors: tuple[type[BaseException], ...] = (FatalTraCIError, TraCIException, ConnectionError)

    def load(self, argv: list[str]) -> None:
        """Start SUMO with ``argv``, or reload the running one; a map SUMO rejects raises CosimError."""
        if self.api is not None:
            try:
                self.api.load(argv)
                return
            except self.errors:
                self.close()
        if self.want_libsumo and self._claim_libsumo():
            self._start_libsumo(argv)
        else:
            self._start_traci(argv)

    def _claim_libsumo(self) -> bool:
        global _libsumo_holder
        import libsumo  # only here: importing it rewrites os.environ["SUMO_HOME"]

        if _libsumo_holder is None and not libsumo.isLoaded():
            _libsumo_holder = self
            self.errors = (*self.errors, libsumo.FatalTraCIError, libsumo.TraCIException)
            return True
        warnings.warn(f"libsumo already runs a simulation in this process; SUMO '{self.label}' uses TraCI",
                      RuntimeWarning, stacklevel=5)
        self.want_libsumo = False
        return False

    def _start_libsumo(self, argv: list[str]) -> None:
        import libsumo

        self.api = libsumo  # a failed start leaves libsumo loaded: close() must close it
        try:
            libsumo.start([_binary("sumo"), *argv])
        except self.errors as exc:
            self.close()
            # libsumo printed SUMO's message to the terminal: ask the binary for it once more, 0 s long.
            check = list(argv)
            check[check.index("--end") + 1] = "0"
            done = subprocess.run([_binary("sumo"), *check], capture_output=True, text=True, env=_sumo_env())
            message = _error_line(done.stderr) or _one_line(exc)
            raise CosimError(f"SUMO could not load {_argv_map(argv)}: {message}") from None

    def _start_traci(self, argv: list[str]) -> None:
        if traci.connection.has(self.label):
            raise CosimError(f"a TraCI connection labelled '{self.label}' is already open")
        binary = _binary("sumo-gui" if self.gui else "sumo")
        port = sumolib.miscutils.getFreeSocketPort()
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([binary, *argv, "--remote-port", str(port)], stdout=subprocess.DEVNULL,
                                         stderr=log, env=_sumo_env())
        # traci.start sleeps 1 s after the first refused connection; poll every 5 ms instead.
        deadline = time.monotonic() + _CONNECT_TIMEOUT_S
        while True:
            try:
                self.api = traci.connection.Connection("localhost", port, self.proc, None, False, self.label)
                if self.timeout_s is not None:  # a frozen SUMO: recv times out, traci drops the connection
                    self.api._socket.settimeout(self.timeout_s)
                return
            except OSError:
                if self.proc.poll() is not None:
                    message = _error_line(self.log.read_text()) or f"exit status {self.proc.returncode}"
                    self.close()
                    raise CosimError(f"SUMO could not load {_argv_map(argv)}: {message}") from None
                if time.monotonic() > deadline:
                    self.close()
                    raise CosimError(f"{binary} did not accept a TraCI connection within "
                                     f"{_CONNECT_TIMEOUT_S:g} s") from None
                time.sleep(0.005)

    def failure(self, exc: BaseException) -> str:
        """Why SUMO failed, as one line: killed by a signal, its error message, or its exit status.
        (Not merely its last line of output: sumo-gui prints unrelated warnings there.)"""
        if self.proc is None:
            return _one_line(exc)
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        binary = "sumo-gui" if self.gui else "sumo"
        if code is None and self.timeout_s is not None and "closed by SUMO" in str(exc):
            # The connection dropped while SUMO runs on: it did not answer within the timeout (stopped, stuck).
            self.proc.kill()
            return (f"{binary} (pid {self.proc.pid}) did not answer TraCI within {self.timeout_s:g} s, stopped or "
                    f"stuck; it was ended (sumo.traci_timeout_s sets the wait)")
        if code is not None and code < 0:
            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = f"signal {-code}"
            return f"{binary} died (killed by {sig})"
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        said = _error_line(text) if "Error:" in text else ""
        if said:
            return said
        if code is not None:
            return f"{binary} exited with status {code}" + (" (it was closed)" if self.gui and code == 0 else "")
        return _one_line(exc)

    def close(self) -> None:
        """Stop SUMO; harmless when it is stopped already or died."""
        global _libsumo_holder
        import struct
        api, proc = self.api, self.proc
        self.api = self.proc = None
        try:
            # Closing a connection whose SUMO died fails once, dropping the socket; the second
            # attempt then only unregisters the TraCI label.
            sock = getattr(api, "_socket", None) if proc is not None else None
            if sock is not None:  # a frozen SUMO, or an exchange a Ctrl-C cut: do not wait long for its goodbye
                try:
                    sock.settimeout(min(self.timeout_s or 5.0, 5.0))
                except OSError:
                    pass
            for _ in range(2 if api is not None else 0):
                try:
                    api.close(False) if proc is not None else api.close()
                    break
                except (*self.errors, OSError, struct.error, ValueError, IndexError):  # a cut exchange: garbage
                    if proc is not None and proc.poll() is None:
                        proc.kill()
        finally:
            if proc is not None:
                if api is None:  # never connected: nothing will tell it to quit
                    proc.kill()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if _libsumo_holder is self:
                _libsumo_holder = None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _argv_map(argv: Sequence[str]) -> str:
    """The map files named in a SUMO command line, for messages."""
    names = [v for k, v in zip(argv, argv[1:]) if k in ("-c", "-n", "-r", "--route-files")]
    return ", ".join(names) or " ".join(argv)


# ---------------------------------------------------------------------------

class SumoMobility:
    """One SUMO simulation behind the Mobility protocol; see the module docstring.

    ``gui=True`` runs sumo-gui (over TraCI) and needs a display. Its window is
    ``generate_road.WINDOW_SIZE`` (``--window-size`` in ``sumo.extra_args`` overrides it), its view
    is fitted to the area the RSUs cover at each reset, and other maps get the road's view settings
    (``--gui-settings-file`` in ``sumo.extra_args`` overrides them), which draw the CV labels of
    ``show_decisions``. ``record_dir`` (with the GUI) saves one screenshot per slot,
    ``slot_00000.png``, ``slot_00001.png``, ..., numbered on across episodes. ``close()`` stops
    SUMO; it also runs when the object is garbage-collected and at interpreter exit.
    """

    def __init__(self, cfg: Config, n_cvs: int | None = None, gui: bool = False, label: str | None = None,
                 record_dir: str | None = None, rsus: Sequence[RSUConfig] | None = None,
                 map_summary: "MapSummary | None" = None):
        self.cfg = cfg
        self.n_cvs = n_cvs if n_cvs is not None else cfg.scenario.n_cvs
        if self.n_cvs < 1:
            raise ConfigError(f"n_cvs: {self.n_cvs} CV slots; at least 1 is needed")
        self.gui = gui
        self.label = label if label is not None else f"cosim-sumo-{next(_labels)}"
        self.record_dir = Path(record_dir) if record_dir is not None else None
        if gui and not os.environ.get("DISPLAY"):
            raise CosimError("sumo-gui needs a display but DISPLAY is not set (run under xvfb-run, or without the GUI)")
        if self.record_dir is not None:
            if not gui:
                raise ConfigError("record_dir needs gui=True: the screenshots come from sumo-gui")
            self.record_dir.mkdir(parents=True, exist_ok=True)
        # The pid in the name lets a later start remove the folders of runs killed with SIGKILL.
        remove_stale_temp_dirs(tempfile.gettempdir(), _TMP_PREFIX)
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{_TMP_PREFIX}{os.getpid()}-")
        workdir = Path(self._tmp.name)
        try:
            self._map = _resolve_map(cfg, workdir)
            self._net = _net_info(str(self._map.net), self._map.net.stat().st_mtime)
            if cfg.sumo.cv_vtype is not None and self._map.road is None:
                _check_vtype(cfg.sumo.cv_vtype, self._map.demand)
            if rsus is not None:  # SumoBatchMobility places them once for all its simulations
                self._rsus, self.map_summary = tuple(rsus), map_summary
            else:
                self._rsus, self.map_summary = _resolve_rsus(cfg, self._map, self._net, workdir)
        except BaseException:
            self._tmp.cleanup()
            raise
        self._episode_routes = workdir / "episode.rou.xml"
        extra = list(cfg.sumo.extra_args)
        size = extra[extra.index("--window-size") + 1] if "--window-size" in extra[:-1] else None
        try:
            self._window = tuple(int(v) for v in size.split(",")) if size else self._fitting_window()
        except ValueError:
            raise ConfigError(f"sumo.extra_args: --window-size {size!r} is not WIDTH,HEIGHT in pixels") from None
        self._px_per_m = 1.0
        self._sumo = _Sumo(self.label, gui, cfg.sumo.use_libsumo, workdir / "sumo.log", cfg.sumo.traci_timeout_s)
        weakref.finalize(self, self._sumo.close)
        self._rng = np.random.default_rng(cfg.seed)
        self._closed = False
        self.step_length: float | None = None  # SUMO's step length, s, known after the first reset
        self.sim_time = 0.0                     # SUMO's clock after the last step, s
        self._episode: tuple[int, _Placement | None] = (0, None)
        self._slot_vehicle: list[str | None] = [None] * self.n_cvs
        self._slot_of: dict[str, int] = {}
        self._state: MobilityState | None = None
        self._frame = 0
        # Other maps: CV slots go to vehicles inside RSU coverage and are handed over when they leave.
        self._pool_kind = "road" if self._map.road is not None else cfg.sumo.cv_pool
        self._pool = self._pool_kind == "coverage"
        self._waiting: dict[str, None] = {}  # penetration: CVs without a slot yet, in departure order
        self._cv_rng = np.random.default_rng(0)  # penetration: which vehicles are CVs (seeded per episode)
        self._warmup = (self.map_summary.warmup_s if self.map_summary is not None
                        else 0.0 if self._map.road is not None else cfg.sumo.warmup_s)
        self._labels_drawn: list[tuple[str, str]] = []  # ('poi'|'polygon', id) of the labels drawn now
        self._view: tuple[float, float, float, float] | None = None  # what sumo-gui shows, m

    # -- Mobility protocol -------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> MobilityState:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        placement, sumo_seeds = _draw_episode(self._rng, self.cfg, 1, self.n_cvs, self._map.road is not None)
        return self._begin(int(sumo_seeds[0]), None if placement is None else placement.row(0))

    def advance(self, dt: float) -> MobilityState:
        if self._sumo.api is None:
            raise CosimError("SumoMobility.advance(): no simulation is running (call reset() first)")
        n = round(dt / self.step_length)
        if n < 1 or abs(n * self.step_length - dt) > 1e-9 * max(dt, 1.0):
            raise ConfigError(f"a slot of {dt:g} s is not a whole number of SUMO steps of {self.step_length:g} s")
        try:
            return self._steps(n)
        except self._sumo.errors as exc:
            if not self.cfg.sumo.restart_on_crash:
                raise self._crashed(exc) from exc
        # SUMO died and sumo.restart_on_crash is set: a new SUMO runs this slot again.
        self._restart()
        try:
            return self._steps(n)
        except self._sumo.errors as exc:
            raise self._crashed(exc) from exc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._sumo.close()
            finally:
                self._tmp.cleanup()

    # -- extras --------------------------------------------------------------------------------

    def rsu_configs(self) -> tuple[RSUConfig, ...]:
        """The RSUs on this map: ``scenario.rsus`` (checked to lie on it) or placed where its traffic is."""
        return self._rsus

    @property
    def sumo_pid(self) -> int | None:
        """Process id of the SUMO behind TraCI (None with libsumo or before the first reset)."""
        return self._sumo.proc.pid if self._sumo.proc is not None else None

    def show_decisions(self, colors: Sequence[Sequence[int]], labels: Sequence[str] | None = None,
                       tags: Sequence[str] | None = None) -> None:
        """Colour each CV slot's vehicle, (r, g, b, a) in 0..255; ``labels`` (the full decision) go into
        its ``decision`` parameter, and its label's (sumo-gui: right click, Show Parameter). In sumo-gui each active CV's ``tags``
        text (e.g. 'cv3 R1 60%') is drawn clear of the road and the other labels, with a line to where
        the CV is one slot on (this call comes before the vehicles move; see ``BatchCoSim.before_advance``).
        """
        if (len(colors) != self.n_cvs or (labels is not None and len(labels) != self.n_cvs)
                or (tags is not None and len(tags) != self.n_cvs)):
            raise ValueError(f"show_decisions: expected one colour (and label) per CV slot, {self.n_cvs}")
        for slot, vehicle in enumerate(self._slot_vehicle):
            if vehicle is not None:
                self._sumo.api.vehicle.setColor(vehicle, tuple(int(c) for c in colors[slot]))
                if labels is not None:
                    self._sumo.api.vehicle.setParameter(vehicle, road.DECISION_PARAM, labels[slot])
        if tags is not None and self.gui:
            if sum(v is not None for v in self._slot_vehicle) > GUI_LABEL_LIMIT:
                tags = None  # too many to read: the vehicles' colours alone say what each CV does
            self._draw_labels(colors, tags, labels)

    def _draw_labels(self, colors: Sequence[Sequence[int]], tags: Sequence[str] | None,
                     details: Sequence[str] | None) -> None:
        api = self._sumo.api
        for kind, name in self._labels_drawn:
            (api.poi if kind == "poi" else api.polygon).remove(name)
        self._labels_drawn = []
        state = self._state
        slots = [i for i, v in enumerate(self._slot_vehicle) if v is not None and state.active[i]]
        self._read_view()
        metrics = LabelMetrics()
        band, obstacles = None, []
        spec = self._map.road
        if spec is not None:  # the road, with room for vehicles drawn wider than their lane
            half = spec.lanes_per_direction * spec.lane_width_m + 1.5
            band = (-half, half)
        # The RSU dots and names; each name on a box of its RSU's hue (sumo-gui draws every POI text
        # in one colour). On the road a name sits above its RSU, on other maps on it (_add_rsus).
        for k, r in enumerate(self._rsus):
            dot = (road.RSU_DOT_M if spec is not None else max(r.radius / 10.0, 1.0)) / 2.0
            obstacles.append((r.x - dot, r.y - dot, r.x + dot, r.y + dot))
            w, h = metrics.size_m(f"RSU {k}", self._px_per_m)
            ny = r.y + (road.RSU_NAME_OFFSET_M if spec is not None else 0.0) - metrics.drop_px / self._px_per_m
            obstacles.append((r.x - w / 2, ny - h / 2, r.x + w / 2, ny + h / 2))
            self._add_box(f"cosim_rsu{k}_box", obstacles[-1], pale(rsu_hue(k)), 4.5)
        if not slots or tags is None:  # no labels: the RSU boxes only
            return
        # Where each CV will be when sumo-gui draws the frame: one slot on at its present velocity
        # (exact on the paper's road away from its ends).
        dt = self.cfg.scenario.slot_s
        x0, y0, x1, y1 = self._view
        ahead = np.stack([state.x + state.speed * np.cos(state.heading) * dt,
                          state.y + state.speed * np.sin(state.heading) * dt], axis=-1)[slots]
        ahead[:, 0] = np.clip(ahead[:, 0], x0, x1)
        texts = [tags[i] for i in slots]
        boxes = layout_labels(ahead, texts, self._px_per_m, self._view, band, obstacles, metrics)
        for i, (ax, ay), box, text in zip(slots, ahead, boxes, texts):
            rgb = tuple(int(c) for c in colors[i][:3])
            cx, cy = 0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3])
            edge = box[1] if cy > ay else box[3]  # the line ends at the label's side towards its vehicle
            api.polygon.add(f"cosim_label{i}_line", [(float(ax), float(ay)), (float(cx), float(edge))],
                            rgb + (255,), False, "label", 4, 0.8)
            self._labels_drawn.append(("polygon", f"cosim_label{i}_line"))
            # White, framed in the CV's colour (a pale fill would read as InstrT).
            self._add_box(f"cosim_label{i}_box", box, (255, 255, 255), 5.5)
            self._add_box(f"cosim_label{i}_frame", box, rgb, 5.6, fill=False)
            lift = metrics.drop_px / self._px_per_m  # so that the text lands on its box
            api.poi.add(f"cosim_label{i}", float(cx), float(cy + lift), rgb + (255,), text, 6, "", 0.1, 0.1)
            if details is not None:
                api.poi.setParameter(f"cosim_label{i}", road.DECISION_PARAM, details[i])
            self._labels_drawn.append(("poi", f"cosim_label{i}"))

    def _add_box(self, name: str, box: tuple[float, float, float, float], rgb: tuple[int, int, int],
                 layer: float, fill: bool = True) -> None:
        x0, y0, x1, y1 = (float(v) for v in box)
        shape = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)] + ([] if fill else [(x0, y0)])
        self._sumo.api.polygon.add(name, shape, tuple(rgb) + (255,), fill, "label", layer, 1.0)
        self._labels_drawn.append(("polygon", name))

    def _fit_view(self) -> None:
        """Show the area the RSUs cover (on the paper's road: all of it), centred, with a small margin."""
        cx0, cy0, cx1, cy1 = self._view_area()
        pad = 0.02 * max(cx1 - cx0, cy1 - cy0)
        gui = self._sumo.api.gui
        gui.setBoundary(gui.DEFAULT_VIEW, cx0 - pad, cy0 - pad, cx1 + pad, cy1 + pad)
        self._read_view()

    def _read_view(self) -> None:
        """What sumo-gui shows now (it keeps its window's aspect; a user may have zoomed or panned)."""
        gui = self._sumo.api.gui
        (vx0, vy0), (vx1, vy1) = gui.getBoundary(gui.DEFAULT_VIEW)
        self._view = (vx0, vy0, vx1, vy1)
        self._px_per_m = (self._window[0] - _GUI_FRAME_PX[0]) / max(vx1 - vx0, 1e-9)

    @property
    def window_size(self) -> tuple[int, int]:
        """sumo-gui's window, px (fitted to the map's shape on other maps)."""
        return self._window

    def _fitting_window(self) -> tuple[int, int]:
        """The road's window on the paper's road; elsewhere as wide, and as high as the area the RSUs
        cover needs at that width (within 400..900 px of view), so a city is not a strip."""
        if self._map.road is not None:
            return road.WINDOW_SIZE
        x0, y0, x1, y1 = self._view_area()
        width = road.WINDOW_SIZE[0]
        view_h = (width - _GUI_FRAME_PX[0]) * (y1 - y0) / max(x1 - x0, 1e-9)
        return width, int(round(min(max(view_h, 400.0), 900.0))) + _GUI_FRAME_PX[1]

    def _map_view_settings(self) -> Path:
        """The road's sumo-gui view settings with vehicles drawn large enough to see on this map's scale
        (about 4 px per metre of car, between the road's 3x and 20x)."""
        path = Path(self._tmp.name) / "map.view.xml"
        if not path.is_file():
            x0, _, x1, _ = self._view_area()
            px_per_m = (self._window[0] - _GUI_FRAME_PX[0]) / max(x1 - x0, 1e-9)
            tree = ET.parse(road.ROAD_DIR / f"{road.NAME}.view.xml")
            for vehicles in tree.getroot().iter("vehicles"):
                vehicles.set("vehicle_exaggeration", f"{min(max(4.0 / px_per_m, 3.0), 20.0):.1f}")
            tree.write(path, encoding="UTF-8", xml_declaration=True)
        return path

    def _view_area(self) -> tuple[float, float, float, float]:
        """The area the RSUs cover (on the paper's road: all of it), within the map."""
        x0, y0, x1, y1 = self._net.bbox
        cx0 = max(x0, min(r.x - r.radius for r in self._rsus))
        cx1 = min(x1, max(r.x + r.radius for r in self._rsus))
        cy0 = max(y0, min(r.y - r.radius for r in self._rsus))
        cy1 = min(y1, max(r.y + r.radius for r in self._rsus))
        if cx1 <= cx0 or cy1 <= cy0:  # RSUs beside the map: show the map
            return x0, y0, x1, y1
        return cx0, cy0, cx1, cy1

    def screenshot(self, path: str | Path) -> None:
        """Save sumo-gui's view to ``path``. SUMO writes the file during its next step."""
        if not self.gui:
            raise CosimError("screenshot() needs gui=True")
        self._sumo.api.gui.screenshot(self._sumo.api.gui.DEFAULT_VIEW, str(path))

    # -- internals -----------------------------------------------------------------------------

    def _argv(self, sumo_seed: int, start: _Placement | None) -> list[str]:
        options = {"--seed": str(sumo_seed), "--no-step-log": "true", "--no-warnings": "true",
                   "--verbose": "false",  # some maps ask for it: it would print SUMO's statistics every episode
                   "--end": "-1"}  # the episode decides when to stop, not the map's end time
        if self.cfg.sumo.step_length_s is not None:
            options["--step-length"] = repr(self.cfg.sumo.step_length_s)
        if self.gui:
            # Top left, so that the dashboard (cosim/dashboard.py) can sit right below it.
            options.update({"--start": "true", "--quit-on-end": "true", "--window-pos": "0,0",
                            "--window-size": ",".join(map(str, self._window))})
            if self._map.road is None:  # other maps: the road's view settings, which the CV labels need
                options["--gui-settings-file"] = str(self._map_view_settings())
        if start is not None:
            # In place of the road's route file: its vTypes and routes, and this episode's vehicles.
            _write_episode_routes(self._episode_routes, self.cfg, self._map.road, self._map.demand[0], start)
            options["--route-files"] = str(self._episode_routes)
        extra = list(self.cfg.sumo.extra_args)
        given = {a for a in extra if a.startswith("-")}  # SUMO rejects an option given twice
        argv = list(self._map.args) + [a for a in _begin_args(self._map) if "--begin" not in given]
        for key, value in options.items():
            if key not in given:
                argv += [key, value]
        return argv + extra

    def _begin(self, sumo_seed: int, start: _Placement | None) -> MobilityState:
        """Start an episode: (re)load SUMO and perform the step that inserts the vehicles departing at 0."""
        if self._closed:
            raise CosimError("SumoMobility is closed")
        self._episode = (sumo_seed, start)
        argv = self._argv(sumo_seed, start)
        self._sumo.load(argv)
        self._slot_vehicle = [None] * self.n_cvs
        self._slot_of = {}
        self._waiting = {}
        self._cv_rng = np.random.default_rng(sumo_seed)
        try:
            api = self._sumo.api
            api.simulation.subscribe(_SIM_VARS)
            self.step_length = api.simulation.getDeltaT()
            self._labels_drawn = []  # a (re)load dropped them
            if self._map.road is None:
                self._add_rsus(api)
            if self.gui:
                self._fit_view()
            # Other maps start empty: let traffic build up before the first slot.
            warmup = round(self._warmup / self.step_length)
            return self._steps(1 + warmup)
        except self._sumo.errors as exc:  # SUMO reads route files as it goes: a bad one fails here
            message = self._sumo.failure(exc)
            self._sumo.close()
            raise CosimError(f"SUMO could not load {_argv_map(argv)}: {message}") from exc

    def _steps(self, n: int) -> MobilityState:
        api = self._sumo.api
        for k in range(n):
            if k == n - 1 and self.record_dir is not None:
                # Requested before the slot's last step, the screenshot shows the state after it.
                self.screenshot(self.record_dir / f"slot_{self._frame:05d}.png")
                self._frame += 1
            api.simulationStep()
            self._update_slots(api.simulation.getSubscriptionResults())
        if self._pool:
            self._hand_over()
        return self._read()

    def _add_rsus(self, api: Any) -> None:
        """Other maps: each RSU a POI (in sumo-gui with its coverage circle) that reports the vehicles near it."""
        vars_ = [tc.VAR_POSITION, tc.VAR_ANGLE] + ([tc.VAR_TYPE] if self.cfg.sumo.cv_vtype is not None else [])
        # Vehicles up to a slot at 30 m/s outside the radius may be entering it.
        entering_m = 30.0 * self.cfg.scenario.slot_s
        for k, r in enumerate(self._rsus):
            poi = f"{_RSU_POI}{k}"
            size = max(r.radius / 10.0, 1.0)  # visible when the view spans the coverage circles
            api.poi.add(poi, r.x, r.y, (*rsu_hue(k), 255), f"RSU {k}", 5, "", size, size)
            if self._pool:
                api.poi.subscribeContext(poi, tc.CMD_GET_VEHICLE_VARIABLE, r.radius + entering_m, vars_)
            if self.gui:  # the rim of its coverage in its hue, as on the paper's road (sumo_net/generate_road.py)
                circle = [(r.x + r.radius * math.cos(a), r.y + r.radius * math.sin(a))
                          for a in np.linspace(0.0, 2.0 * math.pi, 49)]
                api.polygon.add(f"{poi}_coverage", circle, (*rsu_hue(k), 170), False, "coverage", -1,
                                max(r.radius / 100.0, 1.0))
        # sumo-gui's view: _fit_view, with the road's view settings (vehicles in the colours we give them).

    def _hand_over(self) -> None:
        """Give each CV slot whose vehicle is gone or outside every RSU's coverage to a free vehicle
        inside coverage (at the RSU that has the fewest CVs, the nearest to it first) or, with none, to
        one heading into it (the closest to the edge first); a CV that is itself entering keeps its
        slot against another entering one, and with nobody free a slot keeps its vehicle."""
        api = self._sumo.api
        vtype = self.cfg.sumo.cv_vtype
        rank: dict[str, tuple[int, float, int]] = {}  # (0 inside | 1 entering, distance to RSU or edge, RSU)
        for k, r in enumerate(self._rsus):
            for vehicle, v in api.poi.getContextSubscriptionResults(f"{_RSU_POI}{k}").items():
                if vtype is not None and v[tc.VAR_TYPE] != vtype:
                    continue
                x, y = v[tc.VAR_POSITION]
                d = math.hypot(x - r.x, y - r.y)
                if d <= r.radius:
                    here = (0, d, k)
                else:
                    a = math.radians(v[tc.VAR_ANGLE])  # SUMO: clockwise from north
                    if math.sin(a) * (r.x - x) + math.cos(a) * (r.y - y) <= 0.0:
                        continue  # heading away
                    here = (1, d - r.radius, k)
                if here < rank.get(vehicle, (2, 0.0, -1)):
                    rank[vehicle] = here
        load = [0] * len(self._rsus)  # CVs inside each RSU's coverage (at their nearest RSU)
        for vehicle in self._slot_vehicle:
            if vehicle in rank and rank[vehicle][0] == 0:
                load[rank[vehicle][2]] += 1
        free = [(rk, vehicle) for vehicle, rk in rank.items() if vehicle not in self._slot_of]

        def order(j: int) -> tuple:
            (inside, d, k), vehicle = free[j]
            return inside, load[k] if inside == 0 else 0, d, vehicle

        for slot, vehicle in enumerate(self._slot_vehicle):
            if not free:
                break
            have = rank.get(vehicle, (2, 0.0, -1)) if vehicle is not None else (3, 0.0, -1)
            if have[0] <= min(rk[0] for rk, _ in free):
                continue  # inside, or entering with only entering ones to swap for
            rk, new = free.pop(min(range(len(free)), key=order))
            if vehicle is not None:
                del self._slot_of[vehicle]
                api.vehicle.unsubscribe(vehicle)
                if self.gui:
                    api.vehicle.setColor(vehicle, _OTHER_COLOR)
            if rk[0] == 0:
                load[rk[2]] += 1
            self._slot_vehicle[slot] = new
            self._slot_of[new] = slot
            api.vehicle.subscribe(new, _VEHICLE_VARS)

    def _update_slots(self, sim: dict[int, Any]) -> None:
        self.sim_time = sim[tc.VAR_TIME]
        for vehicle in sim[tc.VAR_ARRIVED_VEHICLES_IDS]:
            self._waiting.pop(vehicle, None)
            slot = self._slot_of.pop(vehicle, None)
            if slot is not None:
                self._slot_vehicle[slot] = None
        if self._waiting and None in self._slot_vehicle:  # penetration: CVs that waited longest first
            for slot in [i for i, v in enumerate(self._slot_vehicle) if v is None][:len(self._waiting)]:
                vehicle = next(iter(self._waiting))
                del self._waiting[vehicle]
                self._slot_vehicle[slot] = vehicle
                self._slot_of[vehicle] = slot
                self._sumo.api.vehicle.subscribe(vehicle, _VEHICLE_VARS)
        for vehicle in sim[tc.VAR_DEPARTED_VEHICLES_IDS]:
            slot = self._slot_for(vehicle)
            if self.gui and self._map.road is None:
                self._sumo.api.vehicle.setColor(vehicle, _OTHER_COLOR)  # a CV gets its decision's colour
            if slot is not None:
                self._slot_vehicle[slot] = vehicle
                self._slot_of[vehicle] = slot
                self._sumo.api.vehicle.subscribe(vehicle, _VEHICLE_VARS)

    def _slot_for(self, vehicle: str) -> int | None:
        if self._map.road is not None:  # slot i is cv<i>; background vehicles get none
            return int(vehicle[2:]) if vehicle.startswith("cv") else None
        if self._pool:  # slots are handed out by coverage at the end of each slot
            return None
        vtype = self.cfg.sumo.cv_vtype
        if self._pool_kind == "penetration":
            # One draw per departing vehicle (of the CV vType), in SUMO's order: the same seed, the same CVs.
            if vtype is not None and self._sumo.api.vehicle.getTypeID(vehicle) != vtype:
                return None
            if self._cv_rng.random() >= self.cfg.sumo.penetration:
                return None
            if None not in self._slot_vehicle:
                self._waiting[vehicle] = None
                return None
            return self._slot_vehicle.index(None)
        if None not in self._slot_vehicle:
            return None
        if vtype is not None and self._sumo.api.vehicle.getTypeID(vehicle) != vtype:
            return None
        return self._slot_vehicle.index(None)

    def _read(self) -> MobilityState:
        results = self._sumo.api.vehicle.getAllSubscriptionResults()
        n = self.n_cvs
        x, y, speed, angle = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
        lane = np.zeros(n, dtype=np.int64)
        active = np.zeros(n, dtype=bool)
        spec = self._map.road
        for slot, vehicle in enumerate(self._slot_vehicle):
            r = results.get(vehicle) if vehicle is not None else None
            if not r or r[tc.VAR_POSITION][0] == tc.INVALID_DOUBLE_VALUE:  # not inserted, or teleporting
                continue
            x[slot], y[slot] = r[tc.VAR_POSITION]
            speed[slot] = r[tc.VAR_SPEED]
            angle[slot] = r[tc.VAR_ANGLE]
            index = r[tc.VAR_LANE_INDEX]
            if spec is not None and r[tc.VAR_ROAD_ID] == road.WEST:
                index = 2 * spec.lanes_per_direction - 1 - index
            lane[slot] = index
            active[slot] = True
        # SUMO: degrees clockwise from north; the model: radians counter-clockwise from east, in (-pi, pi].
        heading = np.where(active, np.pi - np.mod(np.pi / 2.0 + np.radians(angle), 2.0 * np.pi), 0.0)
        self._state = MobilityState(x=x, y=y, speed=speed, heading=heading, lane=lane, active=active)
        return self._state.copy()

    def _crashed(self, exc: BaseException) -> CosimError:
        message = self._sumo.failure(exc)
        self._sumo.close()
        return CosimError(f"SUMO exited at simulation time {self.sim_time:g} s running {self._map.name}: {message}")

    def _restart(self) -> None:
        """After a crash: a new SUMO, the road's CVs where they were, at their drawn speeds."""
        warnings.warn(f"SUMO '{self.label}' exited at simulation time {self.sim_time:g} s; restarting it",
                      RuntimeWarning, stacklevel=3)
        self._sumo.close()
        sumo_seed, start = self._episode
        if start is not None:
            start = _Placement(self._state.x, start.speed, self._state.lane)
        self._begin(sumo_seed, start)


SUMO_MEMORY_MB = 50   # resident memory of one SUMO on the paper's road, measured (more on bigger maps)
SUMO_OPEN_FILES = 4   # a TraCI socket, its log file and SUMO's pipes, per simulation
_RESERVED_FILES = 64  # what Python, torch and the outputs keep open


def check_sumo_capacity(n_envs: int) -> None:
    """Refuse an ``n_envs`` whose SUMO processes would not fit this machine's memory or open-file limit."""
    mem = available_memory_mb()
    if mem is not None and n_envs * SUMO_MEMORY_MB > mem:
        raise ConfigError(f"training.n_envs = {n_envs} would start {n_envs} SUMO processes, about "
                          f"{n_envs * SUMO_MEMORY_MB:,} MB at {SUMO_MEMORY_MB} MB each, but {mem:,.0f} MB of memory is "
                          f"available: use at most {max(1, int(mem // SUMO_MEMORY_MB))}")
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return
    if soft != resource.RLIM_INFINITY and n_envs * SUMO_OPEN_FILES + _RESERVED_FILES > soft:
        raise ConfigError(f"training.n_envs = {n_envs} SUMO processes need about "
                          f"{n_envs * SUMO_OPEN_FILES + _RESERVED_FILES} open files, over this process's limit of "
                          f"{soft} (ulimit -n): use at most {max(1, (soft - _RESERVED_FILES) // SUMO_OPEN_FILES)}")


class SumoBatchMobility(BatchMobility):
    """``n_envs`` SUMO simulations side by side, with (E, I) arrays like AnalyticMobility's batch methods.

    One environment uses libsumo (if ``sumo.use_libsumo``); more use TraCI, one labelled
    connection each, stepped in turn. (Stepping them from threads was measured no faster on
    two cores: the Python side of each step is what takes the time.) Environment e's start and SUMO
    seed derive from the reset seed; on the road the start equals ``AnalyticMobility(cfg,
    n_envs).reset_batch(seed)``. Environment e generates its random trips (maps without
    routes) with seed ``cfg.seed + e``. The GUI (and recording) shows one simulation, so it
    needs ``n_envs == 1``; ``show_decisions`` and ``screenshot`` act on it.
    """

    def __init__(self, cfg: Config, n_envs: int, n_cvs: int | None = None, gui: bool = False,
                 record_dir: str | None = None):
        if n_envs < 1:
            raise ConfigError(f"n_envs: {n_envs}; at least 1 environment is needed")
        if (gui or record_dir is not None) and n_envs != 1:
            raise ConfigError(f"the SUMO GUI shows one simulation, not n_envs = {n_envs}")
        check_sumo_capacity(n_envs)
        if n_envs > 1:  # libsumo runs one simulation per process
            cfg = cfg.replace(**{"sumo.use_libsumo": False})
        self.cfg = cfg
        self.n_envs = n_envs
        prefix = f"cosim-batch-{next(_labels)}"
        self.envs: list[SumoMobility] = []
        try:
            for e in range(n_envs):
                placed = {} if e == 0 else {"rsus": self.envs[0].rsu_configs(),
                                            "map_summary": self.envs[0].map_summary}
                self.envs.append(SumoMobility(cfg.replace(seed=(cfg.seed + e) % 2**31), n_cvs, gui=gui,
                                              label=f"{prefix}-{e}", record_dir=record_dir, **placed))
        except BaseException:
            self.close()
            raise
        self.n_cvs = self.envs[0].n_cvs
        self._rng = np.random.default_rng(cfg.seed)

    def reset_batch(self, seed: int | None = None) -> MobilityState:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        on_road = self.envs[0]._map.road is not None
        placement, sumo_seeds = _draw_episode(self._rng, self.cfg, self.n_envs, self.n_cvs, on_road)
        return stack_states([env._begin(int(sumo_seeds[e]), None if placement is None else placement.row(e))
                             for e, env in enumerate(self.envs)])

    def advance_batch(self, dt: float) -> MobilityState:
        return stack_states([env.advance(dt) for env in self.envs])

    def rsu_configs(self) -> tuple[RSUConfig, ...]:
        return self.envs[0].rsu_configs()

    @property
    def map_summary(self) -> MapSummary | None:
        """Other maps: their size, traffic and how the RSUs cover it (None on the paper's road)."""
        return self.envs[0].map_summary

    def show_decisions(self, colors: Sequence[Sequence[int]], labels: Sequence[str] | None = None,
                       tags: Sequence[str] | None = None) -> None:
        self.envs[0].show_decisions(colors, labels, tags)

    def screenshot(self, path: str | Path) -> None:
        self.envs[0].screenshot(path)

    def close(self) -> None:
        for env in self.envs:
            env.close()
