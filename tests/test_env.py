"""Environments: PettingZoo conformance, determinism, batch equivalence, twin, mobility."""

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test, parallel_seed_test

from cosim import CosimError, make_batch_env, make_env
from cosim.mobility import AnalyticMobility, lane_centres
from agents import make_policy


def test_parallel_api_and_seed():
    env = make_env(seed=0)
    parallel_api_test(env, num_cycles=35)
    parallel_seed_test(lambda: make_env(n_cvs=3))
    env.close()
    env.close()  # harmless twice


def test_spaces_and_state():
    env = make_env(n_cvs=4)
    obs, _ = env.reset(seed=3)
    assert env.possible_agents == ["cv_0", "cv_1", "cv_2", "cv_3"]
    assert env.observation_space("cv_0") is env.observation_space("cv_0")
    assert env.action_space("cv_1").shape == (11,)
    assert env.state().shape == env.state_space.shape == (4 * obs["cv_0"].shape[0],)
    assert all(o.dtype == np.float32 for o in obs.values())


def test_episode_length_and_reward_split():
    env = make_env(seed=1)
    env.reset(seed=1)
    steps = 0
    while env.agents:
        actions = {a: env.action_space(a).sample() for a in env.agents}
        _, rewards, _, truncs, infos = env.step(actions)
        steps += 1
        assert sum(rewards.values()) == pytest.approx(infos["cv_0"]["system_reward"], rel=1e-9, abs=1e-9)
        assert {"delay_s", "energy_j", "cost", "instr_mode", "split", "deadline_miss"} <= set(infos["cv_0"])
    assert steps == 30 and all(truncs.values())
    with pytest.raises(CosimError, match="call reset"):
        env.step({})


def _rollout(sim, seed, policy="equal", slots=30):
    pol = make_policy(policy, sim.n_rsus, seed=seed)
    obs, _ = sim.reset(seed)
    costs = []
    for _ in range(slots):
        out = sim.step(pol.act(obs))
        obs = out.obs
        costs.append(out.result.system_cost.copy())
    return np.array(costs)


def test_same_seed_same_numbers():
    a = _rollout(make_batch_env(n_envs=3), seed=7, policy="random")
    b = _rollout(make_batch_env(n_envs=3), seed=7, policy="random")
    c = _rollout(make_batch_env(n_envs=3), seed=8, policy="random")
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_batch_rows_are_independent_episodes():
    costs = _rollout(make_batch_env(n_envs=4), seed=2)
    assert costs.shape == (30, 4)
    assert len({tuple(costs[:, e]) for e in range(4)}) == 4


def test_twin_off_zeros_only_the_dt_part():
    on, off = make_batch_env(n_envs=2, twin=True), make_batch_env(n_envs=2, twin=False)
    pol = make_policy("nearest", 3)
    o_on, s_on = on.reset(5)
    o_off, s_off = off.reset(5)
    for _ in range(5):  # build some RSU backlog first
        a = pol.act(o_on)
        o_on, s_on = on.step(a).obs, on.state
        o_off, s_off = off.step(a).obs, off.state
    dt = on.layout.dt_slice
    assert np.all(o_off[..., dt] == 0)
    np.testing.assert_array_equal(o_on[..., : dt.start], o_off[..., : dt.start])
    np.testing.assert_array_equal(s_on, s_off)  # the critic always sees the twin
    assert np.any(o_on[..., on.layout["dt_distance_next"]] > 0)


def test_twin_staleness_and_sync_error(cfg):
    stale = make_batch_env(cfg.replace(**{"twin.staleness": 2}), n_envs=1)
    fresh = make_batch_env(n_envs=1)
    pol = make_policy("nearest", 3)
    seen, true = [], []
    o_s, _ = stale.reset(4)
    o_f, _ = fresh.reset(4)
    for _ in range(6):
        seen.append(o_s[..., stale.layout.dt_slice].copy())
        true.append(o_f[..., fresh.layout.dt_slice].copy())
        a = pol.act(o_f)
        o_s, o_f = stale.step(a).obs, fresh.step(a).obs
    for t in range(2, 6):
        np.testing.assert_allclose(seen[t], true[t - 2], rtol=1e-6)
    noisy = make_batch_env(cfg.replace(**{"twin.sync_error": 0.1}), n_envs=1)
    o_n, _ = noisy.reset(4)
    o_f, _ = make_batch_env(n_envs=1).reset(4)
    dt = noisy.layout["dt_distance_next"]
    assert not np.allclose(o_n[..., dt], o_f[..., dt])
    np.testing.assert_array_equal(o_n[..., : noisy.layout.dt_slice.start], o_f[..., : noisy.layout.dt_slice.start])


