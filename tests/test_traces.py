"""Recorded SUMO traces: the recording replays exactly what SUMO did, at batch speed, seeded."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sumo
import yaml

from cosim.cli import add_common_args, config_from_args
from cosim.config import ConfigError, CosimError, from_dict, load_config
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


# ---------------------------------------------------------------------------
# Several trace folders mixed in one training run

@pytest.fixture(scope="module")
def grid_traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second map: a generated 3x3 grid with 2 RSUs placed on it, 4 CV slots, 14 slots per episode."""
    from cosim.config import with_rsus

    d = tmp_path_factory.mktemp("grid_traces")
    net = d / "grid.net.xml"
    subprocess.run([str(BIN / "netgenerate"), "--grid", "--grid.number", "3", "--grid.length", "200",
                    "--output-file", str(net)], check=True, capture_output=True,
                   env=dict(os.environ, SUMO_HOME=sumo.SUMO_HOME))
    cfg = load_config().replace(**{"backend": "sumo", "sumo.net": str(net), "sumo.n_rsus": 2, "sumo.warmup_s": 20,
                                   "scenario.episode_slots": 14})
    mob = SumoMobility(cfg, n_cvs=4)
    try:
        rsus = mob.rsu_configs()
    finally:
        mob.close()
    cfg = with_rsus(cfg, rsus).replace(**{"sumo.rsu_placement": "config"})
    out = d / "traces"
    write_traces(out, record_episodes(cfg, 4, [0, 1, 2, 3]))
    write_meta(out, cfg, 4, rsus, "grid")
    return out


def _mix_args(road: Path, grid: Path, *more: str) -> list[str]:
    return ["--traces", f"{road},{grid}", "--set", "scenario.episode_slots=12", "--set", "training.arch=set",
            "--set", "training.hidden=16", "--set", "training.n_envs=2", "--set", "training.epochs=2",
            "--set", "training.checkpoint_every=4", *more]


def _cfg(args: list[str]):
    ap = argparse.ArgumentParser()
    add_common_args(ap)
    return config_from_args(ap.parse_args(args))


def test_set_policy_trains_on_two_maps(road_traces: Path, grid_traces: Path, tmp_path: Path) -> None:
    """Each batch replays one folder (its RSUs, its CVs); both are drawn; the seed fixes the draws; resume is exact."""
    from agents import make_trainer, train
    from agents.common import fit
    from cosim.trace_mobility import TraceMix

    cfg = _cfg(_mix_args(road_traces, grid_traces))
    assert cfg.trace.dir == (str(road_traces), str(grid_traces)) and cfg.backend == "trace"
    assert _cfg(["--traces", str(road_traces), "--traces", str(grid_traces)]).trace.dir == cfg.trace.dir
    mix = TraceMix(cfg)
    assert [(f.n_cvs, len(f.rsus), f.n_episodes) for f in mix.folders] == [(3, 3, 4), (4, 2, 3)]
    assert mix.p.tolist() == pytest.approx([4 / 7, 3 / 7])  # trace.mix=episodes: by training episodes
    assert TraceMix(cfg.replace(**{"trace.mix": "equal"})).p.tolist() == [0.5, 0.5]
    assert [f.n_episodes for f in TraceMix(cfg.replace(**{"trace.part": "eval"})).folders] == [1, 1]  # per folder

    def batches(seed: int) -> list[tuple]:
        trainer = make_trainer("ly-dtmppo", cfg.replace(seed=seed))
        try:
            seen = []
            for i in range(6):
                it = trainer.iterate(2 * i)
                sim = trainer.sim
                assert isinstance(sim.mobility, TraceMobility) and len(it.episodes) == 2
                seen.append((sim.cfg.trace.dir, sim.n_cvs, sim.n_rsus, it.episodes[0].reward))
            return seen
        finally:
            trainer.sim.close()

    first = batches(0)
    assert {s[:3] for s in first} == {(str(road_traces), 3, 3), (str(grid_traces), 4, 2)}
    assert batches(0) == first  # the same seed: the same folders, episodes and rewards
    assert batches(1) != first  # another seed: other draws

    # Resume: stopped after 4 episodes and resumed, the run ends as an uninterrupted one.
    run = cfg.replace(**{"training.episodes": 8})
    full = make_trainer("ly-dtmppo", run)
    res_full = fit(full, tmp_path / "full", progress=False, tensorboard=False)
    full.sim.close()
    part = make_trainer("ly-dtmppo", run)
    fit(part, tmp_path / "part", progress=False, tensorboard=False, stop_after=4)
    part.sim.close()
    resumed = train(None, resume=tmp_path / "part", progress=False, tensorboard=False)
    assert [vars(m) for m in resumed.metrics] == [vars(m) for m in res_full.metrics]
    assert yaml.safe_load((tmp_path / "part" / "config.yaml").read_text())["trace"]["dir"] == list(cfg.trace.dir)


