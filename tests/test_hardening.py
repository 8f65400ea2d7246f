"""Hostile input, faults and resource limits end in one clear line (exit 2), never a traceback,
a hang, a blow-up, mixed output folders or a silently wrong number. One test per class."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from cosim.config import ConfigError, CosimError, load_config, load_settings, read_yaml

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "checkpoints" / "ly-dtmppo_paper.safetensors"


def run(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)


def one_line(p, message):
    """Exit code 2, ``message`` in the one error line, which ends stderr, and no traceback
    (informational lines before it, e.g. a SUMO map's summary, may precede it)."""
    lines = [ln for ln in p.stderr.strip().splitlines() if "pyarrow" not in ln]
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and message in errors[0], p.stderr


# ---------------------------------------------------------------------------
# Config and YAML files: --config, --set, experiment files, training.extra

HOSTILE_YAML = {
    "binary": (bytes(range(256)) * 2, "is a binary file, not YAML text"),
    "latin1": ("lyapunov:\n  V: 5 # caf\xe9\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9"),
    "deep": (("x: " + "[" * 500 + "]" * 500 + "\n").encode(), "nested deeper than 32 levels"),
    "bomb": ("\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
                       + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]).encode(),
             "expands to more than 100,000 values"),
    "duplicate": (b"lyapunov:\n  V: 5\n  alpha: 0.5\n  V: 50\n", "duplicate key 'V' (line 4)"),
    "extra_duplicate": (b"training:\n  extra:\n    mappo:\n      obs_norm: true\n      obs_norm: false\n",
                        "duplicate key 'obs_norm' (line 5)"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_YAML))
def test_hostile_config_files_are_one_line(tmp_path, case):
    data, message = HOSTILE_YAML[case]
    f = tmp_path / f"{case}.yaml"
    f.write_bytes(data)
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_config([f])
    assert str(f) in str(err.value) and "\n" not in str(err.value)
    # The same reader guards experiment files.
    from agents.experiments import Experiment
    with pytest.raises(ConfigError, match="experiment file"):
        Experiment.load(f)


def test_hostile_files_through_the_scripts(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_bytes(HOSTILE_YAML["duplicate"][0])
    one_line(run("scripts/run_cosim.py", "--backend", "analytic", "--config", str(f), "--out", str(tmp_path / "o")),
             "duplicate key 'V'")
    one_line(run("scripts/train.py", "--algo", "ly-dtmppo", "--set", "training.extra=" + "[" * 40 + "]" * 40,
                 "--out", str(tmp_path / "t")), "--set training.extra: nested deeper than 32 levels")
    exp = tmp_path / "exps"
    exp.mkdir()
    (exp / "bomb.yaml").write_bytes(HOSTILE_YAML["bomb"][0])
    one_line(run("scripts/reproduce.py", "--experiments-dir", str(exp), "--dry-run"), "expands to more than")
    (exp / "bomb.yaml").write_text("name: x\nalgos: [equal]\nfigure: []\n")
    one_line(run("scripts/reproduce.py", "--experiments-dir", str(exp), "--dry-run"), "unknown experiment file")


def test_unreadable_config_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        read_yaml(tmp_path)  # a folder
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * 1_100_000 + "\n")
    with pytest.raises(ConfigError, match="bytes; a config is at most"):
        read_yaml(big)


# ---------------------------------------------------------------------------
# Algorithm settings under training.extra: typed, range-checked, saved resolved