def test_analytic_mobility_wraps_and_turns(cfg):
    mob = AnalyticMobility(cfg, n_envs=2, n_cvs=6)
    s0 = mob.reset_batch(3)
    assert np.all((s0.x >= 0) & (s0.x <= 700))
    assert set(np.unique(s0.y)) <= set(lane_centres(cfg))
    assert np.all((s0.speed >= 12) & (s0.speed <= 16))
    for _ in range(100):
        s = mob.advance_batch(1.0)
        assert np.all((s.x >= 0) & (s.x <= 700))
    east = s0.lane < 2
    np.testing.assert_array_equal(s.heading, np.where(east, 0.0, np.pi))  # wrap keeps the lane
    turn = AnalyticMobility(cfg.replace(**{"scenario.boundary": "uturn"}), n_envs=1, n_cvs=1)
    turn.reset_batch(0)
    turn.x[:], turn.speed[:], turn.lane[:] = 695.0, 10.0, 1
    s = turn.advance_batch(1.0)
    assert s.x[0, 0] == pytest.approx(695.0) and s.lane[0, 0] == 2 and s.heading[0, 0] == pytest.approx(np.pi)


def test_reference_policy_costs_are_ordered():
    """All-local overloads the CVs; equal sharing over RSUs does better than the nearest RSU alone."""
    costs = {p: _rollout(make_batch_env(n_envs=4), seed=11, policy=p).mean() for p in
             ("local", "nearest", "equal")}
    assert costs["equal"] < costs["nearest"] < costs["local"]


def test_unknown_policy_and_backend():
    with pytest.raises(CosimError, match="unknown policy 'greedy'"):
        make_policy("greedy", 3)
    with pytest.raises(CosimError, match="checkpoint not found"):
        make_policy("runs/none/model.safetensors", 3)
    with pytest.raises(CosimError, match=r"need a backend with a GUI \(sumo\), not 'analytic'"):
        make_batch_env(n_envs=1, gui=True)
    with pytest.raises(CosimError, match="backend: unknown backend 'carla' \\(choose analytic, sumo"):
        make_batch_env(n_envs=1, backend="carla")


def test_env_records_its_backend_and_rsus(cfg):
    from cosim.backends import BACKENDS
    from cosim.mobility import BatchMobility
    for name, spec in BACKENDS.items():
        assert issubclass(spec.load(), BatchMobility), name
    env = make_env(backend="analytic")
    assert env.cfg.backend == "analytic" and env.cfg.scenario.rsus == cfg.scenario.rsus
    env.close()


def test_parallel_api_and_seed_on_sumo():
    env = make_env(backend="sumo", seed=0)
    parallel_api_test(env, num_cycles=35)
    env.close()
    env.close()
    parallel_seed_test(lambda: make_env(backend="sumo", n_cvs=3))


def test_sumo_batch_env_matches_config_switch(cfg):
    """backend: sumo in the config picks SUMO everywhere; same seed, same numbers."""
    sumo_cfg = cfg.replace(backend="sumo")
    a = _rollout(make_batch_env(sumo_cfg, n_envs=2), seed=3, slots=10)
    b = _rollout(make_batch_env(sumo_cfg, n_envs=2), seed=3, slots=10)
    np.testing.assert_array_equal(a, b)
    sim = make_batch_env(sumo_cfg, n_envs=1)
    assert sim.backend == "sumo" and type(sim.mobility).__name__ == "SumoBatchMobility"
    sim.close()
