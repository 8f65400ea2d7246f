"""The committed SUMO road (sumo_net/road): reproducible, and the geometry of docs/model.md section 1."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import sumolib

from cosim.resources import REPO_ROOT
from cosim.sumo_mobility import road

pytestmark = pytest.mark.sumo

ROAD = REPO_ROOT / "sumo_net" / "road"


def test_generator_rebuilds_the_committed_files_byte_for_byte(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "sumo_net.generate_road", "--out", str(tmp_path)],
                   check=True, capture_output=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    committed = sorted(p.name for p in ROAD.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == committed
    for name in committed:
        assert (tmp_path / name).read_bytes() == (ROAD / name).read_bytes(), name


@pytest.fixture(scope="module")
def net() -> sumolib.net.Net:
    return sumolib.net.readNet(str(ROAD / "road.net.xml"))


def test_lane_centres_and_extent(net: sumolib.net.Net) -> None:
    # The model's lanes 0..3, south to north, are eastbound 0, 1 and westbound 1, 0.
    expected = {("eastbound", 0): -5.625, ("eastbound", 1): -1.875,
                ("westbound", 1): 1.875, ("westbound", 0): 5.625}
    for (edge, index), y in expected.items():
        lane = net.getEdge(edge).getLane(index)
        shape = np.array(lane.getShape())
        assert np.allclose(shape[:, 1], y), (edge, index, shape)
        assert sorted(shape[:, 0]) == pytest.approx([0.0, 700.0])
        assert lane.getWidth() == pytest.approx(3.75)
        assert lane.getSpeed() >= 16.0  # the fastest CV may drive its speed
    assert len(net.getEdges()) == 2


def test_u_turns_close_the_ring(net: sumolib.net.Net) -> None:
    east, west = net.getEdge("eastbound"), net.getEdge("westbound")
    for src, dst in ((east, west), (west, east)):
        links = {(c.getFromLane().getIndex(), c.getToLane().getIndex()) for c in src.getOutgoing()[dst]}
        assert links == {(0, 0), (1, 1)}
        assert all(c.getViaLaneID() == "" for c in src.getOutgoing()[dst])  # no internal lanes


def test_rsus_and_their_coverage() -> None:
    from cosim.palette import rsu_hue

    add = ET.parse(ROAD / "road.add.xml").getroot()
    pois = [(float(add.find(f"poi[@id='rsu{k}']").get("x")), float(add.find(f"poi[@id='rsu{k}']").get("y")))
            for k in range(3)]
    assert pois == [(200.0, 9.375), (350.0, 9.375), (500.0, 9.375)]
    for k, (x, y) in enumerate(pois):
        poly = add.find(f"poly[@id='rsu{k}_coverage']")
        points = np.array([[float(v) for v in p.split(",")] for p in poly.get("shape").split()])
        assert np.allclose(np.hypot(points[:, 0] - x, points[:, 1] - y), 200.0, atol=1e-3)
        # a rim in the RSU's own hue, the colour of the CVs that offload to it
        color = tuple(int(c) for c in poly.get("color").split(","))
        assert poly.get("fill") == "0" and color[:3] == rsu_hue(k) and color[3] < 255
        name = add.find(f"poi[@id='rsu{k}_name']")
        assert name.get("type") == f"RSU {k}" and float(name.get("y")) > y
    # lane markings: a solid centre line and one dashed divider in each direction
    ys = {float(p.get("shape").split()[0].split(",")[1]) for p in add.iter("poly") if p.get("type") == "marking"}
    assert ys == {0.0, -3.75, 3.75}


def test_routes_and_config() -> None:
    routes = ET.parse(ROAD / "road.rou.xml").getroot()
    cv = routes.find("vType[@id='cv']")
    assert cv.get("sigma") == "0" and cv.get("speedDev") == "0"
    assert routes.find("vType[@id='background']") is not None
    loops = {route.get("edges"): int(route.get("repeat")) for route in routes.iter("route")}
    assert loops.keys() == {"eastbound westbound", "westbound eastbound"}
    assert min(loops.values()) >= 1000  # vehicles circulate for a day when the .sumocfg runs alone
    cfg = ET.parse(ROAD / "road.sumocfg").getroot()
    assert cfg.find("time/step-length").get("value") == "1"
    for key in ("net-file", "route-files", "additional-files"):
        assert (ROAD / cfg.find(f"input/{key}").get("value")).is_file()


def test_a_non_default_road_is_built_to_order(tmp_path: Path) -> None:
    spec = road.RoadSpec(length_m=1000.0, lanes_per_direction=3, lane_width_m=3.5,
                         rsus=((500.0, 12.0, 300.0),), background_vehicles=4)
    net = sumolib.net.readNet(str(road.build(tmp_path, spec).parent / "road.net.xml"))
    ys = sorted(lane.getShape()[0][1] for edge in net.getEdges() for lane in edge.getLanes())
    assert ys == pytest.approx([-8.75, -5.25, -1.75, 1.75, 5.25, 8.75])
    assert net.getEdge("eastbound").getLength() == pytest.approx(1000.0)
    assert len(ET.parse(tmp_path / "road.rou.xml").getroot().findall("vehicle")) == 4
    assert math.isclose(float(ET.parse(tmp_path / "road.add.xml").getroot().find("poi").get("x")), 500.0)