@pytest.mark.parametrize("section, key, value, message", [
    ("mappo", "policy_head_gain", ".nan", "training.extra.mappo.policy_head_gain: expected a finite number"),
    ("mappo", "value_norm_beta", "abc", "training.extra.mappo.value_norm_beta: expected a number, got 'abc'"),
    ("mappo", "value_norm_beta", "5", "training.extra.mappo.value_norm_beta: 5.0 is out of range"),
    ("mappo", "obs_norm", "1", "training.extra.mappo.obs_norm: expected true or false"),
    ("mappo", "lr", "0.1", "unknown training.extra.mappo key 'lr'"),
    ("offpolicy", "tau", "2", "training.extra.offpolicy.tau: 2.0 is out of range"),
    ("offpolicy", "buffer_size", "1.5", "training.extra.offpolicy.buffer_size: expected an integer"),
    ("matd3", "policy_delay", "0", "training.extra.matd3.policy_delay: 0 is out of range"),
    ("masac", "log_std_min", "3", "training.extra.masac.log_std_min: 3 must be below log_std_max"),
    ("maddpg", "alpha_init", "1", "unknown training.extra.maddpg key 'alpha_init'"),
    ("mapo", "obs_norm", "true", "unknown config key 'training.extra.mapo' (allowed in training.extra: mappo,"),
])
def test_algorithm_settings_are_typed_and_range_checked(section, key, value, message):
    from agents import make_trainer
    algo = {"mappo": "ly-dtmppo", "mapo": "ly-dtmppo", "offpolicy": "ly-maddpg"}.get(section, f"ly-{section}")
    with pytest.raises(ConfigError, match=re.escape(message)):
        cfg = load_config(overrides=[f"training.extra.{section}.{key}={value}", "training.n_envs=1",
                                     "scenario.n_cvs=2"])
        make_trainer(algo, cfg)


def test_settings_loader_converts_like_the_config():
    from agents.mappo import MAPPOConfig
    from cosim.optimizer import DppOptConfig
    cfg = load_config(overrides=["training.extra.mappo.policy_head_gain='1e-2'"])
    c = MAPPOConfig.from_config(cfg)
    assert c.policy_head_gain == 0.01 and isinstance(c.policy_head_gain, float) and c.lr == cfg.training.lr
    with pytest.raises(ConfigError, match=r"training.extra.dpp_opt.reference_starts\[0\]: 'best' is not one of"):
        load_settings(DppOptConfig, {"reference_starts": ["best"]}, "training.extra.dpp_opt")
    with pytest.raises(ConfigError, match="training.extra.dpp_opt: expected a mapping"):
        load_settings(DppOptConfig, [1, 2], "training.extra.dpp_opt")


@pytest.mark.parametrize("algo, section", [("ly-dtmppo", "mappo"), ("ly-matd3", "matd3")])
def test_runs_save_every_resolved_setting(tmp_path, algo, section):
    from agents import train
    extra = {"offpolicy": {"tau": 0.01, "buffer_size": 600}} if section == "matd3" else {"mappo": {"obs_norm": True}}
    cfg = load_config().replace(**{"scenario.n_cvs": 2, "training.n_envs": 2, "training.episodes": 2,
                                   "training.extra": extra, "training.batch_size": 64})
    res = train(algo, cfg, out=tmp_path / "run", progress=False, tensorboard=False)
    saved = read_yaml(res.run_dir / "config.yaml")["training"]["extra"]
    assert list(saved) == [section]  # the shared offpolicy section is folded into the algorithm's
    from agents import ALGORITHMS
    trainer_cls = ALGORITHMS[algo].trainer_class()
    settings_cls = {"mappo": "MAPPOConfig", "matd3": "MATD3Config"}[section]
    cls = getattr(sys.modules[trainer_cls.__module__], settings_cls)
    own = [f.name for f in dataclasses.fields(cls) if not hasattr(cfg.training, f.name)]
    assert sorted(saved[section]) == sorted(own)
    if section == "matd3":
        assert saved[section]["tau"] == 0.01 and saved[section]["policy_delay"] == 2
        assert saved[section]["actor_lr"] == cfg.training.lr  # None resolved to lr
        assert saved[section]["warmup_slots"] == 2 * 30 // 10  # the short-budget default, resolved
    else:
        assert saved[section]["obs_norm"] is True and saved[section]["policy_head_gain"] == 0.01
    # The saved config reloads to the same settings (what --resume reads).
    again = load_config([res.run_dir / "config.yaml"])
    assert again.training.extra == {section: saved[section]}


def test_run_cosim_saves_the_optimisers_resolved_settings(tmp_path):
    from cosim.optimizer import DppOptConfig
    p = run("scripts/run_cosim.py", "--backend", "analytic", "--policy", "dpp-opt", "--quiet", "--set",
            "scenario.episode_slots=2", "--set", "training.extra.dpp_opt.iterations=5", "--out", str(tmp_path / "o"))
    assert p.returncode == 0, p.stderr
    saved = read_yaml(tmp_path / "o" / "config.yaml")["training"]["extra"]["dpp_opt"]
    assert saved["iterations"] == 5 and saved["probe_dirs"] == DppOptConfig().probe_dirs
    assert sorted(saved) == sorted(f.name for f in dataclasses.fields(DppOptConfig))


