"""SumoMobility and SumoBatchMobility: the paper's road against the analytic model, other maps, errors, cleanup."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sumo

from cosim.config import Config, ConfigError, CosimError, load_config
from cosim.mobility import AnalyticMobility, Mobility, MobilityState
from cosim.sumo_mobility import SumoBatchMobility, SumoMobility
from strategies import netgenerate

pytestmark = pytest.mark.sumo

BIN = Path(sumo.SUMO_HOME) / "bin"
# A configuration that ships with the eclipse-sumo wheel: a signalised crossing, 0.2 s steps.
GAME = Path(sumo.SUMO_HOME) / "tools" / "game"
SEED = 0  # no two CVs meet within 30 slots (see test_sumo_follows_the_analytic_road)


@pytest.fixture
def road_cfg() -> Config:
    return load_config().replace(**{"scenario.boundary": "uturn"})


def sumo_children() -> list[int]:
    """sumo / sumo-gui processes started by this test process."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            status = (proc / "status").read_text()
            argv0 = (proc / "cmdline").read_bytes().split(b"\0")[0]
        except (OSError, ValueError):
            continue
        if int(re.search(r"PPid:\s+(\d+)", status).group(1)) == os.getpid() and \
                os.path.basename(argv0) in (b"sumo", b"sumo-gui"):
            found.append(int(proc.name))
    return found


def _run(mob: SumoMobility | AnalyticMobility, seed: int, slots: int) -> list[MobilityState]:
    states = [mob.reset(seed)]
    states += [mob.advance(1.0) for _ in range(slots)]
    return states


def _max_deviation(a: list[MobilityState], b: list[MobilityState]) -> float:
    return max(float(np.hypot(sa.x - sb.x, sa.y - sb.y).max()) for sa, sb in zip(a, b))


# -- the paper's road --------------------------------------------------------------------------

def test_shapes_and_dtypes(road_cfg: Config) -> None:
    mob = SumoMobility(road_cfg)
    assert isinstance(mob, Mobility)
    try:
        for state in (mob.reset(1), mob.advance(1.0)):
            for name, dtype in (("x", np.float64), ("y", np.float64), ("speed", np.float64),
                                ("heading", np.float64), ("lane", np.int64), ("active", np.bool_)):
                arr = getattr(state, name)
                assert arr.shape == (5,) and arr.dtype == dtype, name
            assert state.active.all()
    finally:
        mob.close()


@pytest.mark.parametrize("libsumo", [True, False], ids=["libsumo", "traci"])
def test_sumo_follows_the_analytic_road(road_cfg: Config, libsumo: bool) -> None:
    cfg = road_cfg.replace(**{"sumo.use_libsumo": libsumo})
    mob = SumoMobility(cfg)
    try:
        sumo_states = _run(mob, SEED, 30)
    finally:
        mob.close()
    analytic = _run(AnalyticMobility(cfg), SEED, 30)
    # Same seed, same start; then 30 slots including U-turns at both ends.
    assert _max_deviation(sumo_states, analytic) < 1.0
    for s, a in zip(sumo_states, analytic):
        assert np.array_equal(s.lane, a.lane)
        assert np.allclose(s.speed, a.speed)
        # SUMO's angle is the body's, from rear to front: askew while the rear still turns at an end.
        straight = (a.x > 5.0) & (a.x < 695.0)
        assert np.allclose(s.heading[straight], a.heading[straight])
    lanes_seen = {tuple(s.lane) for s in sumo_states}
    assert len(lanes_seen) > 1, "the episode should include a U-turn"


def test_same_seed_same_positions_and_libsumo_equals_traci(road_cfg: Config) -> None:
    mobs = [SumoMobility(road_cfg.replace(**{"sumo.use_libsumo": lib, "sumo.background_vehicles": 20}))
            for lib in (True, False)]
    try:
        runs = [_run(m, 7, 5) for m in mobs] + [_run(mobs[0], 7, 5)]
        other = mobs[0].reset(8)
    finally:
        for m in mobs:
            m.close()
    for a, b in zip(runs[0], runs[1]):
        assert np.array_equal(a.x, b.x) and np.array_equal(a.lane, b.lane)
    for a, b in zip(runs[0], runs[2]):
        assert np.array_equal(a.x, b.x)
    assert not np.allclose(other.x, runs[0][0].x)


