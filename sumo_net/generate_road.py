"""Build the paper's road for SUMO: ``python sumo_net/generate_road.py [--out DIR]``.

A straight east-west road, 700 m, 2 lanes per direction of 3.75 m, centreline
at y = 0 (spec/MODEL.md section 1). Each direction is one edge whose lanes
spread to the right of its centreline, so the eastbound lanes 0, 1 lie at
y = -5.625, -1.875 and the westbound lanes 1, 0 at y = 1.875, 5.625: the
model's lanes 0..3, south to north. Lane-to-lane U-turns at both ends
(eastbound lane j <-> westbound lane j, the model's lane j <-> 3 - j) and no
internal links make a closed ring on which vehicles with a ``repeat`` route
circulate forever, as ``AnalyticMobility(boundary='uturn')`` assumes.

Written to ``road/``: the plain node/edge/connection files, ``road.net.xml``
(netconvert), ``road.rou.xml`` (vTypes and the two looping routes; the CVs
themselves are added per episode by ``cosim.sumo_mobility``), ``road.add.xml``
(RSUs as POIs, their coverage as circles), ``road.view.xml`` (sumo-gui view)
and ``road.sumocfg``. Running the script again reproduces them byte for byte.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import sumo

try:
    from cosim.palette import rsu_hue
except ImportError:  # run as a script from a checkout that is not installed
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from cosim.palette import rsu_hue

ROAD_DIR = Path(__file__).resolve().parent / "road"
NAME = "road"
EAST, WEST = "eastbound", "westbound"
CV_VTYPE, BACKGROUND_VTYPE = "cv", "background"
ROUTE_EAST, ROUTE_WEST = "loop_east", "loop_west"
# Loops of 2 x 700 m a vehicle drives before its route ends: a day at 16 m/s. SUMO expands
# the route at load time, so this costs time at each load; cosim.sumo_mobility sizes it per episode.
ROUTE_REPEATS = 1_000
COVERAGE_VERTICES = 72
DECISION_PARAM = "decision"  # vehicle parameter that sumo-gui shows beside each CV


@dataclass(frozen=True)
class RoadSpec:
    """What the generated files depend on; the defaults are the committed road."""

    length_m: float = 700.0
    lanes_per_direction: int = 2
    lane_width_m: float = 3.75
    speed_limit_mps: float = 20.0  # above the fastest CV (16 m/s)
    # (x, y, coverage radius) of each RSU, network coordinates, m: drawn in road.add.xml
    rsus: tuple[tuple[float, float, float], ...] = ((200.0, 9.375, 200.0), (350.0, 9.375, 200.0),
                                                    (500.0, 9.375, 200.0))
    background_vehicles: int = 0  # written into road.rou.xml, for runs of the .sumocfg alone


def _num(v: float) -> str:
    """A number as SUMO files write it: no trailing zeros, so the files do not depend on float formatting."""
    return f"{round(v, 3) + 0.0:.3f}".rstrip("0").rstrip(".")  # + 0.0 turns -0.0 into 0.0


def _write(root: ET.Element, path: Path) -> None:
    ET.indent(root, space="    ")
    ET.ElementTree(root).write(path, encoding="UTF-8", xml_declaration=True)
    with path.open("ab") as f:
        f.write(b"\n")


def _plain_files(spec: RoadSpec, out: Path) -> None:
    nodes = ET.Element("nodes")
    ET.SubElement(nodes, "node", id="W", x="0", y="0", type="priority")
    ET.SubElement(nodes, "node", id="E", x=_num(spec.length_m), y="0", type="priority")
    _write(nodes, out / f"{NAME}.nod.xml")

    edges = ET.Element("edges")
    for edge_id, src, dst in ((EAST, "W", "E"), (WEST, "E", "W")):
        ET.SubElement(edges, "edge", id=edge_id, attrib={"from": src}, to=dst,
                      numLanes=str(spec.lanes_per_direction), speed=_num(spec.speed_limit_mps),
                      width=_num(spec.lane_width_m))
    _write(edges, out / f"{NAME}.edg.xml")

    connections = ET.Element("connections")
    for src, dst in ((EAST, WEST), (WEST, EAST)):
        for lane in range(spec.lanes_per_direction):
            ET.SubElement(connections, "connection", attrib={"from": src}, to=dst,
                          fromLane=str(lane), toLane=str(lane))
    _write(connections, out / f"{NAME}.con.xml")


def _netconvert(out: Path) -> None:
    binary = os.path.join(sumo.SUMO_HOME, "bin", "netconvert")
    # Relative file names and cwd=out: netconvert copies its options into the file header.
    cmd = [binary, "--node-files", f"{NAME}.nod.xml", "--edge-files", f"{NAME}.edg.xml",
           "--connection-files", f"{NAME}.con.xml", "--output-file", f"{NAME}.net.xml",
           "--offset.disable-normalization", "true",  # keep x in [0, L] and the centreline at y = 0
           "--no-internal-links", "true",             # U-turns without internal lanes: a seamless ring
           "--junctions.limit-turn-speed", "-1",      # no slowing down for the U-turns
           "--precision", "3",                        # lane centres at +-5.625 exactly
           "--no-warnings", "true"]
    env = dict(os.environ, SUMO_HOME=sumo.SUMO_HOME)
    done = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"netconvert failed: {done.stderr.strip()}")
    # The header names the time of the run; drop it so that a rebuild is byte-identical.
    net = out / f"{NAME}.net.xml"
    net.write_text(re.sub(r"generated on \S+ by", "generated by", net.read_text(), count=1))


def _routes(spec: RoadSpec, out: Path) -> None:
    routes = ET.Element("routes")
    # Exact speeds (sigma, speedDev 0); no urge to keep right: a CV keeps the lane it was drawn in
    # unless it overtakes.
    ET.SubElement(routes, "vType", id=CV_VTYPE, vClass="passenger", sigma="0", speedDev="0",
                  lcKeepRight="0", color="255,200,0")
    ET.SubElement(routes, "vType", id=BACKGROUND_VTYPE, vClass="passenger", color="150,150,150")
    ET.SubElement(routes, "route", id=ROUTE_EAST, edges=f"{EAST} {WEST}", repeat=str(ROUTE_REPEATS))
    ET.SubElement(routes, "route", id=ROUTE_WEST, edges=f"{WEST} {EAST}", repeat=str(ROUTE_REPEATS))
    add_background(routes, spec.background_vehicles)
    _write(routes, out / f"{NAME}.rou.xml")


def add_background(routes: ET.Element, n: int) -> None:
    """Append ``n`` background vehicles, half in each direction, at free places drawn by SUMO's --seed."""
    for i in range(n):
        ET.SubElement(routes, "vehicle", id=f"bg{i}", type=BACKGROUND_VTYPE,
                      route=(ROUTE_EAST, ROUTE_WEST)[i % 2], depart="0",
                      departLane="random", departPos="random_free", departSpeed="max")


