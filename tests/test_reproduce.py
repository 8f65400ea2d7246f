"""The reproduction pipeline on a tiny grid: worker processes, resume, figures, and Ray."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
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


# ---------------------------------------------------------------------------
# The variant experiments: named variant axes, exclude, long-horizon cells

from agents.experiments import EXPERIMENTS_DIR, Experiment, _key_value, validate  # noqa: E402
from cosim.config import ConfigError  # noqa: E402

# Small versions of configs/experiments/{twin_ablation,scenarios,long_horizon}.yaml (same names and axes,
# so the same figures), sharing cells the way the real ones do. n_cvs and V are fixed, as in the paper's
# experiments, so that the paper's figures would pick these cells up if they did not leave them out.
VARIANT_EXPERIMENTS = {
    "twin_ablation.yaml": """
name: twin_ablation
algos: [ly-dtmppo]
sweep:
  scenario: {default: {}, congested: {scenario.n_cvs: 6, compute.rsu_cpu_hz: 5.0e9}}
  twin: {none: {algo: ly-mappo}, paper: {}, global: {twin.view: global},
         no_others: {twin.view: global, twin.hide: [dt_others]}}
fixed: {scenario.n_cvs: 5, lyapunov.V: 5, training.n_envs: 2, actions.bandwidth: full, actions.split: balanced}
""",
    "scenarios.yaml": """
name: scenarios
algos: [ly-dtmppo, dpp-opt, equal]
sweep:
  scenario: {default: {}, heavy-sensing: configs/scenarios/heavy-sensing.yaml}
  actions: {paper: {}, best: {actions.bandwidth: full, actions.split: balanced}}
exclude: [{algo: dpp-opt, actions: best}]
fixed: {scenario.n_cvs: 5, lyapunov.V: 5, training.n_envs: 2, twin.view: global}
""",
    "long_horizon.yaml": """
name: long_horizon
algos: [ly-dtmppo, equal]
eval_slots: 60
sweep:
  actions: {paper: {}, best: {actions.bandwidth: full, actions.split: balanced}}