def test_substeps_still_advance_one_second_per_slot(road_cfg: Config) -> None:
    cfg = road_cfg.replace(**{"sumo.step_length_s": 0.5})
    mob = SumoMobility(cfg)
    try:
        states = [mob.reset(SEED)]
        assert mob.step_length == 0.5
        for slot in range(1, 6):
            states.append(mob.advance(1.0))
            assert mob.sim_time == pytest.approx(0.5 + slot)
    finally:
        mob.close()
    assert _max_deviation(states, _run(AnalyticMobility(cfg), SEED, 5)) < 1.0


def test_batch_matches_analytic_batch_start(road_cfg: Config) -> None:
    batch = SumoBatchMobility(road_cfg, n_envs=2, n_cvs=3)
    try:
        start = batch.reset_batch(11)
        moved = batch.advance_batch(1.0)
        again = batch.reset_batch(11)
    finally:
        batch.close()
    analytic = AnalyticMobility(road_cfg, n_envs=2, n_cvs=3).reset_batch(11)
    assert start.x.shape == moved.x.shape == (2, 3) and moved.lane.dtype == np.int64
    assert np.allclose(start.x, analytic.x) and np.array_equal(start.lane, analytic.lane)
    assert np.array_equal(again.x, start.x)
    assert not sumo_children()


def test_two_libsumo_users_fall_back_to_traci(road_cfg: Config) -> None:
    first, second = SumoMobility(road_cfg), SumoMobility(road_cfg)
    try:
        first.reset(0)
        with pytest.warns(RuntimeWarning, match="libsumo"):
            second.reset(0)
        assert first.sumo_pid is None and second.sumo_pid is not None
        assert np.array_equal(first.advance(1.0).x, second.advance(1.0).x)
    finally:
        first.close()
        second.close()


def test_close_twice_leaves_no_sumo_process(road_cfg: Config) -> None:
    mob = SumoMobility(road_cfg.replace(**{"sumo.use_libsumo": False}))
    mob.reset(0)
    assert mob.sumo_pid in sumo_children()
    mob.close()
    mob.close()
    assert not sumo_children()
    with pytest.raises(CosimError, match="closed"):
        mob.reset(0)


def test_sumo_dying_mid_episode(road_cfg: Config) -> None:
    cfg = road_cfg.replace(**{"sumo.use_libsumo": False})
    mob = SumoMobility(cfg)
    try:
        mob.reset(SEED)
        mob.advance(1.0)
        os.kill(mob.sumo_pid, signal.SIGKILL)
        with pytest.raises(CosimError, match=r"SUMO exited at simulation time 2 s"):
            mob.advance(1.0)
    finally:
        mob.close()
    assert not sumo_children()


def test_restart_on_crash_continues_the_episode(road_cfg: Config) -> None:
    cfg = road_cfg.replace(**{"sumo.use_libsumo": False, "sumo.restart_on_crash": True})
    mob = SumoMobility(cfg)
    try:
        states = [mob.reset(SEED), mob.advance(1.0)]
        os.kill(mob.sumo_pid, signal.SIGKILL)
        with pytest.warns(RuntimeWarning, match="restarting"):
            states.append(mob.advance(1.0))
        states.append(mob.advance(1.0))
    finally:
        mob.close()
    assert _max_deviation(states, _run(AnalyticMobility(cfg), SEED, 3)) < 1.0
    assert not sumo_children()


# -- other maps ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def grid_net(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return netgenerate(tmp_path_factory.mktemp("grid"), "grid.net.xml", "--grid", "--grid.number", "4",
                       "--grid.length", "150", "--default.lanenumber", "2")


def test_netgenerate_grid_with_random_trips_and_auto_rsus(grid_net: Path) -> None:
    cfg = load_config().replace(**{"sumo.net": str(grid_net), "sumo.rsu_placement": "auto", "sumo.warmup_s": 0.0,
                                   "sumo.rsu_spacing_m": 250.0, "sumo.random_trips_period_s": 1.0})
    mob = SumoMobility(cfg, n_cvs=4)
    try:
        rsus = mob.rsu_configs()
        first = mob.reset(3)
        states = [mob.advance(1.0) for _ in range(12)]
        again = mob.reset(3)
    finally:
        mob.close()
    assert len(rsus) == 3
    for a in rsus:
        assert -10 <= a.x <= 460 and -10 <= a.y <= 460 and a.height == 10.0
        # On a 450 m map three RSUs keep at least 450 / 3 m apart (the spacing shrinks on small maps).
        assert all(np.hypot(a.x - b.x, a.y - b.y) >= 150.0 for b in rsus if b is not a)
    assert not first.active.all()  # the network starts empty
    last = states[-1]
    assert last.active.all(), "departing vehicles fill the CV slots"
    assert ((last.x > -10) & (last.x < 460) & (last.y > -10) & (last.y < 460)).all()
    assert (np.abs(last.heading) <= np.pi).all()
    assert np.array_equal(again.x, first.x)


