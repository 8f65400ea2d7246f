"""Maps by name, the demand's own begin time, and synthetic cities of any size.

Named maps (``sumo.map``, ``--map NAME``; ``dtcosim maps`` lists them):

* ``resco/<name>``: the RESCO benchmark networks with their real demand (TAPASCologne, InTAS
  Ingolstadt) that the ``sumo-rl`` package ships: cologne1/3/8, ingolstadt1/7/21, arterial4x4,
  grid4x4. Only its data is used (``pip install ".[maps]"``); none of its code is imported.
* ``sumo/<name>``: the road scenarios of the eclipse-sumo wheel's ``tools/game`` folder.

A synthetic city for scaling studies is generated into a folder of its own (:func:`generate_city`,
``dtcosim maps generate``): a ``netgenerate`` grid, spider or random network with guessed traffic
lights, and ``randomTrips.py`` demand at a given number of vehicles per hour.

Where a map's traffic starts: SUMO discards vehicles that depart before ``--begin``, and an empty
network before the first departure teaches nothing. :func:`demand_begin` reads the first departure
of the route files (vehicles, trips, flows, persons), which becomes the begin time of a
``--net``/``--routes`` map, and of a ``.sumocfg`` whose own begin lies before it.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import sumo
import sumolib

from .config import ConfigError, CosimError

MAPS_EXTRA = 'pip install ".[maps]"'  # the extra that brings sumo-rl's RESCO data
GAME_DIR = Path(sumo.SUMO_HOME) / "tools" / "game"
# The wheel's tools/game scenarios with road traffic. Left out: bs3d and bs3Dosm (they need sumo-gui's
# 3-D view), rail and rail_demo (trains only), DRT2, DRT_demo and cross_demo (DRT and cross again).
GAME_MAPS = ("A10KW", "DRT", "corridor", "cross", "fkk_in", "fokr_bs_demo", "grid6", "ramp", "square")
RESCO_MAPS = ("arterial4x4", "cologne1", "cologne3", "cologne8", "grid4x4", "ingolstadt1", "ingolstadt7",
              "ingolstadt21")
FAMILIES = {"resco": "RESCO benchmark maps with real demand (sumo-rl's data, the maps extra)",
            "sumo": "the eclipse-sumo wheel's tools/game scenarios"}


@dataclass(frozen=True)
class NamedMap:
    name: str           # family/name, e.g. resco/ingolstadt21
    sumocfg: Path       # what SUMO loads
    description: str


def _resco_dir() -> Path | None:
    # find_spec locates the package without running it (importing sumo_rl needs SUMO_HOME set).
    spec = importlib.util.find_spec("sumo_rl")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "nets" / "RESCO"
    return folder if folder.is_dir() else None


def available_maps() -> list[NamedMap]:
    """Every named map that is installed here, RESCO's first."""
    found: list[NamedMap] = []
    resco = _resco_dir()
    if resco is not None:
        for name in RESCO_MAPS:
            cfg = resco / name / f"{name}.sumocfg"
            if cfg.is_file():
                found.append(NamedMap(f"resco/{name}", cfg, "RESCO, real demand" if not name.endswith("4x4")
                                      else "RESCO, synthetic demand"))
    for name in GAME_MAPS:
        cfg = GAME_DIR / f"{name}.sumocfg"
        if cfg.is_file():
            found.append(NamedMap(f"sumo/{name}", cfg, "SUMO tools/game scenario"))
    return found


def resolve(name: str) -> NamedMap:
    """The named map, or a one-line error saying which names exist (and how to install RESCO's)."""
    family, _, short = name.partition("/")
    if family not in FAMILIES or not short:
        raise ConfigError(f"sumo.map: '{name}' is not a map name; use FAMILY/NAME with FAMILY one of "
                          f"{', '.join(FAMILIES)} (dtcosim maps lists them), or give a file with --sumocfg/--net")
    known = RESCO_MAPS if family == "resco" else GAME_MAPS
    if short not in known:
        raise ConfigError(f"sumo.map: unknown map '{name}'; {family} has {', '.join(f'{family}/{m}' for m in known)}")
    for m in available_maps():
        if m.name == name:
            return m
    if family == "resco":
        raise ConfigError(f"sumo.map: {name} needs the RESCO maps of the sumo-rl package, which is not installed: "
                          f"{MAPS_EXTRA}")
    raise ConfigError(f"sumo.map: {name} is not in this SUMO installation ({GAME_DIR})")


# ---------------------------------------------------------------------------
# When the demand starts

_DEPARTING = {"vehicle": "depart", "trip": "depart", "person": "depart", "container": "depart", "flow": "begin",
              "personFlow": "begin", "containerFlow": "begin"}


def demand_begin(files: Iterable[Path]) -> float | None:
    """The earliest departure (s) in these route files, or None when they depart nobody at a fixed time.

    Departures such as ``triggered`` (a vehicle that waits for a person) have no time and are skipped."""
    first = math.inf
    for f in files:
        try:
            with sumolib.openz(str(f), "rb") as stream:
                for _, element in ET.iterparse(stream):
                    attr = _DEPARTING.get(element.tag)
                    if attr is not None:
                        value = element.get(attr)
                        if value is not None:
                            try:
                                seconds = sumolib.miscutils.parseTime(value)
                            except ValueError:
                                seconds = None
                            if seconds is not None:  # None: triggered, containerTriggered, ...
                                first = min(first, float(seconds))
                    if element.tag in _DEPARTING:
                        element.clear()  # route files can be large
        except ET.ParseError as exc:
            raise CosimError(f"{f} is not valid XML ({exc})") from None
    return first if math.isfinite(first) else None


