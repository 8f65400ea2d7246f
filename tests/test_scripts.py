"""The scripts, run as a newcomer would, with tiny budgets."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_run_cosim_analytic_writes_table_and_files(tmp_path):
    out = tmp_path / "run"
    p = run("scripts/run_cosim.py", "--backend", "analytic", "--episodes", "2", "--policy", "equal",
            "--cvs", "3", "--out", str(out), "--quiet")
    assert p.returncode == 0, p.stderr
    assert "InstrT" in p.stdout and "mean system cost" in p.stdout
    summary = json.loads((out / "summary.json").read_text())
    for key in ("mean_cost", "mean_reward", "mean_delay_s", "mean_energy_j", "instr_share",
                "deadline_miss_rate", "episodes", "n_cvs", "backend", "policy"):
        assert key in summary
    assert summary["episodes"] == 2 and summary["n_cvs"] == 3 and summary["backend"] == "analytic"
    rows = list(csv.DictReader((out / "slots.csv").open()))
    assert len(rows) == 2 * 30 * 3
    # The summary is the mean of the logged slots.
    per_slot = {(r["episode"], r["slot"]): float(r["system_cost"]) for r in rows}
    assert summary["mean_cost"] == pytest.approx(sum(per_slot.values()) / len(per_slot), rel=1e-6)
    assert (out / "config.yaml").is_file()


@pytest.mark.parametrize("args, message", [
    (["--policy", "greedy"], "unknown policy 'greedy'"),
    (["--policy", "no/such/checkpoint.safetensors"], "policy checkpoint not found"),
    (["--set", "lyapunov.V=-3"], "lyapunov.V: -3.0 is out of range"),
    (["--set", "lyapunov.Vee=3"], "unknown config key 'lyapunov.Vee'"),
    (["--config", "nope.yaml"], "config file not found: nope.yaml"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
    p = run("scripts/run_cosim.py", "--backend", "analytic", "--out", str(tmp_path), "--quiet", *args)
    assert p.returncode != 0
    assert message in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_run_cosim_default_is_sumo_headless(tmp_path):
    p = run("scripts/run_cosim.py", "--out", str(tmp_path), "--quiet", "--policy", "nearest")
    assert p.returncode == 0, p.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["backend"] == "sumo" and summary["episodes"] == 1


def test_run_cosim_on_a_map_that_ships_with_sumo(tmp_path):
    import sumo
    cross = Path(sumo.SUMO_HOME) / "tools" / "game" / "cross.sumocfg"
    p = run("scripts/run_cosim.py", "--sumocfg", str(cross), "--set", "sumo.rsu_placement=auto",
            "--set", "sumo.rsu_spacing_m=100", "--out", str(tmp_path), "--quiet", "--policy", "equal")
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader((tmp_path / "slots.csv").open()))
    assert len(rows) == 30 * 5 and any(float(r["split_local"]) < 1 for r in rows)
    p = run("scripts/run_cosim.py", "--sumocfg", str(tmp_path / "missing.sumocfg"), "--out", str(tmp_path))
    assert p.returncode != 0 and "missing.sumocfg" in p.stderr and "Traceback" not in p.stderr


