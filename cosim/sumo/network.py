"""Which files SUMO loads for a configuration, and what their road network offers.

:func:`resolve_map` turns ``sumo.map`` (a name in :mod:`cosim.maps`), ``sumo.sumocfg`` (checked, and
begun at its demand's first departure when that comes after its ``<begin>``), ``sumo.net`` (with
``sumo.routes``, or random trips from SUMO's ``randomTrips.py`` seeded by ``cfg.seed``) or, by
default, the paper's road in ``sumo_net/road`` (rebuilt into a temporary folder when the scenario's
geometry or RSUs differ from the committed files) into a :class:`SumoMap`. :func:`net_info` reads a
network's bounding box, the roads passenger cars may use and their junctions, once per file version.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
import xml.sax
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import sumo
import sumolib

from sumo_net import generate_road as road

from .. import maps
from ..config import Config, ConfigError, CosimError
from .process import one_line, sumo_env


@dataclass(frozen=True)
class SumoMap:
    name: str                    # the file the user named, for messages
    args: tuple[str, ...]        # how SUMO loads it
    net: Path
    demand: tuple[Path, ...]     # route and additional files: where vTypes are defined
    road: Any = None             # generate_road.RoadSpec on the paper's road, else None
    begin: float = 0.0           # simulation time at which the map starts (s)
    set_begin: bool = False      # pass --begin: the demand starts after the .sumocfg's begin, or there is none


@dataclass(frozen=True)
class NetInfo:
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1
    # (length, shape) of each road passenger cars may use, one per pair of opposite edges, longest first
    roads: tuple[tuple[float, tuple[tuple[float, float], ...]], ...]
    junctions: tuple[tuple[float, float], ...] = ()  # where three or more of those roads meet


@lru_cache(maxsize=16)
def net_info(path: str, mtime: float) -> NetInfo:
    """Parsed once per file version (``mtime`` is part of the cache key only)."""
    try:
        return _read_net_info(path)
    except xml.sax.SAXException as exc:
        raise CosimError(f"network {path} does not parse: {exc}") from None
    except (KeyError, ValueError, IndexError, AttributeError, TypeError) as exc:
        # sumolib trusts the file: an edge naming a missing node, a bad number or shape ends up here.
        raise CosimError(f"network {path} is not a valid SUMO network ({type(exc).__name__}: "
                         f"{one_line(exc)[:80]}); rebuild it with netconvert") from None


def _read_net_info(path: str) -> NetInfo:
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
    return NetInfo((x0, y0, x1, y1), tuple(sorted(roads.values(), key=lambda r: -r[0])), junctions)


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
    done = subprocess.run(cmd, cwd=out_dir, env=sumo_env(), capture_output=True, text=True)
    if done.returncode != 0 or not trips.is_file():
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise CosimError(f"randomTrips.py failed on {net}: {last}")
    return trips


def _is_shipped_road(sumocfg: str) -> bool:
    try:
        return Path(sumocfg).expanduser().resolve() == (road.ROAD_DIR / f"{road.NAME}.sumocfg").resolve()
    except (OSError, RuntimeError):
        return False


def resolve_map(cfg: Config, workdir: Path) -> SumoMap:
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
        return SumoMap(s.map or str(path), ("-c", str(path)), inputs["net-file"][0],
                    tuple(inputs["route-files"] + inputs["additional-files"]), begin=first if later else own,
                    set_begin=later)
    if s.net:
        net = _existing(s.net, "sumo.net")
        net_info(str(net), net.stat().st_mtime)  # a broken network fails here, not inside randomTrips.py
        routes = _existing(s.routes, "sumo.routes") if s.routes else _random_trips(net, workdir, cfg)
        # Real demand often starts hours into the day (RESCO's at 25200 or 57600 s): begin with it.
        first = maps.demand_begin([routes]) if s.routes else None
        return SumoMap(str(net), ("-n", str(net), "-r", str(routes)), net, (routes,), begin=first or 0.0,
                    set_begin=bool(first))
    sc = cfg.scenario
    spec = road.RoadSpec(length_m=sc.road_length_m, lanes_per_direction=sc.lanes_per_direction,
                         lane_width_m=sc.lane_width_m, rsus=tuple((r.x, r.y, r.radius) for r in sc.rsus))
    directory = road.ROAD_DIR if spec == road.RoadSpec() else road.build(workdir / "road", spec).parent
    road_cfg = directory / f"{road.NAME}.sumocfg"
    return SumoMap(str(road_cfg), ("-c", str(road_cfg)), directory / f"{road.NAME}.net.xml",
                (directory / f"{road.NAME}.rou.xml",), spec)


def check_vtype(vtype: str, files: Sequence[Path]) -> None:
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


def _sumocfg_begin(path: Path) -> float:
    element = ET.parse(path).getroot().find(".//begin")
    if element is None:
        return 0.0
    return float(sumolib.miscutils.parseTime(element.get("value", "0")))


def begin_args(m: SumoMap) -> list[str]:
    return ["--begin", repr(m.begin)] if m.set_begin else []
