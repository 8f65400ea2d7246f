"""scripts/train.py and scripts/evaluate.py, run as a newcomer would, with tiny budgets."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--backend", "analytic", "--cvs", "2", "--set", "training.n_envs=2", "--quiet"]


def run(*args, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def one_line_error(p, message):
    assert p.returncode != 0
    assert message in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    p = run("scripts/train.py", "--algo", "ly-dtmppo", "--episodes", "4", "--out", str(out), *TINY)
    assert p.returncode == 0, p.stderr
    return out, p


def test_train_writes_a_run_folder(trained):
    out, p = trained
    assert "trained 4 episodes" in p.stdout and "slots/s" in p.stdout
    for name in ("config.yaml", "metrics.csv", "checkpoint.safetensors", "policy.safetensors", "curves.png"):
        assert (out / name).is_file(), name
    assert list((out / "tb").iterdir())
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["episode"]) for r in rows] == [0, 1, 2, 3]
    assert "n_cvs: 2" in (out / "config.yaml").read_text()


def test_resume_extends_a_finished_run(trained, tmp_path):
    out, _ = trained
    copy = tmp_path / "run"
    copy.mkdir()
    for f in out.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    p = run("scripts/train.py", "--resume", str(copy), "--episodes", "6", "--quiet", "--no-tensorboard")
    assert p.returncode == 0, p.stderr
    assert len(list(csv.DictReader((copy / "metrics.csv").open()))) == 6


def test_evaluate_compares_checkpoint_and_references(trained, tmp_path):
    out, _ = trained
    ev = tmp_path / "eval"
    p = run("scripts/evaluate.py", "--checkpoint", str(out / "policy.safetensors"), "--episodes", "2",
            "--policies", "equal", "local", "--cvs", "2", "--out", str(ev), "--quiet")
    assert p.returncode == 0, p.stderr
    assert "ly-dtmppo" in p.stdout and "equal" in p.stdout and "±" in p.stdout and "misses" in p.stdout
    summary = json.loads((ev / "summary.json").read_text())
    assert list(summary) == ["ly-dtmppo", "equal", "local"]
    for s in summary.values():
        for key in ("mean_cost", "mean_reward", "mean_delay_s", "mean_energy_j", "instr_share",
                    "deadline_miss_rate", "cost_ci95", "episodes", "n_cvs", "backend", "policy"):
            assert key in s
        assert s["episodes"] == 2 and s["n_cvs"] == 2 and s["seed"] == 10_000
    assert (ev / "config.yaml").is_file()


def test_run_cosim_accepts_the_checkpoint(trained, tmp_path):
    out, _ = trained
    p = run("scripts/run_cosim.py", "--backend", "analytic", "--cvs", "2", "--policy", str(out / "policy.safetensors"),
            "--out", str(tmp_path), "--quiet")
    assert p.returncode == 0, p.stderr
    assert "mean system cost" in p.stdout


@pytest.mark.parametrize("script, args, message", [
    ("train.py", ["--algo", "ly-ppo"], "unknown algorithm 'ly-ppo'"),
    ("train.py", ["--episodes", "2"], "--algo is required"),
    ("train.py", ["--resume", "no/such/run"], "nothing to resume"),
    ("evaluate.py", ["--checkpoint", "no/such/policy.safetensors"], "policy checkpoint not found"),
    ("evaluate.py", ["--checkpoint", "checkpoints/ly-dtmppo_paper.safetensors", "--cvs", "3"],
     "has 5 CVs x 34 obs, env has 3 CVs x 34"),
    ("evaluate.py", ["--policies", "greedy"], "unknown policy 'greedy'"),
])
def test_bad_input_is_one_line(tmp_path, script, args, message):
    p = run(f"scripts/{script}", *args, "--quiet", *(["--out", str(tmp_path / "o")] if "--resume" not in args else []))
    one_line_error(p, message)


def test_a_checkpoint_brings_its_action_and_view_options(tmp_path):
    """A policy trained under actions.* / twin.view runs under them in evaluate and run_cosim, unless the run
    sets them itself (then a one-line warning); the reference policies keep the config's."""
    out = tmp_path / "run"
    opts = ["--set", "actions.split=balanced", "--set", "actions.bandwidth=full", "--set", "twin.view=global"]
    p = run("scripts/train.py", "--algo", "ly-dtmppo", "--episodes", "2", "--out", str(out), *TINY, *opts)
    assert p.returncode == 0, p.stderr
    ev = tmp_path / "eval"
    p = run("scripts/evaluate.py", "--checkpoint", str(out), "--episodes", "1", "--policies", "equal", "--cvs", "2",
            "--out", str(ev), "--quiet")
    assert p.returncode == 0, p.stderr
    assert "warning" not in p.stderr
    assert ("ly-dtmppo runs under the options it was trained with: actions.bandwidth=full actions.split=balanced "
            "twin.view=global") in p.stdout
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["ly-dtmppo"]["options"]["actions.split"] == "balanced" and "options" not in summary["equal"]
    # The equal split under the config's (paper) actions, as if evaluated alone.
    alone = run("scripts/evaluate.py", "--episodes", "1", "--policies", "equal", "--cvs", "2",
                "--out", str(tmp_path / "alone"), "--quiet")
    assert alone.returncode == 0, alone.stderr
    assert json.loads((tmp_path / "alone" / "summary.json").read_text())["equal"]["mean_cost"] == \
        summary["equal"]["mean_cost"]
    # Set explicitly, the run's choice wins and says so.
    p = run("scripts/run_cosim.py", "--backend", "analytic", "--policy", str(out), "--cvs", "2",
            "--set", "actions.split=paper", "--out", str(tmp_path / "cosim"), "--quiet")
    assert p.returncode == 0, p.stderr
    assert "was trained with actions.split=balanced; this run uses actions.split=paper" in p.stderr
    cfg = (tmp_path / "cosim" / "config.yaml").read_text()
    assert "split: paper" in cfg and "bandwidth: full" in cfg and "view: global" in cfg
