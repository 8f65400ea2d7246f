"""Build the paper's road for SUMO: ``python sumo_net/generate_road.py [--out DIR]``.

A straight east-west road, 700 m, 2 lanes per direction of 3.75 m, centreline
at y = 0 (docs/model.md section 1). Each direction is one edge whose lanes
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
DECISION_PARAM = "decision"  # vehicle parameter holding each CV's full decision (sumo-gui's parameter dialog)
WINDOW_SIZE = (1200, 500)    # sumo-gui's window, px: its view is about 10 px narrower and 215 px lower
LABEL_TEXT_SIZE = 50.0       # sumo-gui text size of POI types (CV labels, RSU names): about 12 px high
RSU_DOT_M = 8.0              # drawn diameter of an RSU, m
RSU_NAME_OFFSET_M = 14.0     # an RSU's name sits this far north of it, m
MARKING_PERIOD_M = 12.0      # a lane divider's dash and gap, m


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
    _lane_markings(add, spec)
    for k, (x, y, radius) in enumerate(spec.rsus):
        circle = " ".join(
            f"{_num(x + radius * math.cos(a))},{_num(y + radius * math.sin(a))}"
            for a in (2.0 * math.pi * i / COVERAGE_VERTICES for i in range(COVERAGE_VERTICES + 1)))
        # Each RSU in its own hue (cosim/palette.py), the colour of the CVs that offload to it. Only
        # the rim of its coverage: filled discs overlap into a blend where no hue can be told.
        hue = ",".join(map(str, rsu_hue(k)))
        ET.SubElement(add, "poly", id=f"rsu{k}_coverage", type="coverage", color=f"{hue},170",
                      fill="0", lineWidth="1.5", layer="-1", shape=circle)
        ET.SubElement(add, "poi", id=f"rsu{k}", color=hue, layer="5", x=_num(x), y=_num(y),
                      width=_num(RSU_DOT_M), height=_num(RSU_DOT_M))
        # The name above the dot, clear of the road (sumo-gui draws a POI's type as its text).
        ET.SubElement(add, "poi", id=f"rsu{k}_name", type=f"RSU {k}", color=hue, layer="5",
                      x=_num(x), y=_num(y + RSU_NAME_OFFSET_M), width="0.1", height="0.1")
    _write(add, out / f"{NAME}.add.xml")


def _lane_markings(add: ET.Element, spec: RoadSpec) -> None:
    """White lines a person can see at a zoom that shows the whole road: sumo-gui hides its own
    lane borders when a lane is a few pixels wide. Solid between the directions, dashed between
    lanes of one direction."""
    w, half = spec.lane_width_m, spec.lanes_per_direction
    ET.SubElement(add, "poly", id="marking_centre", type="marking", color="255,255,255", fill="0",
                  lineWidth="0.9", layer="3", shape=f"0,0 {_num(spec.length_m)},0")
    for j in range(1, half):
        for side in (-1, 1):
            y = _num(side * j * w)
            n = int(spec.length_m // MARKING_PERIOD_M)
            for d in range(n):
                x0 = d * MARKING_PERIOD_M
                ET.SubElement(add, "poly", id=f"marking_{side * j}_{d}", type="marking", color="255,255,255",
                              fill="0", lineWidth="0.7", layer="3",
                              shape=f"{_num(x0)},{y} {_num(x0 + MARKING_PERIOD_M / 2)},{y}")


def _view(spec: RoadSpec, out: Path) -> None:
    view = ET.Element("viewsettings")
    # Only what differs from sumo-gui's defaults. The whole road spans the window, about 1.7 px
    # per metre: vehicles drawn 3 times their size, no lane arrows or link decals (clutter at
    # that zoom). Each CV's label is a POI that cosim.sumo_mobility places clear of the road and
    # of the other labels; POI texts (those labels and the RSU names) are black, on boxes that
    # cosim.sumo_mobility draws in the CV's or the RSU's colour.
    scheme = ET.SubElement(view, "scheme", name="cosim")
    ET.SubElement(scheme, "background", backgroundColor="white", showGrid="0")
    ET.SubElement(scheme, "edges", laneShowBorders="1", showLinkDecals="0", showDirection="0")
    ET.SubElement(scheme, "vehicles", vehicleQuality="2", vehicle_exaggeration="3", showBlinker="0",
                  vehicleTextParam=DECISION_PARAM, vehicleText_show="0")
    ET.SubElement(scheme, "pois", poi_exaggeration="1", poiType_show="1", poiType_size=_num(LABEL_TEXT_SIZE),
                  poiType_color="black", poiType_bgColor="0,0,0,0", poiType_constantSize="1")
    ET.SubElement(scheme, "legend", showSizeLegend="1")
    # Zoom in percent of the whole network's extent (cosim.sumo_mobility fits the view over TraCI).
    ET.SubElement(view, "viewport", zoom="100", x=_num(spec.length_m / 2.0), y="0")
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
    ET.SubElement(gui, "window-size", value=",".join(map(str, WINDOW_SIZE)))
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
