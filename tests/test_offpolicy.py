"""The off-policy baselines (Ly-MADDPG, Ly-MATD3, Ly-MASAC) through the Python API, with tiny budgets."""

import numpy as np
import pytest
import torch

from agents import ALGORITHMS, make_trainer, train
from agents.checkpoint import load_policy, save_policy
from agents.common import CHECKPOINT_FILE, METRICS_FILE, POLICY_FILE, fit, load_state_file
from agents.offpolicy import QCritic, ReplayBuffer
from cosim.config import CosimError, load_config
from cosim.env import ACTION_BOUND, BatchCoSim
from agents import make_policy
from cosim.runner import run_episodes

OFFPOLICY = ["ly-maddpg", "ly-matd3", "ly-masac"]


def tiny_cfg(n_cvs=2, n_envs=2, slots=10, episodes=8, warmup=40, **more):
    """2 CVs, 10-slot episodes, 16-wide networks, learning from the third iteration on."""
    extra = {"offpolicy": {"buffer_size": 400, "warmup_slots": warmup, "updates_per_step": 1}}
    for algo, settings in more.pop("extra", {}).items():
        extra.setdefault(algo, {}).update(settings)
    sets = {"scenario.n_cvs": n_cvs, "scenario.episode_slots": slots, "training.n_envs": n_envs,
            "training.episodes": episodes, "training.hidden": 16, "training.batch_size": 32,
            "training.checkpoint_every": 2, "training.extra": extra, **more}
    return load_config().replace(**sets)


