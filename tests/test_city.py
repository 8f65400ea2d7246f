"""City scale: named maps, the demand's begin, the levelled-off warm-up, the penetration pool,
load-balanced RSU placement, synthetic cities and the memory check that replaced fixed caps."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from cosim import maps
from cosim.config import ConfigError, CosimError, RSUConfig, load_config
from cosim.env import BatchCoSim, check_env_memory
from cosim.sumo_mobility import (SumoMobility, balance_loads, busiest_share, covered_share, greedy_max_coverage,
                                 rsu_loads)
from strategies import netgenerate


# -- the demand's begin and the warm-up (pure) ---------------------------------------------------

def test_demand_begin_is_the_first_timed_departure(tmp_path: Path) -> None:
    routes = tmp_path / "r.rou.xml"
    routes.write_text('<routes><vType id="t"/><route id="r" edges="a"/>'
                      '<vehicle id="v1" depart="57610.5" route="r"/>'
                      '<trip id="t1" depart="16:00:05" from="a" to="a"/>'     # 57605 s
                      '<vehicle id="v2" depart="triggered" route="r"/>'       # no time: skipped
                      '<flow id="f" begin="57620" end="58000" number="3" route="r"/></routes>')
    assert maps.demand_begin([routes]) == 57605.0
    empty = tmp_path / "e.rou.xml"
    empty.write_text('<routes><vType id="t"/></routes>')
    assert maps.demand_begin([empty]) is None
    broken = tmp_path / "b.rou.xml"
    broken.write_text("<routes><vehicle")
    with pytest.raises(CosimError, match="b.rou.xml is not valid XML"):
        maps.demand_begin([broken])


def test_traffic_levels_off_when_the_count_stops_rising() -> None:
    t = np.arange(0.0, 1000.0)
    ramp = np.minimum(t, 400.0)  # rises 1 vehicle/s for 400 s, then stays
    # 120 s windows: means 59.5, 179.5, 299.5, 390 (partly flat), 400, ...: 400 <= 1.05 * 390 first at 480 s.
    assert maps.levelled_off(t, ramp, 120.0, 0.05, 900.0) == (480.0, True)
    # A looser tolerance accepts the slower rise earlier (390 <= 1.35 * 299.5).
    assert maps.levelled_off(t, ramp, 120.0, 0.35, 900.0) == (360.0, True)
    # Still rising at the cap: the cap, and False.
    assert maps.levelled_off(t, t, 120.0, 0.05, 600.0) == (600.0, False)
    # An empty start does not count as level: the windows' means must be above zero.
    late = np.where(t < 300.0, 0.0, 50.0)
    assert maps.levelled_off(t, late, 120.0, 0.05, 900.0) == (480.0, True)
    assert maps.levelled_off([], [], 120.0, 0.05, 900.0) == (900.0, False)


# -- placement (pure) ----------------------------------------------------------------------------

def test_a_load_cap_sends_a_second_rsu_to_the_busiest_place() -> None:
    rng = np.random.default_rng(0)
    busy = rng.uniform(-60.0, 60.0, (100, 2))
    quiet = rng.uniform(-20.0, 20.0, (30, 2)) + (1000.0, 0.0)
    samples = np.concatenate([busy, quiet])
    candidates = np.array([[0.0, 0.0], [60.0, 0.0], [1000.0, 0.0]])
    plain, _ = greedy_max_coverage(candidates, samples, [80.0, 80.0], spacing=40.0)
    assert plain == [0, 2]  # the busy place, then the quiet one
    capped, _ = greedy_max_coverage(candidates, samples, [80.0, 80.0], spacing=40.0, cap=35.0)
    # Capped at 35 samples each, the busy place still has more than the quiet one left for a second RSU.
    assert capped == [0, 1]


def test_balancing_unloads_the_busiest_rsu_within_the_coverage_slack() -> None:
    samples = np.stack([np.linspace(0.0, 400.0, 401), np.zeros(401)], axis=1)
    candidates = np.stack([np.arange(-200.0, 900.0, 10.0), np.zeros(110)], axis=1)
    start = [int(np.argmin(np.abs(candidates[:, 0] - x))) for x in (100.0, 600.0)]
    radii = [250.0, 250.0]
    before = [RSUConfig(candidates[c, 0], 0.0, 10.0, 250.0) for c in start]
    assert busiest_share(before, samples) > 0.85  # nearly every sample is nearest to the first RSU
    moved = balance_loads(candidates, samples, start, radii, spacing=100.0)
    after = [RSUConfig(candidates[c, 0], 0.0, 10.0, 250.0) for c in moved]
    assert busiest_share(after, samples) <= 0.55
    assert covered_share(after, samples) >= covered_share(before, samples) - 0.01
    assert abs(after[0].x - after[1].x) >= 100.0
    assert rsu_loads(after, samples).sum() == 401  # every sample still counts once


def test_balancing_never_buys_balance_with_coverage() -> None:
    # Two clusters, one RSU each, far apart: any move would uncover one of them.
    samples = np.concatenate([np.stack([np.linspace(0, 50, 200), np.zeros(200)], 1),
                              np.stack([np.linspace(1000, 1050, 20), np.zeros(20)], 1)])
    candidates = np.stack([np.arange(0.0, 1100.0, 25.0), np.zeros(44)], axis=1)
    start = [1, 41]
    assert balance_loads(candidates, samples, start, [60.0, 60.0], spacing=100.0) == start


# -- named maps and synthetic cities ---------------------------------------------------------------

def test_map_names_fail_in_one_line() -> None:
    with pytest.raises(ConfigError, match="'nowhere' is not a map name; use FAMILY/NAME"):
        maps.resolve("nowhere")
    with pytest.raises(ConfigError, match="unknown map 'resco/berlin'; resco has resco/arterial4x4"):
        maps.resolve("resco/berlin")
    assert maps.resolve("sumo/cross").sumocfg.is_file()
    with pytest.raises(ConfigError, match=r"sumo.map \(resco/cologne1\) and sumo.sumocfg \(x.sumocfg\) are all set"):
        load_config().replace(**{"sumo.map": "resco/cologne1", "sumo.sumocfg": "x.sumocfg"})


def test_resco_maps_are_listed_when_the_maps_extra_is_installed() -> None:
    names = [m.name for m in maps.available_maps()]
    if maps._resco_dir() is None:
        with pytest.raises(ConfigError, match=r'needs the RESCO maps of the sumo-rl package.*pip install ".\[maps\]"'):
            maps.resolve("resco/ingolstadt21")
        pytest.skip("sumo-rl (the maps extra) is not installed")
    assert {f"resco/{m}" for m in maps.RESCO_MAPS} <= set(names)
    assert all(m.sumocfg.is_file() for m in maps.available_maps())


def test_a_synthetic_city_is_the_same_for_the_same_spec(tmp_path: Path) -> None:
    spec = maps.CitySpec("grid", size=3, block_m=150.0, vehicles_per_hour=720.0, duration_s=120.0, seed=3)
    first = maps.generate_city(tmp_path / "a", spec)
    second = maps.generate_city(tmp_path / "b", spec)
    for name in ("city.net.xml", "city.rou.xml", "city.sumocfg"):
        assert (first.parent / name).read_bytes() == (second.parent / name).read_bytes(), name
    departures = (first.parent / "city.rou.xml").read_text().count("<vehicle")
    assert 10 <= departures <= 40  # about 720 per hour for 120 s
    with pytest.raises(ConfigError, match=r"city size: 1 is out of range \[2, 200\]"):
        maps.CitySpec(size=1)


# -- no fixed caps: memory decides ------------------------------------------------------------------

def test_more_than_64_cvs_run_and_memory_is_the_limit() -> None:
    cfg = load_config().replace(**{"scenario.n_cvs": 150})
    with BatchCoSim(cfg, n_envs=2, seed=0, backend="analytic") as sim:
        sim.reset(0)
        out = sim.step(np.zeros((2, 150, sim.action_dim)))
        assert out.agent_reward.shape == (2, 150) and np.isfinite(out.reward).all()
    with pytest.raises(ConfigError, match=r"4096 environment\(s\) x 90000 CVs x 3 RSUs need about .* MB per slot, "
                                          r"over 80 % of the .* MB available: use at most .* CVs"):
        check_env_memory(4096, 90_000, 3)


# -- SUMO: a late demand, an empty window, the penetration pool --------------------------------------

@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return netgenerate(tmp_path_factory.mktemp("citygrid"), "grid.net.xml", "--grid", "--grid.number", "4",
                       "--grid.length", "200", "--default.lanenumber", "1")


def _late_routes(path: Path, begin: float, n: int = 40) -> Path:
    trips = "".join(f'<trip id="v{i}" depart="{begin + 2 * i:.1f}" from="A0A1" to="D3D2"/>' for i in range(n))
    path.write_text(f"<routes>{trips}</routes>")
    return path


@pytest.mark.sumo
def test_a_map_whose_demand_starts_late_begins_with_it(grid: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    routes = _late_routes(tmp_path / "late.rou.xml", 57600.0)
    cfg = load_config().replace(**{"sumo.net": str(grid), "sumo.routes": str(routes), "scenario.episode_slots": 10,
                                   "sumo.n_rsus": 2, "sumo.warmup_max_s": 200.0})
    mob = SumoMobility(cfg, n_cvs=3)
    try:
        summary = mob.map_summary
        line = capsys.readouterr().err
        assert summary.begin_s == 57600.0 and "begins at 57600 s" in line
        assert summary.vehicles > 5 and summary.warmup in ("levelled", "cap") and summary.warmup_s <= 200.0
        state = mob.reset(0)
        assert mob.sim_time >= 57600.0 + summary.warmup_s and state.active.any()
    finally:
        mob.close()
    # A warm-up past the demand's end is refused before any episode runs, naming one that works.
    with pytest.raises(CosimError, match=r"no vehicle is on grid.net.xml in the episode window 5000\.\.5010 s after "
                                         r"its begin: set sumo.warmup_s to at most \d+"):
        SumoMobility(cfg.replace(**{"sumo.warmup_s": 5000.0}), n_cvs=3)


@pytest.mark.sumo
def test_the_penetration_pool_samples_traffic_and_hands_slots_over_on_arrival(grid: Path) -> None:
    cfg = load_config().replace(**{"sumo.net": str(grid), "sumo.random_trips_period_s": 1.0, "sumo.warmup_s": 60.0,
                                   "scenario.episode_slots": 40, "sumo.n_rsus": 2, "sumo.cv_pool": "penetration",
                                   "sumo.penetration": 0.5})

    def run(seed: int) -> list[list[str | None]]:
        mob = SumoMobility(cfg, n_cvs=6)
        try:
            mob.reset(seed)
            api = mob._sumo.api
            slots = [list(mob._slot_vehicle)]
            for _ in range(40):
                alive = set(api.vehicle.getIDList())
                before = list(mob._slot_vehicle)
                mob.advance(1.0)
                for old, new in zip(before, mob._slot_vehicle):
                    if old is not None and new != old:
                        assert old not in alive or old not in set(api.vehicle.getIDList())  # only on arrival
                slots.append(list(mob._slot_vehicle))
            cvs = {v for row in slots for v in row if v is not None}
            assert not cvs & set(mob._waiting)  # a waiting CV has no slot
            return slots
        finally:
            mob.close()

    first = run(4)
    assert first == run(4)  # the same seed, the same CVs
    cvs = {v for row in first for v in row if v is not None}
    assert 6 <= len(cvs)  # slots refilled as CVs arrive
    # About half of the vehicles are CVs: random trips every second, a vehicle is on the grid ~60 s.
    mob = SumoMobility(cfg.replace(**{"sumo.penetration": 1e-6}), n_cvs=3)
    try:
        assert not mob.reset(0).active.any()  # nobody is a CV
    finally:
        mob.close()


@pytest.mark.sumo
@pytest.mark.parametrize("how", ["map", "net"])
def test_a_resco_city_runs_with_no_other_flag(how: str, tmp_path: Path) -> None:
    import json
    import sys
    if maps._resco_dir() is None:
        pytest.skip("sumo-rl (the maps extra) is not installed")
    folder = maps._resco_dir() / "cologne1"
    where = (["--map", "resco/cologne1"] if how == "map" else
             ["--net", str(folder / "cologne1.net.xml"), "--routes", str(folder / "cologne1.rou.xml")])
    root = Path(__file__).resolve().parent.parent
    p = subprocess.run([sys.executable, "scripts/run_cosim.py", *where, "--policy", "equal", "--quiet",
                        "--out", str(tmp_path / "o")], cwd=root, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    # The .sumocfg begins at 25200 s, its first vehicle departs at 25205 s: both ways begin with that vehicle.
    assert "begins at 25205 s" in p.stderr
    assert "traffic levelled off" in p.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["active_share"] > 0.9 and summary["covered_share"] > 0.9 and summary["tasks"] > 0