fixed: {scenario.n_cvs: 5, lyapunov.V: 5, training.n_envs: 2, twin.view: global}
""",
}


@pytest.fixture(scope="module")
def variant_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("variant_experiments")
    for name, text in VARIANT_EXPERIMENTS.items():
        (d / name).write_text(text)
    return d


def test_variant_experiments_end_to_end(variant_dir, tmp_path):
    out = tmp_path / "res"
    args = ["scripts/reproduce.py", "--preset", "tiny", "--experiments-dir", str(variant_dir), "--out", str(out),
            "--workers", "2"]
    # One experiment first: its cells are then shared with the others, which label them as theirs too.
    p = run(*args, "--experiments", "scenarios")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "10 new, 0 already done, 0 failed" in p.stdout  # 2 scenarios x 2 actions x 3 algos, less dpp-opt x best
    p = run(*args)
    assert p.returncode == 0, p.stderr[-2000:]
    # twin_ablation 8 (one shared with scenarios), long_horizon 4 long cells (their 2 training cells are scenarios')
    assert "11 new, 10 already done, 0 failed" in p.stdout
    cells = {d.name: json.loads((d / "done.json").read_text()) for d in (out / "cells").iterdir()}
    assert len(cells) == 21
    assert not [k for k in cells if k.startswith("dpp-opt") and "bandwidth=full" in k]  # excluded
    shared = cells["ly-dtmppo__analytic__bandwidth=full__split=balanced__V=5__n_cvs=5__n_envs=2__view=global"
                   "__ep=4__seed=0"]
    assert shared["variants"] == {"scenarios": {"actions": "best", "scenario": "default"},
                                  "twin_ablation": {"scenario": "default", "twin": "global"},
                                  "long_horizon": {"actions": "best"}}
    none = next(r for k, r in cells.items() if k.startswith("ly-mappo") and "n_cvs=6" in k)
    assert none["variants"] == {"twin_ablation": {"scenario": "congested", "twin": "none"}}
    assert none["setting"]["compute.rsu_cpu_hz"] == 5e9 and none["setting"]["scenario.n_cvs"] == 6
    heavy = next(r for k, r in cells.items() if k.startswith("equal") and "size_bits=2e7,4e7" in k)
    assert heavy["setting"]["tasks.size_bits"] == [2e7, 4e7]  # read from the preset file
    assert len(heavy["rsu_queue_trajectory"]) == 30 and len(heavy["rsu_queue_trajectory"][0]) == 3
    # A long-horizon cell evaluates its training cell's policy on 60-slot episodes, without retraining.
    lk = "ly-dtmppo__analytic__bandwidth=full__split=balanced__V=5__n_cvs=5__n_envs=2__view=global__slots=60" \
         "__ep=4__seed=0"
    long = cells[lk]
    assert long["trained_in"] == shared["key"] and not list((out / "cells" / lk).glob("*.safetensors"))
    lh = long["long_horizon"]
    assert lh["slots"] == 60 and lh["energy_budget_j"] == 10.0
    assert lh["energy_vs_budget"] == pytest.approx(lh["energy_last_half_j"] / 10.0 - 1)
    assert len(lh["energy_trace_j"]) == len(lh["y_trace_j"]) == 60 and lh["y_final_j"] == lh["y_trace_j"][-1]
    assert np.isfinite([lh["y_growth_j_per_slot"], lh["cost_last_half"], lh["cost_all"]]).all()
    assert long["eval"]["mean_cost"] != shared["eval"]["mean_cost"]  # 60 slots, not 30

    p = run("scripts/plot.py", "--results", str(out))
    assert p.returncode == 0, p.stderr[-2000:]
    for fig in ("fig_twin_ablation", "fig_scenarios", "fig_scenarios_queues", "fig_long_horizon"):
        assert (out / f"{fig}.png").read_bytes()[:4] == b"\x89PNG", fig
    md = (out / "results.md").read_text()
    assert "Table III" not in md and "fig4" not in md  # the paper's figures leave these cells out
    assert "## Twin ablation" in md and "| congested | none | Ly-MAPPO |" in md
    assert "### Scenario: heavy-sensing" in md and "| per-slot optimiser | paper |" in md
    assert "## Long horizon: 60-slot episodes" in md and "energy J, slots 30–60" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| Ly-DTMPPO | best |") and "%" in ln
               and ln.count("|") == 10)
    assert f"{lh['energy_last_half_j']:.2f}" in row and f"{shared['eval']['mean_cost']:.4f}" in row


def write_exp(tmp_path, text, name="e.yaml"):
    (tmp_path / name).write_text(text)
    return tmp_path / name


BASE = "name: e\nalgos: [ly-dtmppo, dpp-opt]\nsweep:\n  actions: {paper: {}, best: {actions.split: balanced}}\n"


@pytest.mark.parametrize("extra, message", [
    ("exclude: [{algo: dpp-opt, actions: bogus}]", "exclude[0]: axis 'actions' has no variant 'bogus' (its variants: "
                                                   "paper, best)"),
    ("exclude: [{algo: dpp-opt, colour: red}]", "exclude[0]: unknown axis 'colour' (choose algo, actions)"),
    ("exclude: [{algo: ly-superppo}]", "exclude[0]: algo 'ly-superppo' is not run by this experiment"),
    ("exclude: [{}]", "exclude[0] is empty"),
    ("exclude: [{actions: best}, {algo: dpp-opt, actions: best}]", None),
    ("  twin: {bad: {twin.nosuch: 1}}", "sweep.twin.bad: unknown config key 'twin.nosuch'"),
    ("  twin: {bad: {twin.hide: [dt_nosuch]}}", "sweep.twin.bad: twin.hide[0]: 'dt_nosuch' is not one of"),
    ("  twin: {bad: 5}", "sweep.twin.bad must be a mapping of config overrides, a preset file or empty"),
    ("  scenario: {busy: configs/scenarios/nosuch.yaml}", "sweep.scenario.busy: preset file "
                                                          "configs/scenarios/nosuch.yaml not found"),
    ("  twin: {none: {algo: ly-nosuch}}", "sweep.twin.none: unknown algorithm or policy 'ly-nosuch'"),
    ("  other: {x: {actions.split: paper}}", "sweep axes 'actions' and 'other' both set actions.split"),
    ("  algo: {x: {}}", "sweep.algo: 'algo' is not an axis name"),
    ("eval_slots: 1", "eval_slots must be 0 (the usual episodes) or at least 2, got 1"),
])
def test_variant_errors_are_one_line(tmp_path, extra, message):
    f = write_exp(tmp_path, BASE + extra + "\n")
    if message is None:  # an exclude entry matching nothing but what another already leaves out is fine
        exp = Experiment.load(f)
        assert [c.algo for c in grid([exp], Budget(4, 1, 1), "analytic")] == ["ly-dtmppo", "dpp-opt"]
        return
    with pytest.raises(ConfigError) as info:
        Experiment.load(f)
    assert message in str(info.value) and "\n" not in str(info.value) and str(f) in str(info.value)


def test_exclude_and_validate_name_what_to_leave_out(tmp_path):
    base = BASE.replace("[ly-dtmppo, dpp-opt]", "[ly-dtmppo]") + "  twin: {none: {algo: ly-mappo}, paper: {}}\n"
    exp = Experiment.load(write_exp(tmp_path, base + "exclude: [{algo: ly-dtmppo, actions: best}]\n"))
    assert sorted((c.algo, c.variants["e"]["actions"]) for c in grid([exp], Budget(4, 1, 1), "analytic")) == \
        [("ly-dtmppo", "paper"), ("ly-mappo", "best"), ("ly-mappo", "paper")]
    with pytest.raises(ConfigError, match=r"exclude\[0\] matches no cell"):  # twin: paper runs ly-dtmppo
        Experiment.load(write_exp(tmp_path, base + "exclude: [{algo: ly-mappo, twin: paper}]\n"))
    with pytest.raises(ConfigError, match="exclude: expected a list, got 5"):
        Experiment.load(write_exp(tmp_path, "name: e\nalgos: [equal]\nexclude: 5\n"))
    # Without an exclude, dpp-opt under balanced actions is refused before any work, with the way out.
    cells = grid([Experiment.load(write_exp(tmp_path, BASE))], Budget(4, 1, 1), "analytic")
    with pytest.raises(ConfigError, match=r"dpp-opt optimises the paper's actions only .* exclude"):
        validate(cells)
    p = run("scripts/reproduce.py", "--experiments-dir", str(tmp_path), "--dry-run")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "dpp-opt optimises" in p.stderr
    cells = grid([Experiment.load(write_exp(tmp_path, "name: e\nalgos: [ly-dtmppo]\nfixed: {twin.enabled: false}\n"))],
                 Budget(4, 1, 1), "analytic")
    with pytest.raises(ConfigError, match="twin.enabled=false is ignored by ly-dtmppo.*algo: ly-mappo"):
        validate(cells)


def test_shipped_variant_experiments():
    """The three experiment files: their cells at the full budget, shared where the settings agree."""
    exps = {e.name: e for e in load_experiments(directory=EXPERIMENTS_DIR)}
    full = Budget(1800, 20, 3)
    sizes = {n: len(grid([exps[n]], full, "analytic")) for n in ("twin_ablation", "scenarios", "long_horizon")}
    assert sizes == {"twin_ablation": 42, "scenarios": 99, "long_horizon": 39}
    cells = grid([exps[n] for n in ("twin_ablation", "scenarios", "long_horizon")], full, "analytic")
    assert len(cells) == 156
    validate(cells)
    by_key = {c.key: c for c in cells}
    best = "ly-dtmppo__analytic__bandwidth=full__split=balanced__view=global__ep=1800__seed=0"
    assert set(by_key[best].variants) == {"twin_ablation", "scenarios", "long_horizon"}
    long = [c for c in cells if c.eval_slots]
    # over 600 slots Y is still filling (issue 22): the long run is 3000 slots, 2 episodes per cell
    assert len(long) == 24 and all(c.eval_slots == 3000 and c.long_episodes == 2 for c in long)
    for c in long:  # each learned long-horizon cell's training cell is in the grid; no key is reused
        assert "__slots=3000__" in c.key and (c.training_cell is None or c.training_cell.key in by_key)
    assert not [c for c in cells if c.algo == "dpp-opt" and ("split", "balanced") in
                [(k.split(".")[-1], v) for k, v in c.overrides]]
    # The paper's experiments keep their keys, so results already computed stay valid.
    paper = grid([exps["convergence"]], full, "analytic")
    assert "ly-dtmppo__analytic__V=5__alpha=0.6__n_cvs=5__ep=1800__seed=0" in {c.key for c in paper}


def test_key_values():
    assert _key_value(2500000.0) == "25e5" and _key_value(5e9) == "5e9" and _key_value(0.6) == "0.6"
    assert _key_value(5) == "5" and _key_value(100.0) == "100.0"
    assert _key_value(("dt_backlog", "dt_aggregate")) == "dt_backlog,dt_aggregate" and _key_value(()) == "[]"


def test_long_horizon_cell_alone_runs_its_training_cell_first(tmp_path):
    """Given only a long-horizon cell, run_grid trains its training cell first (one folder, one training)."""
    exp = Experiment.load(write_exp(tmp_path, "name: lh\nalgos: [ly-dtmppo]\neval_slots: 12\n"
                                              "fixed: {training.n_envs: 2}\n"))
    long = [c for c in grid([exp], Budget(2, 1, 1), "analytic") if c.eval_slots]
    assert len(long) == 1 and long[0].training_cell.key != long[0].key
    report = run_grid(long, tmp_path / "res", workers=1, progress=False)
    assert not report.failed and [r["key"] for r in report.records] == [long[0].training_cell.key, long[0].key]
    rec = report.records[1]
    assert rec["trained_in"] == long[0].training_cell.key and rec["long_horizon"]["slots"] == 12
    assert len(rec["long_horizon"]["energy_trace_j"]) == 12 and rec["eval"]["episodes"] == 1


def test_lyapunov_v_long_is_registered():
    """The V trade-off experiment: V in {1, ..., 100} at >= 3000 slots for dpp-opt (paper's actions) and the
    two MAPPOs (shipped options); its training cells evaluate on the budget's episodes, its long cells on 2."""
    exps = {e.name: e for e in load_experiments(directory=EXPERIMENTS_DIR)}
    exp = exps["lyapunov_v_long"]
    assert exp.sweep["lyapunov.V"] == (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0) and exp.eval_slots >= 3000
    assert set(exp.algos) == {"ly-dtmppo", "ly-mappo", "dpp-opt"} and "fig_v_tradeoff" in exp.figures
    cells = grid([exp], Budget(1800, 20, 3), "analytic")
    validate(cells)
    long = [c for c in cells if c.eval_slots]
    assert len(long) == 7 * 3 * 3 and all(c.long_episodes == 2 for c in long)
    train = [c for c in cells if not c.eval_slots]
    assert len(train) == 7 * 2 * 3 and all(c.eval_episodes == 20 for c in train)
    for c in long:
        opts = {k.split(".")[-1]: v for k, v in c.overrides}
        assert opts["V"] in exp.sweep["lyapunov.V"]
        assert (opts.get("split") == "balanced") == (c.algo != "dpp-opt")
        assert c.training_cell is None or c.training_cell in train
    # the paper's Fig. 7 experiment is unchanged
    assert exps["lyapunov_v"].sweep["lyapunov.V"] == (5.0, 10.0, 50.0, 100.0) and not exps["lyapunov_v"].eval_slots


def test_lyapunov_v_long_figure_and_table(tmp_path):
    """A tiny lyapunov_v_long grid (dpp-opt, two V, 12-slot episodes) gives the V trade-off figure and table."""
    exp = Experiment.load(write_exp(tmp_path, "name: lyapunov_v_long\nalgos: [dpp-opt]\neval_slots: 12\n"
                                              "eval_episodes: 1\nsweep: {lyapunov.V: [1, 20]}\n"))
    cells = grid([exp], Budget(2, 3, 1), "analytic")
    assert [c.long_episodes for c in cells] == [1, 1]
    report = run_grid(cells, tmp_path / "res", workers=1, progress=False)
    assert not report.failed
    from agents.figures import make_all
    figures, md = make_all(tmp_path / "res", tmp_path / "out")
    assert (tmp_path / "out" / "fig_v_tradeoff.png") in figures
    text = md.read_text()
    assert "## The V trade-off: 12-slot episodes" in text
    assert all(r["eval"]["episodes"] == 1 for r in report.records)
    assert "| per-slot optimiser | 1 |" in text and "| per-slot optimiser | 20 |" in text
