"""The one command line: dtcosim's subcommands, their shared options, and the package installed as a wheel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cosim.resources import REPO_ROOT


def dtcosim(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dtcosim", *args], capture_output=True, text=True,
                          cwd=cwd or REPO_ROOT, env=env, timeout=600)


def test_lists_its_commands_and_refuses_unknown_ones():
    p = dtcosim("--help")
    assert p.returncode == 0
    for name in ("run", "train", "evaluate", "reproduce", "plot", "bench", "maps", "survey", "transfer", "peers",
                 "traces", "queues", "convergence", "contention", "city", "warmup", "configs", "policies"):
        assert f"\n  {name} " in p.stdout
    p = dtcosim("fly")
    assert p.returncode == 2 and p.stderr.strip() == "error: unknown command 'fly' (choose run, train, evaluate, " \
                                                     "reproduce, plot, bench, maps, survey, transfer, contention, " \
                                                     "city, queues, convergence, traces, peers, warmup, configs, " \
                                                     "policies)"


@pytest.mark.parametrize("args, message", [
    (["run", "--backend", "analytic", "--gui"], "--gui needs the SUMO backend, not --backend analytic"),
    (["run", "--backend", "analytic", "--net", "x.net.xml"], "--sumocfg/--net/--routes needs the SUMO backend"),
    (["run", "--set", "lyapunov.V=-1"], "lyapunov.V: -1.0 is out of range"),
    (["reproduce", "--set", "lyapunov.Vee=1", "--dry-run"], "unknown config key 'lyapunov.Vee'"),
    (["bench", "--set", "scenario.n_cvs=0"], "scenario.n_cvs: 0 is out of range"),
])
def test_bad_options_are_one_line(args, message):
    p = dtcosim(*args)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr and p.stderr.count("\n") == 1, p.stderr


def test_reproduce_applies_config_and_set_to_every_cell(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("channel:\n  noise_w: 2.0e-13\nlyapunov:\n  alpha: 0.8\n")
    p = dtcosim("reproduce", "--preset", "tiny", "--config", str(base), "--set", "compute.kappa_cv=2e-26",
                "--experiments", "convergence", "--algos", "equal", "local", "--dry-run")
    assert p.returncode == 0, p.stderr
    cells = [line for line in p.stdout.splitlines() if "__" in line]
    assert cells and all("noise_w=2e-13" in c and "kappa_cv=2e-26" in c for c in cells)
    assert all("alpha=0.6" in c for c in cells)  # what the experiment fixes itself wins over the base
    assert {c.split("__")[0] for c in cells} == {"equal", "local"}


@pytest.mark.sumo
def test_the_wheel_runs_from_any_folder(tmp_path):
    """pip install of the built wheel (not editable), then dtcosim run from an empty folder elsewhere."""
    wheel_dir, site, empty = tmp_path / "wheel", tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(REPO_ROOT)], check=True, capture_output=True, timeout=600)
    wheel = next(wheel_dir.glob("dtcosim-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    # Only the installed copy may be importable: not the checkout, not an editable install of it.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import sys; sys.path = [p for p in sys.path if 'site-packages' in p or 'lib/python' in p]; "
            f"sys.path.insert(0, {str(site)!r}); sys.meta_path = [f for f in sys.meta_path "
            "if 'editable' not in type(f).__name__.lower() and 'editable' not in getattr(f, '__name__', '')]; "
            "from dtcosim.cli import main; main()")
    for args in (["run", "--episodes", "1", "--quiet"],
                 ["run", "--backend", "analytic", "--policy", "equal", "--episodes", "1", "--quiet"]):
        p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=empty,
                           env=env, timeout=600)
        assert p.returncode == 0, p.stderr
        assert "mean system cost" in p.stdout
        assert str(site) in p.stdout or (empty / "runs" / "cosim" / "summary.json").is_file()
    imported = subprocess.run([sys.executable, "-c", code.replace("from dtcosim.cli import main; main()",
                               "import cosim, agents, sumo_net; print(cosim.__file__, agents.SHIPPED_CHECKPOINT)")],
                              capture_output=True, text=True, cwd=empty, env=env, timeout=600)
    assert imported.stdout.startswith(str(site)) and str(site) in imported.stdout.split()[1], imported.stdout


def test_list_options_take_spaces_or_commas_and_repeat():
    import argparse

    from cosim.cli import add_list_arg
    ap = argparse.ArgumentParser()
    add_list_arg(ap, "--policies", help="", default=["equal", "local"])
    add_list_arg(ap, "--cvs", help="", type=int)
    assert ap.parse_args([]).policies == ["equal", "local"]
    args = ap.parse_args(["--policies", "nearest,random", "dpp-opt", "--policies", "equal", "--cvs", "3,5", "8"])
    assert args.policies == ["nearest", "random", "dpp-opt", "equal"] and args.cvs == [3, 5, 8]
    assert ap.parse_args(["--policies"]).policies == [] == ap.parse_args(["--policies", ""]).policies
    with pytest.raises(SystemExit):
        ap.parse_args(["--cvs", "three"])