def test_what_cannot_be_mixed_is_one_line(road_traces: Path, grid_traces: Path, tmp_path: Path) -> None:
    from agents import make_trainer
    from cosim.trace_mobility import TraceMix

    cfg = _cfg(_mix_args(road_traces, grid_traces))
    road, grid = re.escape(str(road_traces)), re.escape(str(grid_traces))
    mlp = cfg.replace(**{"training.arch": "mlp", "scenario.n_cvs": 3})
    with pytest.raises(ConfigError, match=rf"the MLP is tied to one RSU count, but {road} has 3 RSUs and "
                                          rf"{grid} 2 \(mix them with training.arch=set\)"):
        TraceMix(mlp)
    with pytest.raises(ConfigError, match=rf"scenario.n_cvs = 4, but {road} holds 3 CV slots"):
        TraceMix(mlp.replace(**{"scenario.n_cvs": 4}))
    with pytest.raises(CosimError, match="mixing 2 trace folders is available for ly-dtmppo and ly-mappo, not "
                                         "ly-maddpg"):
        make_trainer("ly-maddpg", mlp)
    with pytest.raises(ConfigError, match=rf"scenario.episode_slots: 14, but the traces in {road} hold 12"):
        TraceMix(cfg.replace(**{"scenario.episode_slots": 14}))
    half = tmp_path / "half"  # the road's episodes, labelled as recorded with 0.5 s slots
    half.mkdir()
    for f in road_traces.iterdir():
        (half / f.name).write_bytes(f.read_bytes())
    meta = json.loads((half / "meta.json").read_text())
    (half / "meta.json").write_text(json.dumps({**meta, "slot_s": 0.5}))
    with pytest.raises(ConfigError, match=rf"trace.dir: {grid} was recorded with 1 s slots, {re.escape(str(half))} "
                                          r"with 0.5 s slots; folders of different slot lengths cannot be mixed"):
        TraceMix(cfg.replace(**{"trace.dir": [str(grid_traces), str(half)]}))
    with pytest.raises(ConfigError, match=rf"trace.dir: {road} is named twice"):
        TraceMix(cfg.replace(**{"trace.dir": [str(road_traces), str(grid_traces), str(road_traces)]}))
    with pytest.raises(ConfigError, match="an empty list names no folder"):
        cfg.replace(**{"trace.dir": []})
    with pytest.raises(ConfigError, match=r"trace.dir names 2 folders .*: a simulator replays one"):
        TraceMobility(cfg)
    # From the command line: one line, no traceback.
    p = subprocess.run([sys.executable, "scripts/train.py", "--algo", "ly-dtmppo", *_mix_args(road_traces, grid_traces),
                        "--set", "training.arch=mlp", "--cvs", "3", "--out", str(tmp_path / "run")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "the MLP is tied to one RSU count" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_evaluate_reports_each_folder(road_traces: Path, grid_traces: Path, tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "scripts/evaluate.py", "--traces", str(road_traces), str(grid_traces),
                        "--set", "scenario.episode_slots=12", "--episodes", "2", "--policies", "equal",
                        "--out", str(tmp_path / "eval"), "--quiet"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert f"traces in {road_traces}:" in p.stdout and f"traces in {grid_traces}:" in p.stdout
    assert "on trace, 3 CVs, 3 RSUs" in p.stdout and "on trace, 4 CVs, 2 RSUs" in p.stdout
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert list(summary["folders"]) == [str(road_traces), str(grid_traces)]
    assert all(s["equal"]["episodes"] == 2 for s in summary["folders"].values())