@pytest.mark.parametrize("algo", ["ly-dtmppo", "ly-maddpg", "ly-matd3", "ly-masac"])
def test_every_trainer_declares_all_of_its_learning_state(algo):
    """Trainer.STATE is the one list resume relies on: every network, parameter, optimiser and
    stateful helper a trainer holds must be in it, and its state must round-trip."""
    from torch import nn
    from torch.optim import Optimizer

    from agents import make_trainer
    cfg = load_config().replace(**{"scenario.n_cvs": 2, "training.n_envs": 1, "training.batch_size": 64,
                                   "training.extra": {} if algo == "ly-dtmppo" else {"offpolicy": {"buffer_size": 64}}})
    trainer = make_trainer(algo, cfg)
    try:
        stateful = {k for k, v in vars(trainer).items()
                    if isinstance(v, (nn.Module, nn.Parameter, Optimizer)) or hasattr(v, "load_state_dict")}
        assert stateful <= set(trainer.STATE.values()), stateful - set(trainer.STATE.values())
        state = trainer.state_dict()
        trainer.load_state_dict(state)
        with pytest.raises(CosimError, match="checkpoint lacks the"):
            trainer.load_state_dict({k: v for k, v in state.items() if k != "actor_opt"})
    finally:
        trainer.sim.close()


# ---------------------------------------------------------------------------
# Output folders

def test_out_that_is_a_file_or_under_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    one_line(run("scripts/run_cosim.py", "--backend", "analytic", "--out", str(f)), f"--out {f} is a file")
    from agents import train
    from cosim.outputs import OutputError
    with pytest.raises(OutputError, match=re.escape(f"--out {f / 'a' / 'b'} lies under the file {f}, not a folder")):
        train("ly-dtmppo", load_config(), out=f / "a" / "b")


