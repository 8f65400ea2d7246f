"""ly-dagger: DAgger from the per-slot optimiser into the set actor; one file for any fleet and layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents import make_policy, make_trainer, train
from agents.common import CHECKPOINT_FILE, fit, load_state_file
from cosim.config import ConfigError, load_config
from cosim.env import BatchCoSim

SCENARIOS = {"enabled": True, "n_cvs": [2, 6], "n_rsus": [2, 4], "rsu_x_m": [60.0, 640.0], "min_gap_m": 40.0,
             "rsu_radius_m": [80.0, 220.0], "cover_road": False, "both_sides": True,
             "rsu_cpu_hz": [5.0e9, 20.0e9], "agents_per_batch": 8}


def dagger_cfg(episodes: int = 8, **more):
    return load_config().replace(**{
        "training.arch": "set", "training.hidden": 16, "training.episodes": episodes, "training.scenarios": SCENARIOS,
        "twin.view": "global", "scenario.episode_slots": 6,
        "training.extra": {"dagger": {"epochs": 2, "minibatch_slots": 8, "expert_iterations": 10}}, **more})


def test_dagger_fits_the_optimiser_and_resumes_exactly(tmp_path) -> None:
    full = make_trainer("ly-dagger", dagger_cfg())
    it = full.iterate(0)
    assert it.losses["beta"] == 1.0 and it.losses["expert_share"] == 1.0  # DAgger's first round: the optimiser plays
    assert np.isfinite(it.losses["imitation_loss"]) and it.losses["buffer_slots"] > 0
    full.sim.close()

    cfg = dagger_cfg(episodes=12)
    a = make_trainer("ly-dagger", cfg)
    res_full = fit(a, tmp_path / "full", progress=False, tensorboard=False)
    a.sim.close()
    b = make_trainer("ly-dagger", cfg)
    res_part = fit(b, tmp_path / "part", progress=False, tensorboard=False, stop_after=6)
    b.sim.close()
    assert not res_part.finished
    res_resumed = train(None, resume=tmp_path / "part", progress=False, tensorboard=False)
    assert res_resumed.finished
    assert [vars(m) for m in res_resumed.metrics] == [vars(m) for m in res_full.metrics]
    sa, _ = load_state_file(tmp_path / "full" / CHECKPOINT_FILE)
    sb, _ = load_state_file(tmp_path / "part" / CHECKPOINT_FILE)
    for k in sa["trainer"]["actor"]:
        assert torch.equal(sa["trainer"]["actor"][k], sb["trainer"]["actor"][k]), k


def test_one_file_runs_any_fleet_and_layout_and_is_equivariant(tmp_path) -> None:
    cfg = dagger_cfg(episodes=6)
    t = make_trainer("ly-dagger", cfg)
    fit(t, tmp_path / "run", progress=False, tensorboard=False)
    t.sim.close()
    path = str(tmp_path / "run" / "policy.safetensors")
    rng = np.random.default_rng(0)
    for n_cvs in (1, 7, 64):
        for n_rsus in (1, 3, 8):
            # Partly covered layouts: small RSUs spread along both sides of the road.
            rsus = [{"x": float(x), "y": 9.375 * (-1) ** k, "height": 10.0, "radius": 70.0}
                    for k, x in enumerate(np.linspace(60.0, 640.0, n_rsus))]
            run_cfg = cfg.replace(**{"scenario.n_cvs": n_cvs, "scenario.rsus": rsus, "training.scenarios.enabled": False})
            with BatchCoSim(run_cfg, n_envs=1, seed=1) as sim:
                policy = make_policy(path, sim.n_rsus, env=sim)
                obs, _ = sim.reset(3)
                act = policy.act(obs)
                assert act.shape == (1, n_cvs, sim.action_dim) and np.isfinite(act).all()
                out = sim.step(act)
                assert np.isfinite(out.reward).all()
                if n_cvs == 7 and n_rsus == 3:
                    covered = obs[..., sim.layout["covered"]] > 0.5
                    assert (~covered).any() and covered.any()  # partly covered: some CV-RSU pairs are out of reach
                    # CVs: permuting the agents permutes the actions.
                    perm = rng.permutation(n_cvs)
                    assert np.allclose(policy.act(obs[:, perm]), act[:, perm], atol=1e-6)
                    # RSUs: permuting every RSU block of the observation permutes the RSU entries of the action.
                    k_perm = np.array([2, 0, 1])
                    lay, acts = sim.layout, sim.actions
                    o2 = obs.copy()
                    for block in lay.blocks:
                        s = lay[block.name]
                        if block.per_rsu:
                            o2[..., s] = obs[..., s][..., k_perm]
                    a2 = policy.act(o2)
                    for name in ("split_rsu", "bandwidth_rsu", "cpu"):
                        s = getattr(acts, name)
                        assert np.allclose(a2[..., s], act[..., s][..., k_perm], atol=1e-5), name
                    for name in ("local", "bandwidth_unused"):
                        idx = getattr(acts, name)
                        assert np.allclose(a2[..., idx], act[..., idx], atol=1e-5), name


def test_dagger_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ConfigError, match="ly-dagger trains the set-structured actor: set training.arch=set"):
        make_trainer("ly-dagger", load_config())
    with pytest.raises(ConfigError, match="ly-dagger imitates dpp-opt, which optimises the paper's action"):
        make_trainer("ly-dagger", dagger_cfg(**{"actions.split": "balanced"}))


def test_a_refined_policy_improves_its_proposal_and_reports_it() -> None:
    from agents import config_for, make_policy
    from cosim.config import CosimError
    cfg = load_config().replace(**{"scenario.n_cvs": 4, "scenario.episode_slots": 4})
    with BatchCoSim(config_for("equal", cfg), n_envs=2, seed=0) as sim:
        refined = make_policy("refined5:equal", sim.n_rsus, seed=0, env=sim)
        assert refined.name == "refined5:equal"
        sim.reset(1)
        for _ in range(3):
            sim.step(refined.act_sim(sim))
        stats = refined.optimizer.history
        assert len(stats) == 6 and all(s["objective"] <= s["policy_start"] + 1e-9 for s in stats)
        assert all(s["best_start"] == "policy" and s["n_starts"] == 1 for s in stats)  # nothing but the proposal
        assert refined.summary()["mean_gain_over_proposal"] > 0 and "better on the slot than" in refined.summary_text()
        with pytest.raises(CosimError, match="a refined policy needs the whole slot"):
            refined.act(sim.obs)
    with BatchCoSim(cfg.replace(**{"actions.split": "balanced"}), n_envs=1, seed=0) as sim:
        sim.reset(0)
        with pytest.raises(CosimError, match="refining optimises the paper's action parameterisation"):
            make_policy("refined5:equal", sim.n_rsus, env=sim).act_sim(sim)
