"""The environments as other RL libraries use them: copies, infos, render_mode, the Gymnasium view,
SuperSuit + Stable-Baselines3, TorchRL's PettingZooWrapper, the BenchMARL task, RLlib's wrapper.

The tests marked ``peers`` need the library's extra (``pip install -e ".[peers-sb3]"``, ``peers-benchmarl``,
``peers-rllib``; ``peers`` is the first two); without it they are skipped with the reason shown by ``pytest -rs``.
"""

import copy
import pickle
import warnings

import numpy as np
import pytest

from cosim import CosimError, make_env, make_gym_env
from cosim.env import INFO_SCALARS, INFO_VECTORS

PEERS = "needs the library's peers extra: pip install -e \".[peers-sb3]\" (or peers-benchmarl, peers-rllib)"


def _episode_obs(env, seed=None, slots=3):
    obs, _ = env.reset(seed=seed)
    seen = [np.stack(list(obs.values()))]
    for _ in range(slots):
        obs, *_ = env.step({a: np.zeros(env.action_space(a).shape) for a in env.agents})
        seen.append(np.stack(list(obs.values())))
    return np.stack(seen)


def test_render_mode_attribute_and_bad_value():
    env = make_env(n_cvs=2)
    assert env.render_mode is None and env.render() is None
    with pytest.raises(CosimError, match="render_mode 'human' is not supported"):
        make_env(render_mode="human")
    assert make_gym_env(n_cvs=2).render_mode is None


def test_infos_same_keys_shapes_and_numeric_at_reset_and_step():
    env = make_env(n_cvs=3, seed=0)
    k = env.sim.n_rsus
    _, reset_infos = env.reset(seed=0)
    _, rewards, _, _, step_infos = env.step({a: env.action_space(a).sample() for a in env.agents})
    assert set(reset_infos) == set(step_infos) == set(env.possible_agents)
    for a in env.possible_agents:
        r, s = reset_infos[a], step_infos[a]
        assert list(r) == list(s) == list(INFO_SCALARS) + list(INFO_VECTORS)
        for key in r:
            rv, sv = np.asarray(r[key]), np.asarray(s[key])
            assert rv.shape == sv.shape, key
            assert rv.dtype.kind in "biuf" and sv.dtype.kind in "biuf", (key, rv.dtype, sv.dtype)
        assert np.asarray(s["split"]).shape == (k + 1,) and np.asarray(s["cpu_hz"]).shape == (k,)
        assert r["delay_s"] == 0.0 and r["active"] is True
        assert s["reward"] == pytest.approx(rewards[a])
        assert np.asarray(s["split"]).sum() == pytest.approx(1.0)
    # the per-CV values are the slot's: system cost is the sum of the CVs' costs
    assert sum(step_infos[a]["cost"] for a in env.possible_agents) == pytest.approx(
        step_infos["cv_0"]["system_cost"])
    # strings live apart, in env.modes, and agree with the numeric instr_mode flag
    for a in env.possible_agents:
        for label, instr, share in zip(env.modes[a], step_infos[a]["instr_mode"], step_infos[a]["split"][1:]):
            assert label == ("-" if share == 0 else "InstrT" if instr else "DataT")
    env.reset(seed=1)
    assert env.modes["cv_0"] == ["-"] * k


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda e: pickle.loads(pickle.dumps(e))],
                         ids=["deepcopy", "pickle"])
def test_copies_play_different_episodes_but_seeded_resets_reproduce(clone):
    env = make_env(n_cvs=3, seed=0)
    env.reset(seed=0)
    copies = [clone(env) for _ in range(3)]
    runs = [_episode_obs(c) for c in copies]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not np.allclose(runs[i], runs[j])
    # a seeded reset gives the same episode in the original and in any copy
    np.testing.assert_array_equal(_episode_obs(copies[0], seed=5), _episode_obs(env, seed=5))
    # copying does not disturb the original's own stream
    twin = make_env(n_cvs=3, seed=0)
    twin.reset(seed=0)
    fresh = make_env(n_cvs=3, seed=0)
    fresh.reset(seed=0)
    clone(fresh)
    np.testing.assert_array_equal(_episode_obs(twin), _episode_obs(fresh))