def test_read_only_out(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.geteuid() != 0:
            one_line(run("scripts/run_cosim.py", "--backend", "analytic", "--out", str(ro / "run")),
                     f"the folder {ro} is read-only for this user")
        else:  # root may write anywhere: ask os.access as an ordinary user would see the mode bits
            from cosim.outputs import OutputDir, OutputError
            monkeypatch.setattr(os, "access", lambda p, mode: not (Path(p) == ro and mode & os.W_OK))
            with pytest.raises(OutputError, match=re.escape(f"--out {ro / 'run'}: the folder {ro} is read-only")):
                OutputDir(ro / "run")
    finally:
        ro.chmod(0o755)


def test_full_disk_is_one_line_naming_the_folder(tmp_path):
    """A file-size limit stands in for a full disk: the write fails with an OSError mid-run."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
    out = tmp_path / "run"
    p = run("scripts/run_cosim.py", "--backend", "analytic", "--policy", "equal", "--quiet", "--out", str(out),
            preexec_fn=limit)
    one_line(p, f"cannot write the outputs in {out}")
    assert not out.exists() and not list(tmp_path.glob(".run.tmp-*"))  # nothing half-written stays


def test_staged_outputs_replace_a_run_whole_or_not_at_all(tmp_path):
    from cosim.outputs import MANIFEST, OutputDir
    out = tmp_path / "run"
    with OutputDir(out) as od:
        (od.path / "summary.json").write_text("old")
        (od.path / "config.yaml").write_text("old")
        (od.path / "slots.csv").write_text("old")
        assert not out.exists()  # nothing in place before the run completes
    with pytest.raises(RuntimeError):
        with OutputDir(out) as od:
            (od.path / "config.yaml").write_text("new")
            raise RuntimeError("the run fails")
    assert {f.name: f.read_text() for f in out.iterdir() if f.name != MANIFEST} == {
        "summary.json": "old", "config.yaml": "old", "slots.csv": "old"}
    # A run killed with SIGKILL leaves its staging folder and a temp file behind; the next run removes them.
    stale = tmp_path / ".run.tmp-999999"
    stale.mkdir()
    (out / ".checkpoint.safetensors.tmp999999").write_text("half")
    (out / "notes.txt").write_text("mine")
    with OutputDir(out) as od:  # e.g. evaluate.py into run_cosim's folder: summary.json and config.yaml
        (od.path / "summary.json").write_text("new")
        (od.path / "config.yaml").write_text("new")
    assert not stale.exists() and not (out / ".checkpoint.safetensors.tmp999999").exists()
    assert {f.name: f.read_text() for f in out.iterdir() if f.name != MANIFEST} == {
        "summary.json": "new", "config.yaml": "new", "notes.txt": "mine"}  # no old slots.csv
    assert not list(tmp_path.glob(".run.lock"))


def test_a_killed_run_releases_its_lock_and_its_leftovers_go(tmp_path):
    from cosim.outputs import OutputDir
    out = tmp_path / "run"
    code = ("import sys, time\nfrom cosim.outputs import OutputDir\nod = OutputDir(sys.argv[1]).__enter__()\n"
            "(od.path / 'slots.csv').write_text('half')\nprint('ready', flush=True)\ntime.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert p.stdout.readline().strip() == "ready"
        with pytest.raises(CosimError, match=f"another run \\(pid {p.pid}\\) is writing to"):
            OutputDir(out).__enter__()
    finally:
        p.kill()
        p.wait()
    assert (tmp_path / f".run.tmp-{p.pid}").is_dir()  # SIGKILL: no cleanup ran
    with OutputDir(out) as od:  # the kernel released the lock; the leftovers go
        (od.path / "summary.json").write_text("{}")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["run"] and not (out / "slots.csv").exists()


@pytest.mark.parametrize("script, args", [
    ("scripts/run_cosim.py", ["--backend", "analytic"]),
    ("scripts/evaluate.py", ["--policies", "equal"]),
    ("scripts/train.py", ["--algo", "ly-dtmppo"]),
])
def test_second_run_into_the_same_out_refuses(tmp_path, script, args):
    from cosim.outputs import OutputDir
    out = tmp_path / "run"
    with OutputDir(out, staged=False):  # a run in progress holds the lock
        p = run(script, *args, "--out", str(out), "--episodes", "1")
    one_line(p, f"another run (pid {os.getpid()}) is writing to {out}")


def test_evaluate_labels_checkpoints_of_the_same_name_by_run_folder(tmp_path):
    paths = []
    for run_name in ("a", "b", "c"):
        (tmp_path / run_name).mkdir()
        paths.append(tmp_path / run_name / "policy.safetensors")
        shutil.copy(SHIPPED, paths[-1])
    out = tmp_path / "eval"
    p = run("scripts/evaluate.py", "--checkpoint", *map(str, paths), "--policies", "", "--episodes", "1",
            "--quiet", "--out", str(out))
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert {k: v["checkpoint"] for k, v in summary.items()} == {f"ly-dtmppo:{n}": str(tmp_path / n /
                                                                "policy.safetensors") for n in "abc"}
    for n in "abc":
        assert f"ly-dtmppo:{n}" in p.stdout


# ---------------------------------------------------------------------------
# Policy files

def _rewrite(path: Path, meta_change=None, tensor_change=None, header=None):
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(SHIPPED), framework="pt") as f:
        meta = json.loads(f.metadata()["dtcosim"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta_change:
        meta_change(meta)
    if tensor_change:
        tensor_change(tensors)
    save_file(tensors, str(path), metadata={"dtcosim": header if header is not None else json.dumps(meta)})
    return path


@pytest.mark.parametrize("case, message", [
    ("not_object", "its dtcosim header is list, not an object"),
    ("no_fields", "policy header n_cvs must be a int in [1, 65536], got None"),
    ("absurd_hidden", "policy header hidden must be a int in [1, 65536], got 40000000"),
    ("wrong_hidden", "tensor net.layers.0.weight has shape [1, 39, 128], the header implies [1, 39, 40000]"),
    ("bad_kind", "actor.kind 'magic' is not one of"),
    ("nan_weights", "tensor net.layers.1.weight holds NaN or infinite values"),
    ("zero_std", "obs_std has zero or negative entries"),
    ("missing_tensor", "tensor obs_mean is missing"),
])
def test_bad_policy_files_are_refused_before_building_a_network(tmp_path, case, message):
    from agents.checkpoint import load_policy

    def hidden(h):
        def change(m):
            m["hidden"] = m["actor"]["hidden"] = h
        return change

    def nan(t):
        t["net.layers.1.weight"][0, 0, 0] = float("nan")

    f = tmp_path / "p.safetensors"
    {"not_object": lambda: _rewrite(f, header="[1, 2]"),
     "no_fields": lambda: _rewrite(f, header=json.dumps({"format": "dtcosim-policy/1"})),
     "absurd_hidden": lambda: _rewrite(f, hidden(40_000_000)),
     "wrong_hidden": lambda: _rewrite(f, hidden(40_000)),
     "bad_kind": lambda: _rewrite(f, lambda m: m["actor"].update(kind="magic")),
     "nan_weights": lambda: _rewrite(f, tensor_change=nan),
     "zero_std": lambda: _rewrite(f, tensor_change=lambda t: t["obs_std"].zero_()),
     "missing_tensor": lambda: _rewrite(f, tensor_change=lambda t: t.pop("obs_mean")),
     }[case]()
    assert f.stat().st_size < 120_000  # the 95 KB file that claims a huge network
    with pytest.raises(CosimError, match=re.escape(message)):
        load_policy(f)
    if case == "absurd_hidden":  # and from the command line: one line, before any network is built
        one_line(run("scripts/run_cosim.py", "--backend", "analytic", "--policy", str(f), "--out",
                     str(tmp_path / "o")), message)


def test_shipped_policy_passes_the_checks():
    from agents.checkpoint import load_policy
    assert load_policy(SHIPPED).spec.hidden == 128


# ---------------------------------------------------------------------------
# Resume

def _train_tiny(out, episodes=2):
    from agents import train
    cfg = load_config().replace(**{"scenario.n_cvs": 2, "training.n_envs": 2, "training.checkpoint_every": 2,
                                   "training.episodes": episodes})
    return train("ly-dtmppo", cfg, out=out, progress=False, tensorboard=False)


@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_damaged_checkpoint_is_one_line(tmp_path, damage):
    from agents import train
    out = tmp_path / "run"
    _train_tiny(out)
    ckpt = out / "checkpoint.safetensors"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(len(data)))
    message = f"{ckpt} is damaged or not a training checkpoint"
    with pytest.raises(CosimError, match=re.escape(message)):
        train(None, resume=out, episodes=4, progress=False, tensorboard=False)
    if damage == "truncated":
        one_line(run("scripts/train.py", "--resume", str(out), "--episodes", "4"), message)


def test_extended_budget_persists_and_cannot_shrink(tmp_path):
    from agents import train
    out = tmp_path / "run"
    _train_tiny(out)
    # Extend to 8 and stop at 4, as an interruption would; a plain --resume then finishes at 8.
    res = train(None, resume=out, episodes=8, stop_after=4, progress=False, tensorboard=False)
    assert res.episodes == 4 and not res.finished
    res = train(None, resume=out, progress=False, tensorboard=False)
    assert res.episodes == 8 and res.finished
    with pytest.raises(CosimError, match=re.escape(f"--episodes 6 is below the 8 episodes {out} has done already")):
        train(None, resume=out, episodes=6, progress=False, tensorboard=False)
    with pytest.raises(CosimError, match=re.escape(f"{out} already holds a run")):  # a fresh run refuses it
        _train_tiny(out)


def test_damaged_reproduction_record_is_one_line(tmp_path):
    cell = tmp_path / "results" / "cells" / "equal__analytic__seed=0"
    cell.mkdir(parents=True)
    (cell / "done.json").write_text('{"cell": {"algo": "eq')  # a disk that filled mid-write
    one_line(run("scripts/plot.py", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "figs")),
             f"cell record {cell / 'done.json'} is damaged")


# ---------------------------------------------------------------------------
# SUMO maps

@pytest.mark.parametrize("args, message", [
    (["--routes", "x.rou.xml"], "sumo.routes (x.rou.xml) needs sumo.net"),
    (["--net", "a.net.xml", "--sumocfg", "b.sumocfg"], "are both set: give one map"),
    (["--set", "sumo.extra_args=[--remote-port, '8813']"], "--remote-port makes SUMO wait for a TraCI client"),
])
def test_contradictory_or_hanging_map_options(args, message, tmp_path):
    one_line(run("scripts/run_cosim.py", *args, "--out", str(tmp_path / "o"), timeout=60), message)


@pytest.mark.sumo
def test_sumo_map_faults(tmp_path):
    net = (ROOT / "sumo_net" / "road" / "road.net.xml").read_text()
    (tmp_path / "missing_node.net.xml").write_text(net.replace('from="W" to="E"', 'from="NOPE" to="E"'))
    (tmp_path / "bad_number.net.xml").write_text(net.replace('priority="-1"', 'priority="x"', 1))
    for name, why in (("missing_node", "TypeError"), ("bad_number", "ValueError")):
        one_line(run("scripts/run_cosim.py", "--net", str(tmp_path / f"{name}.net.xml"), "--out",
                     str(tmp_path / "o"), timeout=120), f"is not a valid SUMO network ({why}")
    cfg = (ROOT / "sumo_net" / "road" / "road.sumocfg").read_text()
    road = ROOT / "sumo_net" / "road"
    (road / "_test_remote.sumocfg").write_text(cfg.replace("</configuration>",
                                                           '<traci_server><remote-port value="8813"/>'
                                                           "</traci_server></configuration>"))
    try:
        one_line(run("scripts/run_cosim.py", "--sumocfg", str(road / "_test_remote.sumocfg"), "--out",
                     str(tmp_path / "o"), timeout=60), "sets remote-port, which makes SUMO wait")
    finally:
        (road / "_test_remote.sumocfg").unlink()
    # One vehicle, departing at 5000 s: the map begins then, and a warm-up past its trip is refused before
    # any episode runs, with one that works.
    (tmp_path / "late.rou.xml").write_text('<routes><vType id="car" vClass="passenger"/><vehicle id="late" '
                                           'type="car" depart="5000"><route edges="eastbound"/></vehicle></routes>')
    one_line(run("scripts/run_cosim.py", "--net", str(road / "road.net.xml"), "--routes",
                 str(tmp_path / "late.rou.xml"), "--policy", "equal", "--quiet", "--out", str(tmp_path / "o"),
                 "--set", "sumo.warmup_s=100", timeout=120),
             "no vehicle is on road.net.xml in the episode window 100..130 s after its begin: set sumo.warmup_s to "
             "at most 2 s (vehicles are on the road from 0 to 32 s after the begin at 5000 s)")
    assert not (tmp_path / "o").exists()
    # A window with vehicles that are never CVs (no vehicle of the CV vType): no CV is ever active.
    (tmp_path / "typed.rou.xml").write_text('<routes><vType id="car" vClass="passenger"/><vType id="cv"/>'
                                            '<vehicle id="v" type="car" depart="0"><route edges="eastbound"/>'
                                            '</vehicle></routes>')
    from agents import train
    cfg = load_config().replace(**{"backend": "sumo", "sumo.net": str(road / "road.net.xml"), "sumo.warmup_s": 0.0,
                                   "sumo.routes": str(tmp_path / "typed.rou.xml"), "training.n_envs": 1,
                                   "sumo.cv_vtype": "cv", "scenario.n_cvs": 2, "scenario.episode_slots": 5})
    with pytest.raises(CosimError, match="no vehicle became a CV in the first 1 training episodes"):
        train("ly-dtmppo", cfg, out=tmp_path / "t", progress=False, tensorboard=False)


@pytest.mark.sumo
def test_too_many_sumo_environments_are_refused():
    from cosim.env import BatchCoSim
    cfg = load_config().replace(backend="sumo")
    with pytest.raises(ConfigError, match=r"training.n_envs = 4096 would start 4096 SUMO processes.*use at most"):
        BatchCoSim(cfg, n_envs=4096)


@pytest.mark.sumo
def test_killed_sumo_is_named(tmp_path):
    from cosim.sumo_mobility import SumoMobility
    mob = SumoMobility(load_config().replace(**{"sumo.use_libsumo": False}))
    try:
        mob.reset(0)
        os.kill(mob.sumo_pid, signal.SIGKILL)
        with pytest.raises(CosimError, match=r"sumo died \(killed by SIGKILL\)"):
            mob.advance(1.0)
    finally:
        mob.close()


@pytest.mark.sumo
def test_killed_sumo_gui_is_named():
    if shutil.which("xvfb-run") is None:
        pytest.skip("xvfb-run is not installed (Debian: apt-get install xvfb xauth)")
    code = ("import os, signal\nfrom cosim.config import load_config\nfrom cosim.sumo_mobility import SumoMobility\n"
            "m = SumoMobility(load_config(), gui=True)\nm.reset(0)\nos.kill(m.sumo_pid, signal.SIGKILL)\n"
            "try:\n    m.advance(1.0)\nexcept Exception as e:\n    print(e)\nm.close()\n")
    p = subprocess.run(["xvfb-run", "-a", sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "sumo-gui died (killed by SIGKILL)" in p.stdout, p.stdout + p.stderr


@pytest.mark.sumo
def test_stale_sumo_temp_folders_are_removed():
    from cosim.sumo_mobility import SumoMobility
    dead = Path(tempfile.gettempdir()) / "cosim-sumo-999999-stale"
    dead.mkdir(exist_ok=True)
    live = Path(tempfile.mkdtemp(prefix=f"cosim-sumo-{os.getpid()}-"))
    try:
        SumoMobility(load_config()).close()
        assert not dead.exists() and live.exists()  # only folders of processes that are gone
    finally:
        shutil.rmtree(live, ignore_errors=True)
        shutil.rmtree(dead, ignore_errors=True)


# ---------------------------------------------------------------------------
# Numbers

def test_parameters_that_make_results_non_finite_are_refused(tmp_path):
    one_line(run("scripts/run_cosim.py", "--backend", "analytic", "--set", "compute.kappa_cv=0", "--out",
                 str(tmp_path / "o")), "compute.kappa_cv: 0 makes the energy reference E_ref zero")


def test_a_non_finite_slot_stops_the_run_naming_the_quantity(monkeypatch):
    from cosim.env import BatchCoSim
    from cosim.policies import make_reference_policy
    from cosim.runner import run_episodes, strict_json
    sim = BatchCoSim(load_config(), n_envs=1, seed=0)
    step = sim.step

    def blow_up(actions):
        out = step(actions)
        out.result.energy[...] = np.inf
        return out
    monkeypatch.setattr(sim, "step", blow_up)
    with pytest.raises(CosimError, match="the task energy of a slot is inf"):
        run_episodes(sim, make_reference_policy("equal", sim.n_rsus), 1, progress=False)
    with pytest.raises(CosimError, match=r"x.mean_cost is inf: refusing"):
        strict_json({"x": {"mean_cost": float("inf")}})
    text = strict_json({"a": [1.0, {"b": 2, "spread": float("nan")}]})  # nothing to average: null
    assert "NaN" not in text and json.loads(text) == {"a": [1.0, {"b": 2, "spread": None}]}


# ---------------------------------------------------------------------------
# Command line: exit codes, --debug, reproduce's zero budgets

def test_negative_evaluation_seed_is_refused(tmp_path):
    one_line(run("scripts/evaluate.py", "--policies", "equal", "--eval-seed", "-5", "--out", str(tmp_path / "e")),
             "--eval-seed must be in [0, ")


@pytest.mark.parametrize("flag", ["--episodes", "--seeds", "--workers"])
def test_reproduce_refuses_zero(flag):
    one_line(run("scripts/reproduce.py", flag, "0", "--dry-run"), f"{flag} must be at least 1, got 0")


def test_debug_shows_the_traceback(tmp_path):
    p = run("scripts/run_cosim.py", "--backend", "analytic", "--set", "lyapunov.V=-1", "--debug",
            "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and "Traceback" in p.stderr and "error: lyapunov.V" in p.stderr
    for script in ROOT.glob("scripts/*.py"):  # every script's parser gets --debug from cosim.cli
        text = script.read_text()
        assert "run_main(main)" in text, script
        wrapped = re.search(r"from dtcosim\.commands\.(\w+) import main", text)  # a thin wrapper of a subcommand
        if wrapped:
            text = (ROOT / "dtcosim" / "commands" / f"{wrapped.group(1)}.py").read_text()
        assert "add_common_args(ap" in text or "add_debug_arg(ap)" in text, script
