"""Recorded SUMO traces: the recording replays exactly what SUMO did, at batch speed, seeded."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sumo
import yaml

from cosim.cli import add_common_args, config_from_args
from cosim.config import ConfigError, from_dict, load_config
from cosim.env import BatchCoSim
from cosim.sumo_mobility import SumoMobility
from cosim.trace_mobility import (TraceMobility, read_traces, record_episodes, split_episodes, write_meta,
                                  write_traces)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sumo.SUMO_HOME) / "bin"
FIELDS = ("x", "y", "speed", "heading", "lane", "active")
pytestmark = pytest.mark.sumo  # every test records with SUMO first


def _direct(cfg, n_cvs: int, seed: int) -> dict[str, np.ndarray]:
    mob = SumoMobility(cfg, n_cvs=n_cvs)
    try:
        states = [mob.reset(seed)] + [mob.advance(cfg.scenario.slot_s) for _ in range(cfg.scenario.episode_slots)]
    finally:
        mob.close()
    return {f: np.stack([getattr(s, f) for s in states]) for f in FIELDS}


def _assert_same(replayed: dict[str, np.ndarray], direct: dict[str, np.ndarray]) -> None:
    for f in ("x", "y", "speed"):
        np.testing.assert_allclose(replayed[f], direct[f], atol=1e-3, err_msg=f)  # float32 storage
    np.testing.assert_allclose(replayed["heading"], direct["heading"], atol=1e-5)
    assert np.array_equal(replayed["lane"], direct["lane"]) and np.array_equal(replayed["active"], direct["active"])


@pytest.fixture(scope="module")
def road_traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("road_traces")
    cfg = load_config().replace(**{"scenario.episode_slots": 12})
    write_traces(d, record_episodes(cfg, 3, [7, 3]), part=0)
    write_traces(d, record_episodes(cfg, 3, [5, 4, 6]), part=1)
    write_meta(d, cfg, 3, cfg.scenario.rsus, "the paper's road")
    return d


def test_replay_equals_the_sumo_run_on_the_road(road_traces: Path) -> None:
    cfg = load_config().replace(**{"scenario.episode_slots": 12, "trace.dir": str(road_traces), "trace.part": "all",
                                   "scenario.n_cvs": 3})
    traces = read_traces(road_traces)
    assert traces.seeds.tolist() == [3, 4, 5, 6, 7] and traces.arrays["x"].shape == (5, 13, 3)
    assert traces.arrays["x"].dtype == np.float32 and traces.arrays["lane"].dtype == np.int16
    mob = TraceMobility(cfg, n_envs=4)
    first = mob.reset_batch(11)
    states = [first] + [mob.advance_batch(1.0) for _ in range(12)]
    direct = _direct(cfg, 3, int(mob.seeds[mob.index[2]]))
    _assert_same({f: np.stack([getattr(s, f)[2] for s in states]) for f in FIELDS}, direct)
    # The same reset seed replays the same episodes; another draws others.
    again = TraceMobility(cfg, n_envs=4)
    assert np.array_equal(again.reset_batch(11).x, first.x)
    assert not np.array_equal(again.reset_batch(12).x, first.x)
    with pytest.raises(Exception, match="end after 12 slots"):
        mob.advance_batch(1.0)


def test_held_out_episodes_and_bad_input(road_traces: Path, tmp_path: Path) -> None:
    assert split_episodes(10, 0.2, "train").tolist() == list(range(8))
    assert split_episodes(10, 0.2, "eval").tolist() == [8, 9]
    assert split_episodes(3, 0.1, "eval").tolist() == [2]  # at least one held out
    assert split_episodes(1, 0.2, "train").tolist() == [0] and split_episodes(1, 0.2, "eval").size == 0
    base = load_config().replace(**{"scenario.episode_slots": 12, "trace.dir": str(road_traces),
                                    "scenario.n_cvs": 3})
    train, held = TraceMobility(base), TraceMobility(base.replace(**{"trace.part": "eval"}))
    assert train.seeds.tolist() == [3, 4, 5, 6] and held.seeds.tolist() == [7]
    with pytest.raises(ConfigError, match="backend trace needs trace.dir"):
        TraceMobility(load_config())
    with pytest.raises(ConfigError, match=r"trace.dir: folder not found: .*nowhere"):
        TraceMobility(base.replace(**{"trace.dir": str(tmp_path / "nowhere")}))
    with pytest.raises(ConfigError, match=r"holds no recorded traces"):
        TraceMobility(base.replace(**{"trace.dir": str(tmp_path)}))
    with pytest.raises(ConfigError, match=r"n_cvs: 5 CVs, but the traces in .* hold 3 CV slots"):
        TraceMobility(base, n_cvs=5)
    with pytest.raises(ConfigError, match=r"scenario.episode_slots: 30, but the traces .* hold 12 slots"):
        TraceMobility(base.replace(**{"scenario.episode_slots": 30}))
    with pytest.raises(ConfigError, match=r"scenario.slot_s: 0.5 s, but the traces .* 1 s slots"):
        TraceMobility(base.replace(**{"scenario.slot_s": 0.5}))
    with pytest.raises(ConfigError, match=r"advance in slots of 1 s, not 2 s"):
        train.reset_batch(0)
        train.advance_batch(2.0)
    # Fewer CVs than recorded: the first slots.
    two = TraceMobility(base, n_envs=3, n_cvs=2)
    assert two.reset_batch(0).x.shape == (3, 2)


def test_batch_env_on_traces(road_traces: Path) -> None:
    cfg = load_config().replace(**{"scenario.episode_slots": 12, "trace.dir": str(road_traces),
                                   "scenario.n_cvs": 3, "backend": "trace"})
    with BatchCoSim(cfg, n_envs=8, seed=0) as sim:
        obs, _ = sim.reset(0)
        raw = np.zeros((8, 3, sim.action_dim))
        done, slots = False, 0
        while not done:
            out = sim.step(raw)
            done, slots = out.done, slots + 1
        assert slots == 12 and np.isfinite(out.reward).all()
        assert sim.n_rsus == 3


def test_record_script_in_workers_on_a_generated_map(tmp_path: Path) -> None:
    net = tmp_path / "grid.net.xml"
    subprocess.run([str(BIN / "netgenerate"), "--grid", "--grid.number", "4", "--grid.length", "200",
                    "--output-file", str(net)], check=True, capture_output=True,
                   env=dict(os.environ, SUMO_HOME=sumo.SUMO_HOME))
    out = tmp_path / "traces"
    args = ["--net", str(net), "--cvs", "4", "--episodes", "4", "--workers", "2", "--chunk", "2",
            "--set", "scenario.episode_slots=10", "--set", "sumo.warmup_s=20", "--rsus", "2"]
    p = subprocess.run([sys.executable, "scripts/record_traces.py", "--out", str(out), *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "recorded 4 episodes of 10 slots, 4 CV slots, 2 RSUs" in p.stdout
    meta = json.loads((out / "meta.json").read_text())
    assert len(meta["rsus"]) == 2 and sorted(out.glob("traces_*.npz"))[1].name == "traces_0001.npz"
    # Replaying episode 2 gives what SUMO does on that map with the recorded config and seed 2.
    recorded = from_dict(meta["config"])
    traces = read_traces(out)
    direct = _direct(recorded, 4, 2)
    _assert_same({f: traces.arrays[f][2] for f in FIELDS}, direct)
    assert direct["active"].mean() > 0.5
    p = subprocess.run([sys.executable, "scripts/record_traces.py", "--out", str(out), *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "already holds traces" in p.stderr and "Traceback" not in p.stderr


def test_train_and_evaluate_on_traces(road_traces: Path, tmp_path: Path) -> None:
    """Training replays the training part; evaluate.py --traces defaults to the held-out episodes."""
    from agents import make_trainer  # torch: only this test needs it

    ap = argparse.ArgumentParser()
    add_common_args(ap)
    common = ["--traces", str(road_traces), "--cvs", "3", "--set", "scenario.episode_slots=12"]
    cfg = config_from_args(ap.parse_args([*common, "--set", "training.n_envs=2"]))
    trainer = make_trainer("ly-dtmppo", cfg)
    try:
        assert isinstance(trainer.sim.mobility, TraceMobility) and trainer.cfg.backend == "trace"
        assert trainer.sim.mobility.seeds.tolist() == [3, 4, 5, 6]
    finally:
        trainer.sim.close()
    p = subprocess.run([sys.executable, "scripts/evaluate.py", *common, "--episodes", "2", "--policies", "equal",
                        "--out", str(tmp_path / "eval"), "--quiet"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert "on trace, 3 CVs, 3 RSUs" in p.stdout
    assert yaml.safe_load((tmp_path / "eval" / "config.yaml").read_text())["trace"]["part"] == "eval"