def levelled_off(times: Sequence[float], counts: Sequence[float], window_s: float, tolerance: float,
                 cap_s: float) -> tuple[float, bool]:
    """When the number of vehicles in the network has levelled off, in s after ``times[0]``.

    The counts are averaged over consecutive windows of ``window_s``; traffic has levelled off at the
    start of the first window whose mean exceeds the previous window's (non-zero) mean by at most
    ``tolerance`` (relative). Returns (that time, True), or (``cap_s``, False) when it has not
    levelled off by then."""
    if not len(times):
        return cap_s, False
    t0 = times[0]
    n_windows = int(cap_s // window_s) + 1
    sums = [0.0] * n_windows
    seen = [0] * n_windows
    for t, c in zip(times, counts):
        j = int((t - t0) // window_s)
        if 0 <= j < n_windows:
            sums[j] += c
            seen[j] += 1
    means = [s / n if n else math.nan for s, n in zip(sums, seen)]
    for j in range(1, n_windows):
        before, now = means[j - 1], means[j]
        if before > 0 and now <= (1.0 + tolerance) * before and j * window_s <= cap_s:
            return j * window_s, True
    return cap_s, False


# ---------------------------------------------------------------------------
# Synthetic cities

CITY_KINDS = ("grid", "spider", "random")


@dataclass(frozen=True)
class CitySpec:
    """A generated city: ``size`` junctions per side (grid), arms and circles (spider) or iterations / 10
    (random); ``block_m`` between junctions; demand ``vehicles_per_hour`` for ``duration_s``."""

    kind: str = "grid"
    size: int = 8
    block_m: float = 200.0
    lanes: int = 2
    vehicles_per_hour: float = 3600.0
    duration_s: float = 3600.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in CITY_KINDS:
            raise ConfigError(f"city kind '{self.kind}' is unknown; choose {', '.join(CITY_KINDS)}")
        for key, lo, hi in (("size", 2, 200), ("lanes", 1, 6)):
            if not lo <= getattr(self, key) <= hi:
                raise ConfigError(f"city {key}: {getattr(self, key)} is out of range [{lo}, {hi}]")
        for key, low, high in (("block_m", 20.0, 5000.0), ("vehicles_per_hour", 1.0, 1e6), ("duration_s", 60.0, 86400.0)):
            if not low <= getattr(self, key) <= high:
                raise ConfigError(f"city {key}: {getattr(self, key):g} is out of range [{low:g}, {high:g}]")

    def netgenerate_args(self) -> list[str]:
        n, b = str(self.size), repr(self.block_m)
        shape = {"grid": ["--grid", "--grid.number", n, "--grid.length", b],
                 "spider": ["--spider", "--spider.arm-number", str(max(3, self.size)), "--spider.circle-number", n,
                            "--spider.space-radius", b],
                 "random": ["--rand", "--rand.iterations", str(10 * self.size), "--rand.max-distance", b,
                            "--rand.min-distance", repr(self.block_m / 2)]}[self.kind]
        return [*shape, "--default.lanenumber", str(self.lanes), "--tls.guess", "--seed", str(self.seed)]


def _sumo_env() -> dict[str, str]:
    return dict(os.environ, SUMO_HOME=sumo.SUMO_HOME)


def _run(cmd: list[str], what: str, cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, env=_sumo_env(), capture_output=True, text=True)
    if done.returncode != 0:
        last = ([line for line in (done.stderr + done.stdout).splitlines() if line.strip()] or ["no message"])[-1]
        raise CosimError(f"{what} failed: {last.strip()}")


def generate_city(out_dir: Path, spec: CitySpec) -> Path:
    """Write ``city.net.xml``, ``city.rou.xml`` and ``city.sumocfg`` into ``out_dir``; returns the .sumocfg.

    The same spec writes the same files (netgenerate and randomTrips.py are seeded)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net, routes, cfg = out_dir / "city.net.xml", out_dir / "city.rou.xml", out_dir / "city.sumocfg"
    # Relative names, run in out_dir: both tools copy their options into the file's header.
    _run([os.path.join(sumo.SUMO_HOME, "bin", "netgenerate"), *spec.netgenerate_args(), "--output-file", net.name],
         "netgenerate", out_dir)
    # --fringe-factor: most trips enter and leave at the city's edge, as through traffic does.
    _run([sys.executable, os.path.join(sumo.SUMO_HOME, "tools", "randomTrips.py"), "--net-file", net.name,
          "--route-file", routes.name, "--seed", str(spec.seed), "--begin", "0", "--end", repr(spec.duration_s),
          "--insertion-rate", repr(spec.vehicles_per_hour), "--fringe-factor", "5", "--min-distance",
          repr(2 * spec.block_m), "--validate", "--trip-attributes", 'departLane="best" departSpeed="max"'],
         "randomTrips.py", out_dir)
    root = ET.Element("configuration")
    inputs = ET.SubElement(root, "input")
    ET.SubElement(inputs, "net-file", value=net.name)
    ET.SubElement(inputs, "route-files", value=routes.name)
    time = ET.SubElement(root, "time")
    ET.SubElement(time, "begin", value="0")
    ET.SubElement(time, "end", value=repr(spec.duration_s))
    ET.indent(root)
    ET.ElementTree(root).write(cfg, encoding="UTF-8", xml_declaration=True)
    for leftover in out_dir.glob("trips.trips.xml"):  # randomTrips.py's intermediate trips
        leftover.unlink()
    for f in (net, routes):  # the headers name the time of the run: drop it, so the same spec writes the same bytes
        f.write_text(re.sub(r"generated on .*? by", "generated by", f.read_text()))
    return cfg
