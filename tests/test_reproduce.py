"""The reproduction pipeline on a tiny grid: worker processes, resume, figures, and Ray."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agents.experiments import Budget, grid, load_experiments, run_grid

ROOT = Path(__file__).resolve().parent.parent

EXPERIMENTS = {
    "convergence.yaml": """
name: convergence
algos: [ly-dtmppo, ly-mappo, equal, dpp-opt]
fixed: {scenario.n_cvs: 5, lyapunov.V: 5, lyapunov.alpha: 0.6, training.n_envs: 2}
""",
    "vehicles.yaml": """
name: vehicles
algos: [ly-dtmppo, equal]
sweep: {scenario.n_cvs: [2, 5]}
fixed: {lyapunov.V: 5, lyapunov.alpha: 0.6, training.n_envs: 2}
""",
    "lyapunov_v.yaml": """
name: lyapunov_v
algos: [ly-dtmppo]
sweep: {lyapunov.V: [5, 50]}
fixed: {scenario.n_cvs: 5, lyapunov.alpha: 0.6, training.n_envs: 2}
""",
}


@pytest.fixture(scope="module")
def exp_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("experiments")
    for name, text in EXPERIMENTS.items():
        (d / name).write_text(text)
    return d


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_grid_shares_cells_between_experiments(exp_dir):
    cells = grid(load_experiments(directory=exp_dir), Budget(4, 1, 2), "analytic")
    keys = [c.key for c in cells]
    assert len(keys) == len(set(keys))
    # 5 CVs and V = 5 is in all three experiments, but trained once per algorithm and seed.
    assert sum(1 for c in cells if c.algo == "ly-dtmppo" and dict(c.overrides)["scenario.n_cvs"] == 5
               and dict(c.overrides)["lyapunov.V"] == 5) == 2
    assert len(cells) == 2 * (4 + 2 + 1)  # convergence, then what vehicles and V add


def test_reproduce_then_plot(exp_dir, tmp_path):
    out = tmp_path / "res"
    args = ["scripts/reproduce.py", "--preset", "tiny", "--experiments-dir", str(exp_dir), "--out", str(out),
            "--workers", "2", "--seeds", "2"]
    p = run(*args)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "14 new, 0 already done, 0 failed" in p.stdout
    record = json.loads(next((out / "cells").glob("ly-dtmppo*n_cvs=5*seed=0/done.json")).read_text())
    assert record["eval"]["episodes"] == 1 and len(record["queue_trajectory"]) == 30
    # A second run redoes nothing.
    p = run(*args)
    assert p.returncode == 0 and "0 new, 14 already done" in p.stdout
    p = run("scripts/plot.py", "--results", str(out))
    assert p.returncode == 0, p.stderr[-2000:]
    for fig in ("fig4_convergence", "fig5a_queues_per_cv", "fig5b_queues_per_algorithm", "fig6a_cost_vs_cvs",
                "fig6b_delay_vs_cvs", "fig6c_energy_vs_cvs", "fig7a_cost_vs_episode_by_v", "fig7b_cost_vs_v"):
        assert (out / f"{fig}.png").read_bytes()[:4] == b"\x89PNG", fig
    md = (out / "results.md").read_text()
    assert "Table III" in md and "| Ly-DTMPPO |" in md and "per-slot optimiser" in md and "V" in md


def test_interrupted_cell_resumes_from_its_checkpoint(exp_dir, tmp_path):
    """A cell with a checkpoint but no done.json (an interrupted run) continues instead of restarting."""
    from agents import train
    cells = [c for c in grid(load_experiments(["lyapunov_v"], exp_dir), Budget(4, 1, 1), "analytic")
             if dict(c.overrides)["lyapunov.V"] == 50]
    cell = cells[0]
    run_dir = tmp_path / "cells" / cell.key
    train(cell.algo, cell.config(), out=run_dir, progress=False, tensorboard=False, stop_after=2)
    report = run_grid([cell], tmp_path, workers=1, progress=False)
    assert not report.failed
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4  # header + the 4 episodes, the first 2 kept from before the interruption


def test_bad_experiment_input(tmp_path, exp_dir):
    p = run("scripts/reproduce.py", "--experiments", "nosuch", "--experiments-dir", str(exp_dir), "--dry-run")
    assert p.returncode == 2 and "unknown experiment 'nosuch'" in p.stderr and "Traceback" not in p.stderr
    (tmp_path / "bad.yaml").write_text("name: bad\nalgos: [ly-superppo]\n")
    p = run("scripts/reproduce.py", "--experiments-dir", str(tmp_path), "--dry-run")
    assert p.returncode == 2 and "unknown algorithm or policy 'ly-superppo'" in p.stderr
    p = run("scripts/plot.py", "--results", str(tmp_path / "none"))
    assert p.returncode == 2 and "holds no results" in p.stderr


def test_grid_on_a_local_ray_instance(exp_dir, tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")
    cells = [c for c in grid(load_experiments(["vehicles"], exp_dir), Budget(2, 1, 1), "analytic")
             if dict(c.overrides)["scenario.n_cvs"] == 2]
    report = run_grid(cells, tmp_path, ray_address="local", progress=False)
    assert not report.failed, report.failed
    assert sorted(r["algo"] for r in report.records) == ["equal", "ly-dtmppo"]
    assert all((tmp_path / "cells" / c.key / "done.json").is_file() for c in cells)
