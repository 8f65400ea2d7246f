"""Long-horizon evaluation (evaluate.py --slots) and training from drawn energy queues."""

import numpy as np
import pytest

from agents import make_policy, make_trainer
from cosim.config import CosimError, load_config
from cosim.env import BatchCoSim
from cosim.evaluation import evaluate_long_horizon, long_horizon_table


def test_long_horizon_numbers_follow_the_energy_queue():
    cfg = load_config().replace(**{"scenario.n_cvs": 3})
    pols = {n: (lambda sim, n=n: make_policy(n, sim.n_rsus, env=sim)) for n in ("local", "equal")}
    summaries, long = evaluate_long_horizon(cfg, pols, episodes=2, slots=40)
    loc, eq = long["local"], long["equal"]
    assert loc.slots == 40 and loc.episodes == 2 and len(loc.y_trace_j) == 40
    assert summaries["local"]["slots"] == 80  # the usual summary comes along, over 40-slot episodes
    # All-local spends ~220 J per slot against a 10 J budget: Y never empties, so it grows by the
    # overspend every slot and its slope over the last half is energy - budget.
    assert loc.energy_last_half_j > 150 and loc.energy_vs_budget == pytest.approx(loc.energy_last_half_j / 10 - 1)
    assert loc.y_growth_j_per_slot == pytest.approx(loc.energy_last_half_j - loc.energy_budget_j, rel=0.1)
    assert loc.y_final_j == pytest.approx(loc.y_trace_j[-1]) and loc.y_final_j > 30 * 150
    assert loc.cost_last_half > 5 * eq.cost_last_half
    assert "energy/CV last half J" in long_horizon_table(long)
    # Y levelled off: its last-half growth is at most 2 % of the budget per slot; all-local's is not.
    assert not loc.y_levelled and "Y levelled" in long_horizon_table(long)
    from cosim.evaluation import _long_horizon_summary
    flat = {k: np.ones((1, 10)) for k in ("energy", "active", "cost", "delay", "misses", "q_rsu", "q_loc")}
    rising = _long_horizon_summary("x", 10, 10.0, {**flat, "y": np.arange(10.0)[None] * 0.3}, [0.0])
    level = _long_horizon_summary("x", 10, 10.0, {**flat, "y": np.full((1, 10), 500.0)}, [0.0])
    assert (rising.y_levelled, level.y_levelled) == (False, True)


def test_long_horizon_matches_a_direct_run():
    cfg = load_config().replace(**{"scenario.n_cvs": 2, "scenario.episode_slots": 12})
    _, long = evaluate_long_horizon(cfg, {"equal": lambda sim: make_policy("equal", sim.n_rsus, env=sim)},
                                    episodes=1, slots=12, seed=77)
    with BatchCoSim(cfg, n_envs=1, seed=77) as sim:
        pol = make_policy("equal", sim.n_rsus, env=sim)
        obs, _ = sim.reset(77)
        energy, cost = [], []
        for _ in range(12):
            out = sim.step(pol.act(obs))
            obs = out.obs
            energy.append(out.result.energy[0].sum() / out.result.active[0].sum())
            cost.append(out.result.system_cost[0])
        y_end = sim.queues.energy[0].mean()
    assert long["equal"].energy_last_half_j == pytest.approx(np.mean(energy[6:]))
    assert long["equal"].cost_last_half == pytest.approx(np.mean(cost[6:]))
    assert long["equal"].cost_all == pytest.approx(np.mean(cost))
    assert long["equal"].y_final_j == pytest.approx(y_end)


def test_long_horizon_rejects_a_too_short_episode():
    with pytest.raises(CosimError, match="at least 2 slots"):
        evaluate_long_horizon(load_config(), {}, episodes=1, slots=1)


def test_training_episodes_start_from_a_drawn_energy_queue():
    cfg = load_config().replace(**{"scenario.n_cvs": 3, "training.n_envs": 8,
                                   "training.initial_energy_queue": [100.0, 300.0]})
    tr = make_trainer("ly-dtmppo", cfg)
    try:
        obs, _ = tr.sim.reset()
        y = tr.sim.queues.energy
        assert y.shape == (8, 3) and np.all(y >= 100) and np.all(y <= 300) and y.std() > 10
        # The actor sees it (Y / E_ref in its queue block).
        np.testing.assert_allclose(obs[..., tr.sim.layout["queues"]][..., 1], y / tr.sim.params.E_ref)
    finally:
        tr.sim.close()
    # Evaluation simulators start empty whatever the training config says, and the default draws
    # nothing: the streams (and every number) are those of a simulator without the option.
    with BatchCoSim(cfg, n_envs=2, seed=5) as sim:
        sim.reset(5)
        assert np.all(sim.queues.energy == 0)
    a = BatchCoSim(load_config(), n_envs=2, seed=5, initial_energy_queue=(0.0, 0.0))
    b = BatchCoSim(load_config(), n_envs=2, seed=5)
    np.testing.assert_array_equal(a.reset(5)[0], b.reset(5)[0])
    a.close()
    b.close()


def test_initial_energy_queue_is_range_checked():
    from cosim.config import ConfigError
    with pytest.raises(ConfigError, match="training.initial_energy_queue: lower bound 5.0 exceeds upper bound 1.0"):
        load_config().replace(**{"training.initial_energy_queue": [5.0, 1.0]})