def nested_equal(a, b, path="state"):
    """Assert two checkpoint states are identical (tensors bit for bit)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            nested_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            nested_equal(x, y, f"{path}.{i}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), path
    else:
        assert a == b, path


def test_registered_with_the_twin():
    for algo in OFFPOLICY:
        spec = ALGORITHMS[algo]
        assert spec.twin and spec.trainer_class().__name__ == spec.trainer


@pytest.mark.parametrize("algo", OFFPOLICY)
@pytest.mark.parametrize("team", [False, True])
def test_short_training_gives_finite_losses(algo, team):
    cfg = tiny_cfg(**{"training.team_reward": team, "training.share_params": not team})
    trainer = make_trainer(algo, cfg)
    try:
        its = [trainer.iterate(2 * k) for k in range(3)]
    finally:
        trainer.sim.close()
    assert "critic_loss" not in its[0].losses          # warm-up: random actions, no updates yet
    assert trainer.updates == 11 and trainer.buffer.size == 60  # from the last warm-up slot on
    losses = its[-1].losses
    assert {"critic_loss", "actor_loss", "q"} <= set(losses)
    assert all(np.isfinite(v) for v in losses.values())
    assert all(np.isfinite([m.reward, m.cost]).all() for it in its for m in it.episodes)


@pytest.mark.parametrize("algo", OFFPOLICY)
def test_checkpoint_loads_and_acts_as_the_trainer(algo, tmp_path):
    cfg = tiny_cfg()
    trainer = make_trainer(algo, cfg)
    try:
        for k in range(3):
            trainer.iterate(2 * k)
        obs, _ = trainer.sim.reset()
        save_policy(tmp_path / POLICY_FILE, *trainer.actor(trainer.state_dict()), algo=algo, cfg=trainer.cfg,
                    episodes=6)
        policy = load_policy(tmp_path / POLICY_FILE, env=trainer.sim)
        with torch.no_grad():
            o = trainer.obs_norm(obs)
            if algo == "ly-masac":  # the deployed actor is the squashed mean, 10 tanh(mean)
                want = ACTION_BOUND * torch.tanh(trainer._dist(o)[0])
            else:
                want = ACTION_BOUND * trainer._mu(trainer.actor_net, o)[1]
    finally:
        trainer.sim.close()
    raw = policy.act(obs)
    assert raw.shape == obs.shape[:-1] + (trainer.A,) and np.abs(raw).max() <= ACTION_BOUND
    np.testing.assert_allclose(raw, want.numpy(), atol=1e-4)
    kind = "squashed" if algo == "ly-masac" else "deterministic"
    assert policy.spec.kind == kind and policy.meta["algo"] == algo and policy.meta["twin"]


@pytest.mark.parametrize("algo", OFFPOLICY)
def test_resume_reproduces_an_uninterrupted_run_exactly(algo, tmp_path):
    cfg = tiny_cfg(episodes=10)
    full = make_trainer(algo, cfg)
    res_full = fit(full, tmp_path / "full", progress=False, tensorboard=False)
    full.sim.close()
    # Interrupted after 3 iterations (the warm-up ended after 2): the buffer, the counters and
    # every network, target and optimiser must come back from the checkpoint.
    part = make_trainer(algo, cfg)
    res_part = fit(part, tmp_path / "part", progress=False, tensorboard=False, stop_after=6)
    part.sim.close()
    assert not res_part.finished and res_part.episodes == 6
    saved, _ = load_state_file(tmp_path / "part" / CHECKPOINT_FILE)
    assert saved["trainer"]["buffer"]["size"] == 60 and saved["trainer"]["updates"] == 11

    res = train(None, resume=tmp_path / "part", progress=False, tensorboard=False)
    assert res.finished and res.episodes == 10
    assert [vars(m) for m in res.metrics] == [vars(m) for m in res_full.metrics]
    a, _ = load_state_file(tmp_path / "full" / CHECKPOINT_FILE)
    b, _ = load_state_file(tmp_path / "part" / CHECKPOINT_FILE)
    nested_equal(a["trainer"], b["trainer"])
    assert (tmp_path / "full" / METRICS_FILE).read_text() == (tmp_path / "part" / METRICS_FILE).read_text()


def test_matd3_smooths_targets_and_delays_the_actor():
    cfg = tiny_cfg(warmup=40, extra={"matd3": {"policy_delay": 3, "target_noise": 0.2, "noise_clip": 0.3}})
    trainer = make_trainer("ly-matd3", cfg)
    try:
        trainer.iterate(0)
        trainer.iterate(2)  # 40 warm-up transitions, then one update at the last warm-up slot
        assert trainer.updates == 1 and trainer.actor_updates == 0
        trainer.updates = 0  # count from here
        actor_before = {k: v.clone() for k, v in trainer.actor_net.state_dict().items()}
        trainer._update()
        trainer._update()  # two critic updates, no actor update yet
        assert trainer.updates == 2 and trainer.actor_updates == 0
        assert all(torch.equal(v, trainer.actor_net.state_dict()[k]) for k, v in actor_before.items())
        trainer._update()  # the third moves the actor and the targets
        assert trainer.actor_updates == 1
        assert any(not torch.equal(v, trainer.actor_net.state_dict()[k]) for k, v in actor_before.items())
        trainer.iterate(4)
        assert trainer.actor_updates == trainer.updates // 3
        # Target policy smoothing: noisy, within noise_clip of the target actor, inside the bound.
        o = trainer.obs_norm(trainer.buffer.sample(64)["next_obs"])
        with torch.no_grad():
            clean = trainer._mu(trainer.actor_target, o)[1]
            smooth = trainer._target_actions(o)
    finally:
        trainer.sim.close()
    diff = (smooth - clean).abs()
    assert diff.max() <= 0.3 + 1e-6 and diff.mean() > 0.05 and smooth.abs().max() <= 1.0


def test_masac_tunes_its_temperature():
    cfg = tiny_cfg(extra={"masac": {"alpha_init": 0.05, "alpha_lr": 0.01}})
    trainer = make_trainer("ly-masac", cfg)
    fixed = make_trainer("ly-masac", tiny_cfg(extra={"masac": {"alpha_init": 0.05, "autotune": False}}))
    try:
        for k in range(4):
            it = trainer.iterate(2 * k)
            fixed.iterate(2 * k)
    finally:
        trainer.sim.close()
        fixed.sim.close()
    assert trainer.target_entropy == -trainer.A
    # The untrained policy's entropy is far above -A, so alpha falls; without autotune it stays.
    assert it.losses["entropy"] > trainer.target_entropy
    assert trainer.alpha < 0.05 * 0.9 and it.losses["alpha"] == pytest.approx(trainer.alpha)
    assert fixed.alpha == pytest.approx(0.05)


def test_unknown_or_malformed_settings_fail_loudly():
    for extra, message in ((({"offpolicy": {"buffer_sise": 10}}), "unknown training.extra.offpolicy key 'buffer_sise'"),
                           (({"maddpg": {"policy_delay": 2}}), "unknown training.extra.maddpg key 'policy_delay'"),
                           (({"offpolicy": {"tau": "fast"}}), "training.extra.offpolicy.tau: expected a number"),
                           (({"offpolicy": {"buffer_size": 8}}), "buffer_size: 8 is below training.batch_size")):
        with pytest.raises(CosimError, match=message):
            make_trainer("ly-maddpg", tiny_cfg(**{"training.extra": extra}))


def test_replay_buffer_is_a_ring_and_round_trips():
    buf = ReplayBuffer(5, {"x": (2,)})
    for k in range(3):
        buf.add(x=np.full((2, 2), k))
    assert buf.size == 5 and buf.ptr == 1 and buf.data["x"][0, 0] == 2 and buf.data["x"][1, 0] == 0
    other = ReplayBuffer(5, {"x": (2,)})
    other.load_state_dict(buf.state_dict())
    assert torch.equal(other.data["x"], buf.data["x"]) and (other.ptr, other.size) == (1, 5)
    state = buf.state_dict()
    buf.add(x=np.full((1, 2), 9))
    assert state["data"]["x"][1, 0] == 0  # a copy, not a view


def test_critic_own_action_is_agent_is_joint_action():
    """Q_i(s, a, own) equals Q_i on the joint action with agent i's entry replaced."""
    torch.manual_seed(0)
    q = QCritic(3, 7, 2, 16, True)
    s, a, own = torch.randn(4, 7), torch.rand(4, 3, 2), torch.rand(4, 3, 2)
    got = q(s, a, own=own)
    for i in range(3):
        joint = a.clone()
        joint[:, i] = own[:, i]
        assert torch.allclose(got[:, i], q(s, joint)[:, i], atol=1e-6)