def test_more_cv_slots_than_vehicles(grid_net: Path, tmp_path: Path) -> None:
    routes = ET.Element("routes")
    for i, depart in enumerate(("0", "1")):
        ET.SubElement(routes, "trip", id=f"car{i}", depart=depart, attrib={"from": "A0B0", "to": "B0C0"})
    ET.ElementTree(routes).write(tmp_path / "two.rou.xml")
    cfg = load_config().replace(**{"sumo.net": str(grid_net), "sumo.routes": str(tmp_path / "two.rou.xml"),
                                   "sumo.warmup_s": 0.0})
    mob = SumoMobility(cfg, n_cvs=4)
    try:
        mob.reset(0)
        state = mob.advance(1.0)
    finally:
        mob.close()
    assert state.active.tolist() == [True, True, False, False]
    for name in ("x", "y", "speed"):
        assert (getattr(state, name)[2:] == 0).all()


@pytest.fixture(scope="module")
def cross_sumocfg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A copy: the configuration writes output files next to itself.
    d = tmp_path_factory.mktemp("cross")
    shutil.copy(GAME / "cross.sumocfg", d)
    shutil.copy(GAME / "input_additional.add.xml", d)
    shutil.copytree(GAME / "cross", d / "cross")
    return d / "cross.sumocfg"


def test_a_sumocfg_that_ships_with_sumo(cross_sumocfg: Path) -> None:
    cfg = load_config().replace(**{"sumo.sumocfg": str(cross_sumocfg), "sumo.cv_vtype": "passenger",
                                   "sumo.rsu_placement": "auto", "sumo.rsu_spacing_m": 100.0, "sumo.warmup_s": 0.0})
    mob = SumoMobility(cfg, n_cvs=3)
    try:
        mob.reset(0)
        assert mob.step_length == pytest.approx(0.2)
        for slot in range(1, 16):
            state = mob.advance(1.0)
            assert mob.sim_time == pytest.approx(0.2 + slot)
    finally:
        mob.close()
    assert state.active.any()
    assert len(mob.rsu_configs()) == 3


# -- errors --------------------------------------------------------------------------------------

def test_missing_files(tmp_path: Path) -> None:
    for key in ("sumo.sumocfg", "sumo.net"):
        with pytest.raises(ConfigError, match=f"{key}: file not found: .*nowhere.xml"):
            SumoMobility(load_config().replace(**{key: str(tmp_path / "nowhere.xml")}))