def _rsus(spec: RoadSpec, out: Path) -> None:
    add = ET.Element("additional")
    for k, (x, y, radius) in enumerate(spec.rsus):
        circle = " ".join(
            f"{_num(x + radius * math.cos(a))},{_num(y + radius * math.sin(a))}"
            for a in (2.0 * math.pi * i / COVERAGE_VERTICES for i in range(COVERAGE_VERTICES + 1)))
        ET.SubElement(add, "poly", id=f"rsu{k}_coverage", type="coverage", color="0,120,255,40",
                      fill="1", layer="-1", shape=circle)
        # The RSU's hue is the colour of the CVs that offload to it (cosim/palette.py).
        ET.SubElement(add, "poi", id=f"rsu{k}", type=f"RSU {k}", color=",".join(map(str, rsu_hue(k))), layer="5",
                      x=_num(x), y=_num(y), width="4", height="4")
    _write(add, out / f"{NAME}.add.xml")


def _view(spec: RoadSpec, out: Path) -> None:
    view = ET.Element("viewsettings")
    # Only what differs from sumo-gui's defaults: bigger vehicles and RSUs, each CV's decision as text.
    scheme = ET.SubElement(view, "scheme", name="cosim")
    ET.SubElement(scheme, "vehicles", vehicle_exaggeration="4", vehicleTextParam=DECISION_PARAM,
                  vehicleText_show="1", vehicleText_size="40", vehicleText_constantSize="1")
    ET.SubElement(scheme, "pois", poi_exaggeration="3", poiType_show="1")
    # Zoom in percent of the whole network's extent: the road with a margin at both ends.
    ET.SubElement(view, "viewport", zoom="90", x=_num(spec.length_m / 2.0), y="0")
    ET.SubElement(view, "delay", value="100")
    _write(view, out / f"{NAME}.view.xml")


def _sumocfg(out: Path) -> None:
    cfg = ET.Element("configuration")
    inp = ET.SubElement(cfg, "input")
    ET.SubElement(inp, "net-file", value=f"{NAME}.net.xml")
    ET.SubElement(inp, "route-files", value=f"{NAME}.rou.xml")
    ET.SubElement(inp, "additional-files", value=f"{NAME}.add.xml")
    timing = ET.SubElement(cfg, "time")
    ET.SubElement(timing, "begin", value="0")
    ET.SubElement(timing, "step-length", value="1")
    report = ET.SubElement(cfg, "report")
    ET.SubElement(report, "no-step-log", value="true")
    gui = ET.SubElement(cfg, "gui_only")
    ET.SubElement(gui, "gui-settings-file", value=f"{NAME}.view.xml")
    ET.SubElement(gui, "window-size", value="1400,360")  # wide and low, like the road
    _write(cfg, out / f"{NAME}.sumocfg")


def build(out: Path = ROAD_DIR, spec: RoadSpec = RoadSpec()) -> Path:
    """Write every file of the road into ``out``; returns the .sumocfg."""
    out.mkdir(parents=True, exist_ok=True)
    _plain_files(spec, out)
    _netconvert(out)
    _routes(spec, out)
    _rsus(spec, out)
    _view(spec, out)
    _sumocfg(out)
    return out / f"{NAME}.sumocfg"


def main(argv: list[str] | None = None) -> None:
    d = RoadSpec()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROAD_DIR, help="output directory (default: %(default)s)")
    p.add_argument("--length", type=float, default=d.length_m, help="road length, m")
    p.add_argument("--lanes", type=int, default=d.lanes_per_direction, help="lanes per direction")
    p.add_argument("--lane-width", type=float, default=d.lane_width_m, help="lane width, m")
    p.add_argument("--speed-limit", type=float, default=d.speed_limit_mps, help="speed limit, m/s")
    p.add_argument("--background", type=int, default=d.background_vehicles,
                   help="background vehicles in road.rou.xml (SumoMobility adds its own per episode)")
    a = p.parse_args(argv)
    spec = RoadSpec(a.length, a.lanes, a.lane_width, a.speed_limit, d.rsus, a.background)
    print(build(a.out, spec))


if __name__ == "__main__":
    main()