def test_masac_learns_in_a_short_run(tmp_path):
    """The cheapest reliable learner on a small budget (3 CVs, 112 episodes, ~7 s): its deterministic
    actor beats the untrained one and the random policy on unseen episodes, and training rewards rise.
    (Ly-MADDPG is cheaper per update but swings too much on budgets this short.)"""
    cfg = load_config().replace(**{
        "scenario.n_cvs": 3, "training.n_envs": 8, "training.hidden": 64, "training.batch_size": 128,
        "training.extra": {"offpolicy": {"warmup_slots": 480, "updates_per_step": 2}}})
    trainer = make_trainer("ly-masac", cfg)

    def evaluate(policy):
        with BatchCoSim(cfg, n_envs=4, seed=10_000) as sim:
            if policy is trainer:
                save_policy(tmp_path / POLICY_FILE, *trainer.actor(trainer.state_dict()), algo="ly-masac",
                            cfg=trainer.cfg, episodes=0)
                policy = load_policy(tmp_path / POLICY_FILE, env=sim)
            return run_episodes(sim, policy, 4, seed=10_000, progress=False).summary["mean_reward"]

    try:
        untrained = evaluate(trainer)
        rewards = [np.mean([m.reward for m in trainer.iterate(8 * k).episodes]) for k in range(14)]
        trained = evaluate(trainer)
    finally:
        trainer.sim.close()
    random_ = evaluate(make_policy("random", 3, seed=0))
    # Rewards are negative (here about -4.2 trained, -14 untrained, -870 random).
    assert trained > 0.7 * untrained and untrained > 0.1 * random_
    assert np.mean(rewards[-2:]) > 0.7 * np.mean(rewards[:2])  # the last episodes vs the warm-up's