def test_broken_files(tmp_path: Path, road_cfg: Config) -> None:
    (tmp_path / "garbage.net.xml").write_text("not xml at all")
    with pytest.raises(CosimError, match="garbage.net.xml does not parse"):
        SumoMobility(load_config().replace(**{"sumo.net": str(tmp_path / "garbage.net.xml")}))
    (tmp_path / "bad.sumocfg").write_text("<configuration><input>")
    with pytest.raises(CosimError, match="bad.sumocfg is not valid XML"):
        SumoMobility(load_config().replace(**{"sumo.sumocfg": str(tmp_path / "bad.sumocfg")}))
    road = Path(__file__).resolve().parent.parent / "sumo_net" / "road"
    text = (road / "road.net.xml").read_text()
    (tmp_path / "cut.net.xml").write_text(text[: len(text) // 2])
    with pytest.raises(CosimError, match="cut.net.xml does not parse"):
        SumoMobility(load_config().replace(**{"sumo.net": str(tmp_path / "cut.net.xml")}))
    # A route file that is not XML fails when its first departure is read, naming the file...
    text = (road / "road.rou.xml").read_text()
    (tmp_path / "cut.rou.xml").write_text(text[: len(text) // 2])
    cfg = road_cfg.replace(**{"sumo.net": str(road / "road.net.xml"), "sumo.routes": str(tmp_path / "cut.rou.xml")})
    with pytest.raises(CosimError, match=r"cut.rou.xml is not valid XML \(unclosed token"):
        SumoMobility(cfg)
    # ...and one that is XML but not SUMO's is SUMO's to read: its own message, naming the file, comes back.
    (tmp_path / "odd.rou.xml").write_text('<routes><vehicle id="a" depart="0" route="nowhere"/></routes>')
    for libsumo in (True, False):
        cfg = road_cfg.replace(**{"sumo.net": str(road / "road.net.xml"), "sumo.use_libsumo": libsumo,
                                  "sumo.routes": str(tmp_path / "odd.rou.xml")})
        with pytest.raises(CosimError, match=r"SUMO could not load .*odd.rou.xml: Error: .*nowhere"):
            SumoMobility(cfg).reset(0)  # fails placing the RSUs, which runs the map first
    assert not sumo_children()


def test_network_without_car_roads(tmp_path: Path) -> None:
    nodes = ET.Element("nodes")
    ET.SubElement(nodes, "node", id="a", x="0", y="0")
    ET.SubElement(nodes, "node", id="b", x="100", y="0")
    edges = ET.Element("edges")
    ET.SubElement(edges, "edge", id="path", attrib={"from": "a"}, to="b", allow="pedestrian")
    ET.ElementTree(nodes).write(tmp_path / "p.nod.xml")
    ET.ElementTree(edges).write(tmp_path / "p.edg.xml")
    subprocess.run([str(BIN / "netconvert"), "-n", "p.nod.xml", "-e", "p.edg.xml", "-o", "p.net.xml"],
                   cwd=tmp_path, check=True, capture_output=True, env=dict(os.environ, SUMO_HOME=sumo.SUMO_HOME))
    with pytest.raises(CosimError, match="p.net.xml has no road that passenger cars may use"):
        SumoMobility(load_config().replace(**{"sumo.net": str(tmp_path / "p.net.xml")}))


def test_rsu_off_the_map(road_cfg: Config) -> None:
    rsus = [{"x": 200.0, "y": 9.375}, {"x": 5000.0, "y": 9.375}]
    with pytest.raises(ConfigError, match=r"scenario.rsus\[1\] at \(5000, 9.375\) is off the map .*x 0..700"):
        SumoMobility(road_cfg.replace(**{"scenario.rsus": rsus}))


def test_unknown_cv_vtype(cross_sumocfg: Path) -> None:
    cfg = load_config().replace(**{"sumo.sumocfg": str(cross_sumocfg), "sumo.cv_vtype": "tram",
                                   "sumo.rsu_placement": "auto", "sumo.rsu_spacing_m": 100.0})
    with pytest.raises(ConfigError, match=r"sumo.cv_vtype: vType 'tram' is not defined in .*cross.rou.xml"):
        SumoMobility(cfg)


def test_slot_not_a_whole_number_of_steps(road_cfg: Config) -> None:
    mob = SumoMobility(road_cfg.replace(**{"sumo.step_length_s": 0.3}))
    try:
        mob.reset(0)
        with pytest.raises(ConfigError, match="not a whole number of SUMO steps"):
            mob.advance(1.0)
    finally:
        mob.close()


# -- the GUI -------------------------------------------------------------------------------------

def test_gui_without_display_fails_in_one_line(road_cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(CosimError, match="DISPLAY is not set"):
        SumoMobility(road_cfg, gui=True)


@pytest.fixture
def display(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip("Xvfb is not installed (Debian: apt-get install xvfb)")
    # -displayfd: Xvfb picks a free display and writes its number once it accepts clients.
    proc = subprocess.Popen([xvfb, "-displayfd", "1", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    display = f":{proc.stdout.readline().strip()}"
    monkeypatch.setenv("DISPLAY", display)
    yield display
    proc.terminate()
    proc.wait()


def test_gui_records_one_screenshot_per_slot(road_cfg: Config, display: str, tmp_path: Path) -> None:
    mob = SumoMobility(road_cfg.replace(**{"sumo.extra_args": ["--delay", "0"]}), gui=True,
                       record_dir=str(tmp_path))
    try:
        mob.reset(SEED)
        for _ in range(3):
            mob.show_decisions([(255, 0, 0, 255)] * 5, [f"slot {i}" for i in range(5)])
            mob.advance(1.0)
    finally:
        mob.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"slot_{i:05d}.png" for i in range(4)]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in tmp_path.iterdir())
    assert not sumo_children()


def test_warmup_lets_a_map_fill_before_the_first_slot(cross_sumocfg: Path) -> None:
    cfg = load_config().replace(**{"sumo.sumocfg": str(cross_sumocfg), "scenario.n_cvs": 5, "sumo.warmup_s": 0.0})
    cold, warm = SumoMobility(cfg), SumoMobility(cfg.replace(**{"sumo.warmup_s": 60.0}))
    try:
        c, w = cold.reset(0), warm.reset(0)
        assert warm.sim_time == pytest.approx(cold.sim_time + 60.0)
        assert w.active.sum() >= c.active.sum() and w.active.sum() > 0
    finally:
        cold.close()
        warm.close()
