"""MAPPO (Ly-DTMPPO / Ly-MAPPO), the training loop and policy checkpoints, through the Python API."""

import csv

import signal

import numpy as np
import pytest
import torch

from agents import ALGORITHMS, make_trainer, train
from agents.checkpoint import load_policy
from agents.common import CHECKPOINT_FILE, METRICS_FILE, POLICY_FILE, fit, load_state_file
from cosim.config import CosimError, load_config
from cosim.env import BatchCoSim
from agents import make_policy
from cosim.runner import run_episodes


def small_cfg(n_cvs=3, n_envs=4, episodes=16, **more):
    sets = {"scenario.n_cvs": n_cvs, "training.n_envs": n_envs, "training.episodes": episodes,
            "training.checkpoint_every": 4, **more}
    return load_config().replace(**sets)


def params(trainer):
    return {**{f"a.{k}": v for k, v in trainer.actor_net.state_dict().items()},
            **{f"c.{k}": v for k, v in trainer.critic.state_dict().items()}, "log_std": trainer.log_std.detach()}


def test_registry_tells_the_two_mappos_apart_by_the_twin_only():
    a, b = ALGORITHMS["ly-dtmppo"], ALGORITHMS["ly-mappo"]
    assert (a.module, a.trainer) == (b.module, b.trainer) and a.twin and not b.twin


def test_short_training_is_finite_and_beats_random(tmp_path):
    cfg = small_cfg(n_cvs=3, n_envs=8, episodes=64)
    res = train("ly-dtmppo", cfg, out=tmp_path, progress=False, tensorboard=True)
    assert res.finished and res.episodes == 64 and len(res.metrics) == 64
    assert all(np.isfinite([m.reward, m.cost]).all() for m in res.metrics)
    assert (tmp_path / "tb").is_dir() and (tmp_path / "curves.png").stat().st_size > 1000
    rows = list(csv.DictReader((tmp_path / METRICS_FILE).open()))
    assert len(rows) == 64 and float(rows[-1]["cost"]) == pytest.approx(res.metrics[-1].cost)
    # Learning happened: the last iteration is better than the first (seeded, so not flaky).
    first, last = res.metrics[:8], res.metrics[-8:]
    assert np.mean([m.reward for m in last]) > np.mean([m.reward for m in first])
    # The trained actor, deterministic, is far better than random raw actions on unseen episodes.
    with BatchCoSim(cfg, n_envs=1, seed=10_000) as sim:
        learned = run_episodes(sim, load_policy(tmp_path / POLICY_FILE, env=sim), 3, seed=10_000, progress=False)
        rand = run_episodes(sim, make_policy("random", sim.n_rsus, seed=0), 3, seed=10_000, progress=False)
    assert learned.summary["mean_reward"] > rand.summary["mean_reward"]
    assert learned.summary["mean_cost"] < rand.summary["mean_cost"]


def test_losses_are_finite_for_every_option_combination():
    cfg = small_cfg(n_cvs=2, n_envs=2, episodes=2, **{
        "training.share_params": False, "training.team_reward": True, "training.value_norm": False,
        "training.adv_norm": False, "training.orthogonal_init": False,
        "training.extra": {"mappo": {"obs_norm": True, "mask_actions": False}}})
    trainer = make_trainer("ly-mappo", cfg)
    try:
        it = trainer.iterate(0)
    finally:
        trainer.sim.close()
    assert len(it.episodes) == 2
    assert all(np.isfinite(v) for v in it.losses.values())
    assert trainer.actor_net.layers[0].weight.shape[0] == 2  # one actor per agent


def test_unknown_mappo_setting_fails_loudly():
    cfg = small_cfg(**{"training.extra": {"mappo": {"obs_nrm": True}}})
    with pytest.raises(CosimError, match="unknown training.extra.mappo key 'obs_nrm'"):
        make_trainer("ly-dtmppo", cfg)


def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path):
    cfg = small_cfg(n_cvs=3, n_envs=4, episodes=16)
    full = make_trainer("ly-dtmppo", cfg)
    res_full = fit(full, tmp_path / "full", progress=False, tensorboard=False)
    full.sim.close()

    part = make_trainer("ly-dtmppo", cfg)
    res_part = fit(part, tmp_path / "part", progress=False, tensorboard=False, stop_after=8)
    part.sim.close()
    assert not res_part.finished and res_part.episodes == 8
    assert load_state_file(tmp_path / "part" / CHECKPOINT_FILE)[0]["episodes"] == 8

    res_resumed = train(None, resume=tmp_path / "part", progress=False, tensorboard=False)
    assert res_resumed.finished and res_resumed.episodes == 16
    assert [vars(m) for m in res_resumed.metrics] == [vars(m) for m in res_full.metrics]
    a, _ = load_state_file(tmp_path / "full" / CHECKPOINT_FILE)
    b, _ = load_state_file(tmp_path / "part" / CHECKPOINT_FILE)
    for key in ("actor", "critic"):
        for k in a["trainer"][key]:
            assert torch.equal(a["trainer"][key][k], b["trainer"][key][k]), k
    assert (tmp_path / "full" / METRICS_FILE).read_text() == (tmp_path / "part" / METRICS_FILE).read_text()


