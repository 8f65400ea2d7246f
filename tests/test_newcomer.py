"""A newcomer's first commands, as the README and --help give them, from an empty folder outside the
repository against the package installed from its wheel (not the checkout, not an editable install):
packaged configs and checkpoints by name, the listings, one-line errors naming what is allowed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cosim.resources import REPO_ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(site folder holding the unpacked wheel, an empty working folder)."""
    tmp = tmp_path_factory.mktemp("newcomer")
    wheel_dir, site, empty = tmp / "wheel", tmp / "site", tmp / "empty"
    empty.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(REPO_ROOT)], check=True, capture_output=True, timeout=300)
    with zipfile.ZipFile(next(wheel_dir.glob("dtcosim-*.whl"))) as whl:  # a wheel is the installed tree, zipped
        whl.extractall(site)
    return site, empty


# Only the unpacked wheel is importable (not the checkout, nor an editable install of it). The numba
# kernels run as plain Python: an installed copy's cache is its own, and compiling it would be most of the time.
LAUNCH = ("import sys; sys.path = [p for p in sys.path if 'site-packages' in p or 'lib/python' in p]; "
          "sys.path.insert(0, {site!r}); sys.meta_path = [f for f in sys.meta_path "
          "if 'editable' not in type(f).__name__.lower() and 'editable' not in getattr(f, '__name__', '')]; "
          "from dtcosim.cli import main; main()")


def dtcosim(installed: tuple[Path, Path], *args: str) -> subprocess.CompletedProcess:
    site, empty = installed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"NUMBA_DISABLE_JIT": "1"}
    return subprocess.run([sys.executable, "-c", LAUNCH.format(site=str(site)), *args], capture_output=True,
                          text=True, cwd=empty, env=env, timeout=300)


def test_the_listings_name_what_ships(installed):
    p = dtcosim(installed, "configs")
    assert p.returncode == 0, p.stderr
    for name in ("default", "shipped", "set_policy", "congested", "heavy-sensing", "rsu2", "rsu5"):
        line = next(x for x in p.stdout.splitlines() if x.split()[:1] == [name])
        assert len(line.split(None, 1)[1]) > 20  # a description, not just the name
    assert "experiments" not in p.stdout  # reproduce's grids are no --config overlays
    p = dtcosim(installed, "policies")
    assert p.returncode == 0, p.stderr
    for name in ("equal", "dpp-opt", "ly-dtmppo_set", "ly-dtmppo_default", "ly-mappo_default", "ly-dtmppo_paper"):
        assert any(x.split()[:1] == [name] for x in p.stdout.splitlines()), name
    assert "ly-dtmppo_set" in next(x for x in p.stdout.splitlines() if "[default]" in x)


def test_run_and_evaluate_by_name_from_an_empty_folder(installed):
    site, empty = installed
    p = dtcosim(installed, "run", "--episodes", "1", "--set", "scenario.episode_slots=3", "--backend", "analytic",
                "--config", "congested", "--quiet", "--out", "runs/first")
    assert p.returncode == 0, p.stderr
    assert "ly-dtmppo_set on analytic" in p.stdout and "10 CVs" in p.stdout  # congested: 10 CVs
    summary = json.loads((empty / "runs" / "first" / "summary.json").read_text())
    assert summary["policy"] == "ly-dtmppo_set" and summary["checkpoint"].startswith(str(site))
    p = dtcosim(installed, "evaluate", "--checkpoint", "ly-dtmppo_default", "--policies", "equal", "--episodes", "1",
                "--slots", "3", "--quiet", "--out", "runs/eval")
    assert p.returncode == 0, p.stderr
    rows = json.loads((empty / "runs" / "eval" / "summary.json").read_text())
    assert rows["ly-dtmppo"]["checkpoint"].startswith(str(site)) and "equal" in rows
    p = dtcosim(installed, "run", "--backend", "analytic", "--policy", "ly-dtmppo_default", "--config", "shipped",
                "--set", "scenario.episode_slots=2", "--quiet", "--out", "runs/second")
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("args, message", [
    (["run", "--config", "congestion"], "config file not found: congestion (nor a packaged config: dagger_policy, "
                                        "default, set_policy, shipped, congested, heavy-sensing, rsu2, rsu5;"),
    (["run", "--policy", "ly-dtmppo"], "unknown policy 'ly-dtmppo' (choose local, nearest, equal, random, dpp-opt, "
                                       "a packaged checkpoint: ly-dagger_set, ly-dtmppo_default,"),
    (["evaluate", "--checkpoint", "ly-dtmppo_sett"], "--checkpoint ly-dtmppo_sett: policy checkpoint not found "
                                                     "(nor a packaged checkpoint: ly-dagger_set,"),
])
def test_a_wrong_name_is_one_line_with_the_names_allowed(installed, args, message):
    p = dtcosim(installed, *args)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and message in p.stderr, p.stderr


def test_no_help_example_needs_the_checkout(capsys):
    """The --help of every subcommand (in this process: the text is the same installed or not) gives its
    examples as dtcosim commands with packaged names, never a configs/, checkpoints/ or scripts/ path."""
    import importlib
    import re

    from dtcosim.cli import COMMANDS
    for name, (module, _) in COMMANDS.items():
        with pytest.raises(SystemExit) as done:
            importlib.import_module(f"dtcosim.commands.{module}").main(["--help"], prog=f"dtcosim {name}")
        text = capsys.readouterr().out
        assert done.value.code == 0 and f"usage: dtcosim {name}" in text
        assert not re.search(r"(--[\w-]+[ =]|python )(configs|checkpoints|scripts)/", text), (name, text)
        assert "python scripts/" not in text, name