def test_gym_env_passes_gymnasium_checker_and_controls_all_cvs():
    from gymnasium.utils.env_checker import check_env

    env = make_gym_env(n_cvs=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # advisory warnings only: the [-10, 10] action box and unbounded obs
        check_env(env, skip_render_check=True)
    par = make_env(n_cvs=3)
    assert env.observation_space.shape == (3 * par.sim.obs_dim,)
    assert env.action_space.shape == (3 * par.sim.action_dim,)
    obs, info = env.reset(seed=4)
    obs_p, _ = par.reset(seed=4)
    steps, total = 0, 0.0
    while True:
        a = env.action_space.sample()
        obs, reward, term, trunc, step_info = env.step(a)
        _, rewards_p, *_ = par.step({f"cv_{i}": a.reshape(3, -1)[i] for i in range(3)})
        assert reward == pytest.approx(sum(rewards_p.values()))  # R(t) = sum of the r_i
        assert set(step_info) == set(info) and not term
        steps += 1
        total += reward
        if trunc:
            break
    assert steps == 30
    with pytest.raises(CosimError, match="call reset"):
        env.step(env.action_space.sample())
    with pytest.raises(CosimError, match="action has 4 numbers"):
        env.reset(seed=0)
        env.step(np.zeros(4))
    # copies diverge; seeded resets reproduce
    a, b = copy.deepcopy(env), copy.deepcopy(env)
    assert not np.allclose(a.reset()[0], b.reset()[0])
    np.testing.assert_array_equal(a.reset(seed=9)[0], b.reset(seed=9)[0])


@pytest.mark.peers
def test_supersuit_sb3_ppo_trains_and_bootstraps_truncation():
    pytest.importorskip("stable_baselines3", reason=PEERS)
    pytest.importorskip("supersuit", reason=PEERS)
    from stable_baselines3 import PPO

    from cosim.peers.sb3 import SB3Policy, sb3_vec_env

    venv = sb3_vec_env(copies=2, n_cvs=3)
    assert venv.num_envs == 6
    venv.seed(0)
    obs = venv.reset()
    assert not np.allclose(obs[:3], obs[3:])  # the two copies play different episodes
    truncated = []
    for _ in range(30):
        venv.step_async(np.zeros((6,) + venv.action_space.shape, np.float32))
        _, _, dones, infos = venv.step_wait()
        truncated += [i.get("TimeLimit.truncated") for i, d in zip(infos, dones) if d]
    assert truncated == [True] * 6  # the 30th slot is a truncation, so SB3 bootstraps it
    assert all("terminal_observation" in i for i in infos)
    model = PPO("MlpPolicy", venv, n_steps=30, batch_size=90, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=360)
    assert model.num_timesteps >= 360
    raw = SB3Policy(model).act(np.zeros((2, 3, venv.observation_space.shape[0]), np.float32))
    assert raw.shape == (2, 3, venv.action_space.shape[0]) and np.all(np.abs(raw) <= 10)


@pytest.mark.peers
def test_torchrl_pettingzoo_wrapper_rolls_out_with_infos():
    pytest.importorskip("torchrl", reason=PEERS)
    from torchrl.envs import PettingZooWrapper

    env = make_env(n_cvs=3)
    wrapped = PettingZooWrapper(env, return_state=True, categorical_actions=False,
                                group_map={"agents": list(env.possible_agents)}, seed=0)
    td = wrapped.rollout(35, break_when_any_done=False)  # crosses an episode end and an auto-reset
    assert td.batch_size == (35,)
    info = td["next", "agents", "info"]
    assert set(info.keys()) == set(INFO_SCALARS) | set(INFO_VECTORS)
    assert info["split"].shape == (35, 3, env.sim.n_rsus + 1)
    rewards = td["next", "agents", "reward"].squeeze(-1)
    np.testing.assert_allclose(rewards.sum(-1).numpy(), info["system_reward"][:, 0].numpy(), rtol=1e-4, atol=1e-4)
    assert td["next", "agents", "truncated"][29].all() and not td["next", "agents", "truncated"][28].any()


@pytest.mark.peers
def test_benchmarl_task_builds_distinct_copies():
    pytest.importorskip("benchmarl", reason=PEERS)
    from torchrl.envs import SerialEnv

    from cosim.peers.benchmarl_task import CoSimTask, TorchRLPolicy

    task = CoSimTask.COSIM.get_task(config={"n_cvs": 2})
    envs = SerialEnv(2, task.get_env_fun(num_envs=2, continuous_actions=True, seed=3, device="cpu"))
    obs = envs.reset()["agents", "observation"]
    assert obs.shape[:2] == (2, 2) and not np.allclose(obs[0].numpy(), obs[1].numpy())
    again = SerialEnv(2, task.get_env_fun(num_envs=2, continuous_actions=True, seed=3, device="cpu"))
    np.testing.assert_array_equal(again.reset()["agents", "observation"].numpy(), obs.numpy())  # reproducible
    single = task.get_env_fun(num_envs=1, continuous_actions=True, seed=0, device="cpu")()
    assert task.max_steps(single) == 30 and task.state_spec(single)["state"].shape[-1] == 2 * obs.shape[-1]
    policy = TorchRLPolicy(lambda td: td.set(("agents", "action"), td["agents", "observation"][..., :1] * 0))
    assert policy.act(np.zeros((4, 2, obs.shape[-1]))).shape == (4, 2, 1)


@pytest.mark.peers
def test_rllib_wrapper_steps_the_env():
    pytest.importorskip("ray.rllib", reason=PEERS)
    from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv

    env = ParallelPettingZooEnv(make_env(n_cvs=2))
    obs, infos = env.reset(seed=0)
    assert set(obs) == {"cv_0", "cv_1"}
    for _ in range(30):
        obs, rew, term, trunc, infos = env.step({a: np.zeros(env.action_space[a].shape, np.float32) for a in obs})
    assert trunc["__all__"] and not term["__all__"]


def _compare_peers():
    from dtcosim.commands import peers
    return peers


def test_compare_peers_table_ratios_and_t_interval():
    cp = _compare_peers()
    cells = [{"method": "mappo", "cpu_s": 10.0, "cost": c} for c in (1.0, 2.0, 3.0)]
    cells += [{"method": "sb3-ppo", "cpu_s": 25.0, "cost": 1.5}]
    text = cp.table(cells, {"rllib-ppo": "pip install -e \".[peers]\" (missing ray.rllib)"},
                    ["mappo", "sb3-ppo", "rllib-ppo"])
    # mean 2, sd 1, t(0.975, 2) = 4.303: half-width 4.303 / sqrt(3) = 2.484
    assert "| 10.0 | 1.00x | 2.000 ± 2.484 | 3 |" in text
    assert "| 25.0 | 2.50x | 1.500 ± 0.000 | 1 |" in text
    assert "not run: pip install" in text


def test_compare_peers_rejects_unknown_method():
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parent.parent / "scripts" / "compare_peers.py"
    proc = subprocess.run([sys.executable, str(script), "--methods", "mappo,ppo2"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "error: unknown method 'ppo2' in --methods (choose mappo, sb3-ppo, benchmarl-mappo, rllib-ppo)" in proc.stderr


@pytest.mark.peers
def test_sb3_example_runs_as_a_newcomer_would(tmp_path):
    pytest.importorskip("stable_baselines3", reason=PEERS)
    pytest.importorskip("supersuit", reason=PEERS)
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parent.parent / "examples" / "sb3_ppo.py"
    proc = subprocess.run([sys.executable, str(script), "--slots", "60", "--episodes", "1", "--cvs", "2"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert "seeds 10000..10000, 2 CVs" in proc.stdout and "sb3-ppo" in proc.stdout and "equal" in proc.stdout