def test_ctrl_c_saves_the_last_boundary_and_resume_finishes_the_same(tmp_path):
    cfg = small_cfg(n_cvs=2, n_envs=2, episodes=8, **{"training.checkpoint_every": 1000})
    ref = make_trainer("ly-dtmppo", cfg)
    res_ref = fit(ref, tmp_path / "ref", progress=False, tensorboard=False)
    ref.sim.close()

    trainer = make_trainer("ly-dtmppo", cfg)
    real_iterate, calls = trainer.iterate, []

    def iterate(first_episode):
        calls.append(first_episode)
        if len(calls) == 3:  # Ctrl-C in the middle of the third iteration, after the env stepped
            trainer.sim.reset()
            raise KeyboardInterrupt
        return real_iterate(first_episode)

    trainer.iterate = iterate
    messages = []
    with pytest.raises(KeyboardInterrupt):
        fit(trainer, tmp_path / "cut", progress=False, tensorboard=False, log=messages.append)
    trainer.sim.close()
    assert "--resume" in messages[0]
    assert load_state_file(tmp_path / "cut" / CHECKPOINT_FILE)[0]["episodes"] == 4
    res = train(None, resume=tmp_path / "cut", progress=False, tensorboard=False)
    assert [vars(m) for m in res.metrics] == [vars(m) for m in res_ref.metrics]


def test_an_interrupt_inside_a_numba_kernel_saves_the_state_too(tmp_path):
    # A signal that lands inside a compiled kernel arrives as a SystemError caused by the interrupt.
    from cosim.signals import Terminated
    trainer = make_trainer("ly-dtmppo", small_cfg(n_cvs=2, n_envs=2, episodes=8))
    real_iterate, calls = trainer.iterate, []

    def iterate(first_episode):
        calls.append(first_episode)
        if len(calls) == 2:
            try:
                raise Terminated(signal.SIGTERM)
            except KeyboardInterrupt as exc:
                raise SystemError("<built-in function kernel> returned a result with an exception set") from exc
        return real_iterate(first_episode)

    trainer.iterate = iterate
    messages = []
    with pytest.raises(Terminated):  # the interrupt itself goes on up, for run_main's line and exit code
        fit(trainer, tmp_path / "cut", progress=False, tensorboard=False, log=messages.append)
    trainer.sim.close()
    assert messages == [f"interrupted: saved the state after 2 episodes; continue with --resume {tmp_path / 'cut'}"]
    assert load_state_file(tmp_path / "cut" / CHECKPOINT_FILE)[0]["episodes"] == 2
    # Any other SystemError is a bug: it is not taken for an interrupt.
    trainer = make_trainer("ly-dtmppo", small_cfg(n_cvs=2, n_envs=2, episodes=8))
    trainer.iterate = lambda first_episode: (_ for _ in ()).throw(SystemError("x"))
    with pytest.raises(SystemError, match="x"):
        fit(trainer, tmp_path / "bug", progress=False, tensorboard=False, log=messages.append)
    trainer.sim.close()
    assert len(messages) == 1


def test_checkpoint_round_trip_gives_the_actor_mean(tmp_path):
    cfg = small_cfg(n_cvs=3, n_envs=2, episodes=2)
    trainer = make_trainer("ly-dtmppo", cfg)
    fit(trainer, tmp_path, progress=False, tensorboard=False)
    obs, _ = trainer.sim.reset(123)
    with torch.no_grad():
        mean = trainer.actor_net(trainer.obs_rms(obs)).numpy()
    policy = load_policy(tmp_path / POLICY_FILE, env=trainer.sim)
    trainer.sim.close()
    assert policy.name == "ly-dtmppo" and policy.meta["n_cvs"] == 3 and policy.meta["twin"] is True
    np.testing.assert_allclose(policy.act(obs), np.clip(mean, -10, 10), rtol=1e-5, atol=1e-5)
    assert load_policy(tmp_path).meta == policy.meta  # a run folder works too
    stochastic = policy.act(obs, deterministic=False)
    assert stochastic.shape == mean.shape and not np.allclose(stochastic, policy.act(obs))


def test_ly_mappo_policy_ignores_the_twin_block(tmp_path):
    cfg = small_cfg(n_cvs=2, n_envs=2, episodes=2)
    train("ly-mappo", cfg, out=tmp_path, progress=False, tensorboard=False)
    with BatchCoSim(cfg, n_envs=2, seed=5) as sim:  # twin enabled: the DT block is filled in
        obs, _ = sim.reset()
        policy = load_policy(tmp_path / POLICY_FILE, env=sim)
        noisy = obs.copy()
        noisy[..., sim.layout.dt_slice] += 3.0
    assert policy.meta["twin"] is False
    np.testing.assert_array_equal(policy.act(obs), policy.act(noisy))


def test_checkpoint_for_another_scenario_size_is_one_clear_error(tmp_path):
    cfg = small_cfg(n_cvs=3, n_envs=2, episodes=2)
    train("ly-dtmppo", cfg, out=tmp_path, progress=False, tensorboard=False)
    with BatchCoSim(cfg.replace(**{"scenario.n_cvs": 2}), n_envs=1) as sim:
        with pytest.raises(CosimError, match=r"has 3 CVs x 34 obs, env has 2 CVs x 34"):
            load_policy(tmp_path / POLICY_FILE, env=sim)
    with pytest.raises(CosimError, match="policy checkpoint not found"):
        load_policy(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CosimError, match="is not a policy checkpoint"):
        load_policy(bad)
    # No temp files are left behind by the atomic writes.
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != ".dtcosim-outputs"]
