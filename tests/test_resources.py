"""Packaged configs and checkpoints by name, the labels of policies, and the first-run compile notice."""

from __future__ import annotations

from pathlib import Path

import pytest

from cosim import resources as R
from cosim.cli import check_checkpoints, check_configs, packaged_config, resolve_policy
from cosim.config import CosimError


def test_every_shipped_config_and_checkpoint_has_a_name_and_a_curated_line():
    configs, checkpoints = R.configs(), R.checkpoints()
    shipped = {p.stem for p in R.config_dir().rglob("*.yaml") if "experiments" not in p.parts}
    assert set(configs) == shipped and set(configs) == set(R.CONFIG_ABOUT)  # a new file needs its line
    assert set(checkpoints) == {p.stem for p in R.checkpoint_dir().glob("*.safetensors")} == set(R.CHECKPOINT_ABOUT)
    for r in [*configs.values(), *checkpoints.values()]:
        assert r.path.is_file() and 20 <= len(r.description) <= 100, r


def test_names_and_repository_paths_resolve_to_the_packaged_files(tmp_path, monkeypatch):
    congested = R.config_dir() / "scenarios" / "congested.yaml"
    monkeypatch.chdir(tmp_path)  # no configs/ here: names and the README's old paths still work
    assert Path(R.resolve_config("congested")) == congested
    assert Path(R.resolve_config("congested.yaml")) == congested
    assert Path(R.resolve_config("configs/scenarios/congested.yaml")) == congested
    assert Path(R.resolve_checkpoint("ly-dtmppo_default")) == R.checkpoint_dir() / "ly-dtmppo_default.safetensors"
    assert Path(R.resolve_checkpoint("checkpoints/ly-dtmppo_set.safetensors")).parent == R.checkpoint_dir()
    # A file of the user's wins over a packaged name.
    (tmp_path / "congested").write_text("seed: 3\n")
    assert R.resolve_config("congested") == "congested"
    assert packaged_config("no-such") == "no-such"  # left for the one-line check
    with pytest.raises(CosimError, match=r"^config file not found: no-such \(nor a packaged config: dagger_policy, "):
        check_configs(["congested", "no-such"])
    with pytest.raises(CosimError, match=r"--checkpoint x: policy checkpoint not found \(nor a packaged checkpoint"):
        check_checkpoints(["ly-dtmppo_set", "x"])


def test_policy_values():
    assert resolve_policy("equal") == "equal" and resolve_policy("dpp-opt") == "dpp-opt"
    path = str(R.checkpoint_dir() / "ly-dagger_set.safetensors")
    assert resolve_policy("ly-dagger_set") == path
    assert resolve_policy("refined10:ly-dagger_set") == "refined10:" + path
    assert resolve_policy("runs/x/policy.safetensors") == "runs/x/policy.safetensors"  # make_policy's error
    with pytest.raises(CosimError, match=r"unknown policy 'greedy' \(choose local, nearest, equal, random, "
                                         r"dpp-opt, a packaged checkpoint: ly-dagger_set,"):
        resolve_policy("greedy")


def test_short_names_for_progress_bars_and_titles(tmp_path):
    assert R.short_name(str(R.checkpoint_dir() / "ly-dtmppo_set.safetensors")) == "ly-dtmppo_set"
    assert R.short_name("runs/analytic__ly-dtmppo__0/policy.safetensors") == "analytic__ly-dtmppo__0"
    assert R.short_name(str(tmp_path)) == tmp_path.name  # a run folder
    assert R.short_name("refined10:/x/ly-dagger_set.safetensors") == "refined10:ly-dagger_set"
    assert R.short_name("equal") == "equal"


def test_a_first_run_compile_is_announced_once_before_it_happens(monkeypatch):
    from dtcosim.commands import warmup
    monkeypatch.setattr(warmup, "numba_available", lambda: True)
    monkeypatch.setattr(warmup, "_WARMED", set())
    monkeypatch.setattr(warmup, "cached", lambda group: group == "env")
    said, warmed = [], []
    monkeypatch.setattr(warmup, "warm", lambda cfg, group: (warmed.append((len(said), group)), 21.4)[1])
    warmup.prepare(None, ["equal"], log=said.append)
    assert said == [] and warmed == []  # the environment's kernels are cached, no optimiser wanted
    warmup.prepare(None, ["equal", "refined10:x"], log=said.append)
    assert said[0].startswith("compiling the optimiser's kernels once (about 20-110 s); later runs load them")
    assert warmed == [(1, "optimiser")] and said[1] == "compiled the optimiser's kernels in 21 s"
    warmup.prepare(None, ["dpp-opt"], log=said.append)
    assert len(said) == 2  # once per process
