"""Other SUMO maps without flags: RSUs placed where the traffic is, CV slots kept inside coverage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cosim.config import Config, ConfigError, RSUConfig, load_config
from cosim.env import BatchCoSim
from cosim.sumo_mobility import SumoMobility, covered_share, greedy_max_coverage
from strategies import netgenerate

ROOT = Path(__file__).resolve().parent.parent


# -- greedy maximum coverage (pure) ------------------------------------------------------------

def test_greedy_picks_the_busiest_places_first() -> None:
    rng = np.random.default_rng(0)
    # 100 samples around (0, 0), 60 around (500, 0), 10 around (0, 500); radius 50.
    samples = np.concatenate([rng.normal((0, 0), 5, (100, 2)), rng.normal((500, 0), 5, (60, 2)),
                              rng.normal((0, 500), 5, (10, 2))])
    candidates = np.array([[0.0, 500.0], [500.0, 0.0], [20.0, 0.0], [0.0, 0.0]])
    chosen, held = greedy_max_coverage(candidates, samples, [50.0, 50.0], spacing=100.0)
    assert chosen == [2, 1] and held == 100.0  # (20, 0) ties (0, 0) on 100 samples: the lower index wins
    rsus = [RSUConfig(*candidates[c], 10.0, 50.0) for c in chosen]
    assert covered_share(rsus, samples) == pytest.approx(160 / 170)
    # A third RSU goes to the last cluster; a fourth has only (0, 0) left, 20 m from (20, 0): the
    # spacing halves until it fits.
    chosen, held = greedy_max_coverage(candidates, samples, [50.0] * 4, spacing=100.0)
    assert chosen == [2, 1, 0, 3] and 10.0 < held <= 20.0


def test_spacing_shrinks_rather_than_failing() -> None:
    candidates = np.array([[0.0, 0.0], [30.0, 0.0]])
    samples = np.array([[0.0, 0.0], [30.0, 0.0]])
    chosen, held = greedy_max_coverage(candidates, samples, [10.0, 10.0, 10.0], spacing=300.0)
    assert sorted(chosen[:2]) == [0, 1] and held <= 30.0
    assert covered_share([], samples) == 0.0


# -- a small generated map -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return netgenerate(tmp_path_factory.mktemp("smallgrid"), "small.net.xml", "--grid", "--grid.number", "5",
                       "--grid.length", "250", "--default.lanenumber", "2")


def grid_cfg(net: Path, **more) -> Config:
    return load_config().replace(**{"sumo.net": str(net), "sumo.warmup_s": 30.0, "scenario.episode_slots": 20,
                                    "sumo.random_trips_period_s": 0.5, "scenario.rsus": [{"radius": 150.0}] * 3,
                                    **more})


@pytest.mark.sumo
def test_rsus_cover_the_traffic_and_cvs_stay_inside(small_grid: Path, capsys: pytest.CaptureFixture) -> None:
    # The RSUs given (all at 0, 0) are not the paper's; they lie on the map, so "fit" keeps them...
    kept = SumoMobility(grid_cfg(small_grid), n_cvs=2)
    kept.close()
    assert kept.map_summary.placement == "config" and kept.rsu_configs()[0].x == 0.0
    # ...unless they are placed: by sumo.n_rsus (or --rsus), or because they are the paper's road's.
    cfg = grid_cfg(small_grid, **{"sumo.n_rsus": 3})
    mob = SumoMobility(cfg, n_cvs=6)
    line = capsys.readouterr().err
    summary = mob.map_summary
    assert "small.net.xml: 1000 x 1000 m" in line and "3 RSUs placed where the traffic is (sumo.n_rsus = 3)" in line
    assert summary.placement == "auto" and summary.vehicles > 20
    # Placed RSUs cover more vehicle-seconds than their share of the map's area (random trips spread
    # traffic over the whole grid), and far more than the kept ones in a corner.
    area_share = 3 * np.pi * 150.0**2 / 1000.0**2
    assert summary.covered_share > area_share and summary.covered_share > 2 * kept.map_summary.covered_share
    rsus = mob.rsu_configs()
    assert all(np.hypot(a.x - b.x, a.y - b.y) >= summary.spacing_m for a in rsus for b in rsus if a is not b)
    try:
        states = [mob.reset(1)]
        api = mob._sumo.api
        handed = 0
        for _ in range(20):
            before = list(mob._slot_vehicle)
            states.append(mob.advance(1.0))
            alive = set(api.vehicle.getIDList())
            for old, new in zip(before, mob._slot_vehicle):
                if old is not None and new != old:
                    handed += 1
                    # a slot passes on only when its vehicle left the network or every RSU's coverage
                    assert old not in alive or all(np.hypot(*np.subtract(api.vehicle.getPosition(old), (r.x, r.y)))
                                                   > r.radius for r in rsus)
    finally:
        mob.close()
    active = np.stack([s.active for s in states])
    assert active.mean() > 0.9
    hd = np.stack([[np.hypot(s.x - r.x, s.y - r.y) for r in rsus] for s in states])  # (T, K, I)
    covered = (hd <= np.array([r.radius for r in rsus])[None, :, None]).any(axis=1) & active
    assert covered.sum() / active.sum() >= 0.9
    assert handed > 0  # in 20 s some CV leaves coverage or arrives and its slot moves on


@pytest.mark.sumo
def test_departure_pool_keeps_the_first_vehicles(small_grid: Path) -> None:
    mob = SumoMobility(grid_cfg(small_grid, **{"sumo.n_rsus": 1, "sumo.cv_pool": "departure"}), n_cvs=3)
    try:
        mob.reset(1)
        first = list(mob._slot_vehicle)
        for _ in range(5):
            mob.advance(1.0)
        assert all(v is None or v == f or f is None for v, f in zip(mob._slot_vehicle, first))
    finally:
        mob.close()


@pytest.mark.sumo
def test_placed_rsus_go_into_the_run_config(small_grid: Path) -> None:
    cfg = grid_cfg(small_grid).replace(**{"scenario.rsus": [{"x": 9000.0, "y": 0.0}], "backend": "sumo"})
    with BatchCoSim(cfg, n_envs=2, seed=0) as sim:
        placed = sim.mobility.rsu_configs()
        assert "off the map" in sim.mobility.envs[0].map_summary.reason
        assert sim.cfg.scenario.rsus == placed and sim.n_rsus == 1
        assert sim.mobility.envs[1].rsu_configs() == placed  # placed once for every simulation
    # The recorded config runs again with exactly those RSUs, whatever the placement mode.
    again = SumoMobility(sim.cfg.replace(**{"sumo.rsu_placement": "config"}))
    again.close()
    assert again.rsu_configs() == placed
    with pytest.raises(ConfigError, match=r"scenario.rsus\[0\] at \(9000, 0\) is off the map"):
        SumoMobility(cfg.replace(**{"sumo.rsu_placement": "config"}))


@pytest.mark.sumo
def test_run_cosim_on_a_generated_map_with_no_other_flag(small_grid: Path, tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "scripts/run_cosim.py", "--net", str(small_grid), "--cvs", "3",
                        "--out", str(tmp_path), "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "RSUs placed where the traffic is" in p.stderr
    # The shipped set-structured policy drives any fleet on any map: no fallback.
    assert "using the equal policy instead" not in p.stderr and "ly-dtmppo_set" in p.stdout
    assert "of them covered by an RSU" in p.stdout
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert len(saved["scenario"]["rsus"]) == 3 and saved["scenario"]["rsus"][0]["x"] != 200.0  # not the paper's
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_cvs"] == 3 and summary["covered_share"] >= 0.8
    assert summary["map"]["placement"] == "auto" and summary["map"]["n_rsus"] == 3


@pytest.mark.sumo
def test_a_vehicle_heading_into_coverage_takes_a_free_slot(small_grid: Path, tmp_path: Path) -> None:
    routes = tmp_path / "two.rou.xml"
    routes.write_text('<routes><trip id="away" depart="0" from="A0A1" to="A1A2"/>'
                      '<trip id="toward" depart="0" from="A0B0" to="B0C0"/></routes>')
    # One RSU 200 m east of A0 with a 180 m radius: both cars start about 20 m outside it.
    cfg = load_config().replace(**{"sumo.net": str(small_grid), "sumo.routes": str(routes), "sumo.warmup_s": 0.0,
                                   "scenario.rsus": [{"x": 200.0, "y": 0.0, "radius": 180.0}]})
    mob = SumoMobility(cfg, n_cvs=2)
    try:
        state = mob.reset(0)
        assert mob._slot_vehicle == ["toward", None] and state.active.tolist() == [True, False]
        assert np.hypot(state.x[0] - 200.0, state.y[0]) > 180.0  # not yet covered, but heading in
        for _ in range(3):
            state = mob.advance(1.0)
        assert mob._slot_vehicle == ["toward", None]  # the car driving away never gets one
    finally:
        mob.close()
