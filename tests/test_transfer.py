"""One policy for any fleet and RSU layout: entity observations, the set actor and critic, training
across scenarios, set policy files and their header checks, and the scripts that use them."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agents import PAPER_CHECKPOINT, SHIPPED_CHECKPOINT, config_for, default_policy, make_trainer
from agents.checkpoint import load_policy, read_policy_file, save_policy
from agents.common import fit
from agents.entity import PER_CV, PER_RSU, SetActor, SetCritic, expand_log_std
from cosim.config import ConfigError, CosimError, load_config
from cosim.env import BatchCoSim
from cosim.model import ActionLayout
from cosim.policies import EqualPolicy
from cosim.runner import run_episodes
from cosim.scenarios import ScenarioSampler
from cosim.twin import ObsLayout

ROOT = Path(__file__).resolve().parent.parent
SET_CFG = ["training.arch=set", "training.hidden=16", "training.n_envs=2", "training.epochs=1"]


def rsu_layout(xs, radius=200.0):
    return [f"scenario.rsus={json.dumps([{'x': x, 'y': 9.375, 'height': 10.0, 'radius': radius} for x in xs])}"]


# -- the observation's blocks ------------------------------------------------------------------

def test_layout_builds_the_flat_vector_from_named_blocks_and_splits_it_into_entities():
    lay = ObsLayout(4)
    rng = np.random.default_rng(0)
    blocks = {b.name: rng.normal(size=(2, 3, 4 if b.per_rsu else b.width)) for b in lay.blocks}
    flat = lay.assemble(blocks)
    assert flat.shape == (2, 3, lay.dim) and lay.dim == lay.own_dim + 4 * lay.token_dim
    own, tokens = lay.split(flat)
    assert own.shape == (2, 3, lay.own_dim) and tokens.shape == (2, 3, 4, lay.token_dim)
    names = [b.name for b in lay.token_blocks]
    # Token k, feature j is RSU k's entry of the j-th per-RSU block.
    np.testing.assert_array_equal(tokens[..., 2, names.index("spec_eff")], blocks["spec_eff"][..., 2])
    np.testing.assert_array_equal(own[..., :6], blocks["task"])
    assert ObsLayout.for_obs_dim(lay.dim) == lay
    with pytest.raises(ValueError, match="missing \\['active'\\]"):
        lay.assemble({k: v for k, v in blocks.items() if k != "active"})
    with pytest.raises(ValueError, match="'covered' has 3 entries, layout wants 4"):
        lay.assemble({**blocks, "covered": blocks["covered"][..., :3]})


def test_the_paper_layout_is_unchanged_for_the_mlp():
    # The flat order the shipped MLP was trained on: 34 entries at K = 3, the DT part last.
    lay = ObsLayout(3)
    assert lay.dim == 34 and lay["covered"] == slice(10, 13) and lay["active"] == slice(24, 25)
    assert lay.dt_slice == slice(25, 34)
    assert [b.name for b in lay.token_blocks] == ["covered", "distance", "spec_eff", "rsu_capacity", "dt_backlog",
                                                 "dt_distance_next"]


# -- the set actor and critic ------------------------------------------------------------------

def _permute_rsus(obs: np.ndarray, perm: np.ndarray) -> np.ndarray:
    lay = ObsLayout.for_obs_dim(obs.shape[-1])
    out = obs.copy()
    for b in lay.token_blocks:
        sl = lay[b.name]
        out[..., sl] = obs[..., sl][..., perm]
    return out


def _permute_action_rsus(a: np.ndarray, perm: np.ndarray) -> np.ndarray:
    lay = ActionLayout(len(perm))
    out = a.copy()
    for sl in (lay.split_rsu, lay.bandwidth_rsu, lay.cpu):
        out[..., sl] = a[..., sl][..., perm]
    return out


def test_set_actor_and_critic_are_permutation_equivariant_over_rsus_and_agents():
    torch.manual_seed(0)
    with BatchCoSim(load_config(overrides=rsu_layout([150, 300, 420, 560])), n_envs=3, n_cvs=6, seed=1) as sim:
        obs, state = sim.reset(1)
        lay = sim.layout
    actor = SetActor(lay.blocks, 32, head_gain=1.0)
    critic = SetCritic(lay.blocks, 32)
    x = torch.from_numpy(obs)
    with torch.no_grad():
        a = actor(x).numpy()
        v = critic(torch.from_numpy(state), x).numpy()
        assert a.shape == (3, 6, 3 * 4 + 2) and v.shape == (3, 6)
        assert np.abs(a).max() > 1e-3  # not trivially zero
        # RSUs: actions permute with the tokens; local and unused logits and values do not move.
        perm = np.array([2, 0, 3, 1])
        obs_p = _permute_rsus(obs, perm)
        state_p = _permute_rsus(state.reshape(3, 6, -1), perm).reshape(3, -1)
        np.testing.assert_allclose(actor(torch.from_numpy(obs_p)).numpy(), _permute_action_rsus(a, perm), atol=1e-5)
        np.testing.assert_allclose(critic(torch.from_numpy(state_p), torch.from_numpy(obs_p)).numpy(), v, atol=1e-5)
        # Agents: outputs and values permute with the agents.
        pa = np.array([5, 3, 0, 1, 4, 2])
        obs_a = obs[:, pa]
        state_a = state.reshape(3, 6, -1)[:, pa].reshape(3, -1)
        np.testing.assert_allclose(actor(torch.from_numpy(obs_a)).numpy(), a[:, pa], atol=1e-5)
        np.testing.assert_allclose(critic(torch.from_numpy(state_a), torch.from_numpy(obs_a)).numpy(), v[:, pa],
                                   atol=1e-5)


def test_set_outputs_land_in_their_named_action_blocks():
    lay = ActionLayout(3)
    log_std = torch.arange(len(PER_CV) + len(PER_RSU), dtype=torch.float32)  # local, unused, split, bw, cpu
    full = expand_log_std(log_std, 3).numpy()
    assert full.shape == (lay.dim,)
    assert full[lay.local] == 0 and full[lay.bandwidth_unused] == 1
    assert (full[lay.split_rsu] == 2).all() and (full[lay.bandwidth_rsu] == 3).all() and (full[lay.cpu] == 4).all()


# -- the scenario sampler ----------------------------------------------------------------------

def test_scenario_sampler_draws_within_ranges_reproducibly():
    cfg = load_config(overrides=["training.arch=set", "training.scenarios.enabled=true",
                                 "training.scenarios.n_cvs=[3, 9]", "training.scenarios.min_gap_m=80",
                                 "training.scenarios.agents_per_batch=60"])
    a, b = ScenarioSampler(cfg), ScenarioSampler(cfg)
    draws = [a.draw() for _ in range(200)]
    assert draws == [b.draw() for _ in range(200)]
    ks = {len(s.rsus) for s in draws}
    assert ks == {2, 3, 4, 5, 6} and {s.n_cvs for s in draws} == set(range(3, 10))
    for s in draws:
        x = np.array([r.x for r in s.rsus])
        assert x.min() >= 100 and x.max() <= 600 and (np.diff(x) >= 80 - 1e-9).all()
        assert all(130 <= r.radius <= 260 for r in s.rsus)
        assert a.covers_road(x, np.array([r.radius for r in s.rsus]))  # cover_road: no stretch without an RSU
        assert a.episodes_per_batch(s) == round(60 / s.n_cvs)
    assert s.apply(cfg).n_rsus == len(s.rsus)


def test_set_arch_is_refused_where_it_does_not_exist():
    with pytest.raises(CosimError, match="training.arch=set is available for ly-dtmppo and ly-mappo, not ly-maddpg"):
        make_trainer("ly-maddpg", load_config(overrides=["training.arch=set"]))


@pytest.mark.parametrize("overrides, message", [
    (["training.scenarios.enabled=true"], "needs training.arch=set"),
    (["training.arch=set", "training.scenarios.enabled=true", "training.scenarios.rsu_x_m=[100, 900]"],
     "900 lies beyond the road"),
    (["training.arch=set", "training.scenarios.enabled=true", "training.scenarios.min_gap_m=200"],
     "6 RSUs 200 m apart do not fit"),
    (["training.arch=set", "training.scenarios.n_rsus=[4, 2]"], "lower bound 4 exceeds upper bound 2"),
    (["training.arch=deep"], "'deep' is not one of mlp, set"),
    (["training.arch=set", "training.scenarios.enabled=true", "training.scenarios.n_rsus=[2, 2]",
      "training.scenarios.rsu_radius_m=[50, 60]"], "no layout of 2 RSUs drawn in 10000 tries covers the road"),
])
def test_bad_scenario_settings_fail_with_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        cfg = load_config(overrides=overrides)
        ScenarioSampler(cfg).draw()


# -- training across scenarios, and the policy file -------------------------------------------

def test_training_across_scenarios_resumes_bit_identically_and_the_policy_runs_anywhere(tmp_path):
    cfg = load_config(overrides=SET_CFG + ["training.scenarios.enabled=true", "training.checkpoint_every=2",
                                           "scenario.episode_slots=5"])
    straight = make_trainer("ly-dtmppo", cfg)
    fit(straight, tmp_path / "a", episodes=6, progress=False, tensorboard=False)
    half = make_trainer("ly-dtmppo", cfg)
    fit(half, tmp_path / "b", episodes=6, stop_after=2, progress=False, tensorboard=False)
    rest = make_trainer("ly-dtmppo", cfg)
    fit(rest, tmp_path / "b", episodes=6, resume=True, progress=False, tensorboard=False)
    ta, tb = read_policy_file(tmp_path / "a")[1], read_policy_file(tmp_path / "b")[1]
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)

    meta, _ = read_policy_file(tmp_path / "a")
    assert meta["arch"] == "set" and meta["actor"]["entity"]["token"][0] == "covered"
    # One file at several CV counts and RSU counts.
    for n_cvs, xs in ((2, [200, 350, 500]), (9, [200, 350, 500]), (4, [250, 450]), (3, [80, 200, 330, 470, 640])):
        with BatchCoSim(load_config(overrides=rsu_layout(xs)), n_envs=1, n_cvs=n_cvs, seed=0) as sim:
            policy = load_policy(tmp_path / "a", env=sim)
            res = run_episodes(sim, policy, 1, seed=0)
            assert sim.n_cvs == n_cvs and sim.n_rsus == len(xs)
            assert np.isfinite(res.summary["mean_cost"]) and res.summary["mean_cost"] > 0
            a = policy.act(sim.reset(0)[0])
            assert a.shape == (1, n_cvs, 3 * len(xs) + 2)


def _policy_file(tmp_path, twin=True):
    cfg = load_config(overrides=SET_CFG)
    trainer = make_trainer("ly-dtmppo" if twin else "ly-mappo", cfg)
    spec, tensors = trainer.actor(trainer.state_dict())
    return save_policy(tmp_path / "p.safetensors", spec, tensors, "ly-dtmppo", trainer.cfg, 0), spec, tensors


def test_set_policy_header_is_validated(tmp_path):
    from safetensors.torch import load_file, save_file
    path, spec, tensors = _policy_file(tmp_path)
    meta, _ = read_policy_file(path)

    def write(meta_changes=None, actor_changes=None, tensors_=None):
        m = json.loads(json.dumps(meta))
        m.update(meta_changes or {})
        m["actor"].update(actor_changes or {})
        bad = tmp_path / f"bad{len(list(tmp_path.iterdir()))}.safetensors"
        save_file(tensors_ if tensors_ is not None else load_file(str(path)), str(bad),
                  metadata={"dtcosim": json.dumps(m)})
        return bad

    cases = [
        (write(actor_changes={"arch": "transformer"}), "actor.arch 'transformer' is not mlp or set"),
        (write(actor_changes={"entity": {"own": "x"}}), "actor.entity must list own blocks"),
        (write(actor_changes={"hidden": "64"}), "actor.hidden must be a int"),
        (write(actor_changes={"kind": "beta"}), "actor.kind 'beta' is not"),
        (write(tensors_={**load_file(str(path)), "log_std": torch.zeros(7)}), "log_std tensor of 5 entries"),
    ]
    for bad, message in cases:
        with pytest.raises(CosimError, match=message):
            read_policy_file(bad)
    wrong = {k: (torch.zeros(3, 3) if k == "net.enc.own.weight" else v) for k, v in load_file(str(path)).items()}
    with pytest.raises(CosimError, match="tensors do not match its header"):
        load_policy(write(tensors_=wrong))
    # An environment whose observation has other RSU-token features cannot be driven.
    with pytest.raises(CosimError, match="reads RSU tokens"):
        load_policy(write(actor_changes={"entity": {**meta["actor"]["entity"], "token": ["covered", "distance"]}}),
                    env=BatchCoSim(n_envs=1))


def test_set_policy_trained_without_the_twin_ignores_the_twin_blocks(tmp_path):
    path, _, _ = _policy_file(tmp_path, twin=False)
    policy = load_policy(path)
    with BatchCoSim(n_envs=2, seed=0) as sim:
        obs, _ = sim.reset(0)
    noisy = obs.copy()
    noisy[..., sim.layout.dt_slice] += 3.0
    np.testing.assert_array_equal(policy.act(obs), policy.act(noisy))


# -- the shipped checkpoints and the scripts ---------------------------------------------------

def test_shipped_set_checkpoint_is_the_default_and_runs_any_fleet_and_layout():
    assert SHIPPED_CHECKPOINT.is_file() and default_policy() == str(SHIPPED_CHECKPOINT)
    meta, _ = read_policy_file(SHIPPED_CHECKPOINT)
    assert meta["arch"] == "set" and meta["config"]["training"]["scenarios"]["enabled"] is True
    for n_cvs, xs in ((2, [200, 350, 500]), (16, [200, 350, 500]), (5, [200, 500]), (5, [40, 180, 330, 470, 640])):
        cfg = config_for(str(SHIPPED_CHECKPOINT), load_config(overrides=rsu_layout(xs)))  # its options
        with BatchCoSim(cfg, n_envs=1, n_cvs=n_cvs, seed=3) as sim:
            res = run_episodes(sim, load_policy(SHIPPED_CHECKPOINT, env=sim), 1, seed=10_000)
            equal = run_episodes(sim, EqualPolicy(sim.n_rsus), 1, seed=10_000)
            assert res.summary["mean_cost"] < 3 * equal.summary["mean_cost"]  # a working policy, not noise


def run(*args, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_evaluate_takes_cvs_and_config_and_refuses_only_what_cannot_run(tmp_path):
    p = run("scripts/evaluate.py", "--checkpoint", str(SHIPPED_CHECKPOINT), "--cvs", "3", "--config",
            "configs/transfer/rsu2.yaml", "--episodes", "1", "--policies", "equal", "--quiet", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert "3 CVs, 2 RSUs" in p.stdout and "ly-dtmppo" in p.stdout
    p = run("scripts/evaluate.py", "--checkpoint", str(PAPER_CHECKPOINT), "--cvs", "4", "--episodes", "1",
            "--policies", "", "--quiet", "--out", str(tmp_path))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "has 5 CVs x 34 obs, env has 4 CVs x 34" in p.stderr and "set-architecture" in p.stderr


def test_shipped_checkpoints_carry_the_shipped_options():
    """ly-dtmppo_default and ly-mappo_default are one recipe with and without the twin, and with the set
    policy carry configs/shipped.yaml's options; the paper's file keeps the paper's."""
    from agents import DEFAULT_CHECKPOINT, MAPPO_CHECKPOINT
    from agents.checkpoint import policy_options
    from cosim.config import flat_overrides
    shipped = flat_overrides([ROOT / "configs" / "shipped.yaml"])
    for path in (DEFAULT_CHECKPOINT, MAPPO_CHECKPOINT, SHIPPED_CHECKPOINT):
        opts = policy_options(read_policy_file(path)[0])
        assert {k: opts[k] for k in shipped} == shipped, path
    dt, mappo = read_policy_file(DEFAULT_CHECKPOINT)[0], read_policy_file(MAPPO_CHECKPOINT)[0]
    assert (dt["algo"], dt["twin"], mappo["algo"], mappo["twin"]) == ("ly-dtmppo", True, "ly-mappo", False)
    strip = lambda c: {k: v for k, v in c.items() if k != "twin"}  # noqa: E731
    assert strip(dt["config"]) == strip(mappo["config"])  # trained the same way
    assert policy_options(read_policy_file(PAPER_CHECKPOINT)[0]) == {
        "actions.bandwidth": "paper", "actions.split": "paper", "actions.cpu": "paper", "twin.view": "paper",
        "twin.hide": [], "twin.info": "oracle"}
