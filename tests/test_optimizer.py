"""The per-slot drift-plus-penalty optimiser (cosim.optimizer, policy 'dpp-opt')."""

import numpy as np
import pytest

from cosim import model as M
from cosim.config import CosimError
from cosim.env import BatchCoSim
from cosim.optimizer import DppOptimizer, SlotProblem, raw_from_decision
from agents import make_policy
from cosim.runner import run_episodes

REFS = ("local", "nearest", "equal")


def _fill_queues(sim, rng, scale=1.0):
    """Random non-empty queues and Little's-law windows (W_ref / E_ref units)."""
    p, q = sim.params, sim.queues
    q.q_loc[:] = rng.uniform(0, 2 * scale, q.q_loc.shape) * p.W_ref
    q.q_rsu[:] = rng.uniform(0, 3 * scale, q.q_rsu.shape) * p.W_ref
    q.energy[:] = rng.uniform(0, 2 * scale, q.energy.shape) * p.E_ref
    q.hist_q_loc[:] = rng.uniform(0, 1, q.hist_q_loc.shape) * p.W_ref
    q.hist_lam_loc[:] = rng.uniform(0, 1, q.hist_lam_loc.shape) * p.W_ref
    q.hist_q_rsu[:] = rng.uniform(0, 2, q.hist_q_rsu.shape) * p.W_ref
    q.hist_lam_rsu[:] = rng.uniform(0, 2, q.hist_lam_rsu.shape) * p.W_ref
    q.t = int(rng.integers(3, 40))


def _rewards(sim, raws):
    """R(t) of several raw actions (n, E, I, 3K+2) on the simulator's current slot, without stepping."""
    out = []
    for raw in raws:
        dec = sim.project(raw)
        res, _ = M.slot(sim.params, sim.queues, sim.tasks, sim.cv_cpu, sim.spec_eff, dec, sim.mob.active)
        out.append(res.reward)
    return np.array(out)  # (n, E)


def _check_feasible(p, dec, covered, active):
    split, b, w, F = dec.split, dec.bandwidth, dec.cpu_request, dec.cpu
    assert np.all(split >= 0) and np.allclose(split.sum(-1), 1.0)               # C5
    assert np.all(split[..., 1:][~covered] == 0)                                 # coverage
    assert np.all(split[~active][..., 0] == 1.0)                                 # inactive: nothing offloaded
    kept = split[split > 0]
    assert np.all(kept >= p.min_split_share - 1e-12)
    used = split[..., 1:] > 0
    assert np.all(b >= 0) and np.all(b.sum(-1) <= 1 + 1e-9)                    # C4
    assert np.all(b[~used] == 0) and np.all(b[used] >= p.min_bandwidth_share - 1e-12)
    assert np.all((w >= 0) & (w <= 1))
    assert np.all(F >= 0) and np.all(F.sum(-2) <= p.rsu_capacity * (1 + 1e-9))  # C6
    assert np.all(F[~used] == 0) and np.all(F[used] >= p.min_rsu_share * (1 - 1e-9))


# ---------------------------------------------------------------------------

def test_raw_from_decision_round_trip():
    sim = BatchCoSim(n_envs=1, seed=0)
    sim.reset(0)
    p, K = sim.params, sim.n_rsus
    rng = np.random.default_rng(0)
    shape = (64, 5)
    covered = rng.random(shape + (K,)) < 0.6
    active = rng.random(shape) < 0.9
    # Decisions from the projection of random raw actions (the projection's image), and
    # some with exact zeros and all-bandwidth links.
    raw = rng.normal(0, 4, shape + (3 * K + 2,))
    raw[:8, :, K + 1 + K] = -50.0  # no unused bandwidth
    raw[8:16, :, 1:K + 1] = -50.0  # all local
    dec = M.project(p, raw, covered, active)
    back = M.project(p, raw_from_decision(p, dec.split, dec.bandwidth, dec.cpu_request), covered, active)
    for name in ("split", "bandwidth", "cpu_request", "cpu"):
        np.testing.assert_allclose(getattr(back, name), getattr(dec, name), rtol=1e-9, atol=1e-12, err_msg=name)
    assert np.array_equal(back.split > 0, dec.split > 0)

    # The optimiser's own parameterisation (CPU from a per-RSU softmax) round-trips too.
    cov1, act1 = covered[:1], active[:1]
    prob = SlotProblem(p, sim.queues, sim.tasks, sim.cv_cpu, sim.spec_eff, cov1, act1)
    x = rng.uniform(-prob.bound, prob.bound, (32, prob.d))
    d2 = prob.decode(prob.theta(x))
    c32, a32 = np.broadcast_to(cov1, (32, 5, K)), np.broadcast_to(act1, (32, 5))
    back2 = M.project(p, raw_from_decision(p, d2.split, d2.bandwidth, d2.cpu_request), c32, a32)
    for name in ("split", "bandwidth", "cpu_request", "cpu"):
        np.testing.assert_allclose(getattr(back2, name), getattr(d2, name), rtol=1e-9, atol=1e-12, err_msg=name)
    with pytest.raises(ValueError):
        raw_from_decision(p, dec.split[..., :2], dec.bandwidth, dec.cpu_request)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beats_reference_policies_and_feasible(seed):
    rng = np.random.default_rng(100 + seed)
    sim = BatchCoSim(n_envs=1, seed=seed)
    sim.reset(seed)
    opt = DppOptimizer(sim, seed=seed)
    refs = [make_policy(n, sim.n_rsus, 0) for n in REFS]
    for k in range(3):  # a few slots, with empty and then non-empty queues
        if k:
            _fill_queues(sim, rng, scale=k)
        raw = opt.act_sim(sim)
        assert raw.shape == (1, sim.n_cvs, sim.action_dim)
        r = _rewards(sim, [raw] + [ref.act(sim.obs) for ref in refs])[:, 0]
        assert r[0] >= r[1:].max() - 1e-9 * abs(r[0]), (k, r)
        st = opt.last_stats[0]
        assert st["reward"] == pytest.approx(r[0], rel=1e-9)
        assert st["roundtrip_error"] < 1e-9
        _check_feasible(sim.params, sim.project(raw), sim.covered, sim.mob.active)
        sim.step(raw)
    # It is a real optimiser: clearly better than the best reference on these slots.
    assert np.mean([s["gain_over_references"] for s in opt.history]) > 0.02


def test_batch_inactive_and_uncovered_cvs():
    sim = BatchCoSim(n_envs=2, seed=5)
    sim.reset(5)
    _fill_queues(sim, np.random.default_rng(5))
    # Env 0: CV 1 inactive, CV 2 covered by no RSU; env 1: every CV out of coverage but CV 0.
    sim.mob.active[0, 1] = False
    sim.covered[0, 1] = False
    sim.covered[0, 2] = False
    sim.covered[1, 1:] = False
    opt = DppOptimizer(sim, seed=0)
    raw = opt.act_sim(sim)
    assert raw.shape == (2, sim.n_cvs, sim.action_dim) and np.all(np.isfinite(raw))
    assert len(opt.last_stats) == 2 and [s["env"] for s in opt.last_stats] == [0, 1]
    dec = sim.project(raw)
    _check_feasible(sim.params, dec, sim.covered, sim.mob.active)
    assert dec.split[0, 1, 0] == 1.0 and dec.split[0, 2, 0] == 1.0
    assert np.all(dec.split[1, 1:, 0] == 1.0)
    refs = [make_policy(n, sim.n_rsus, 0) for n in REFS]
    r = _rewards(sim, [raw] + [ref.act(sim.obs) for ref in refs])
    assert np.all(r[0] >= r[1:].max(axis=0) - 1e-9 * np.abs(r[0]))
    res, _ = M.slot(sim.params, sim.queues, sim.tasks, sim.cv_cpu, sim.spec_eff, dec, sim.mob.active)
    assert res.cost[0, 1] == 0.0 and res.energy[0, 1] == 0.0
    np.testing.assert_allclose([s["reward"] for s in opt.last_stats], res.reward, rtol=1e-9)

    # Nothing to optimise at all (no coverage anywhere): all local, still a valid action.
    sim.covered[:] = False
    raw = opt.act_sim(sim)
    assert opt.last_stats[0]["dim"] == 0 and np.all(sim.project(raw).split[..., 0] == 1.0)


def _short_sim(seed=0, **extra):
    from cosim.config import load_config
    cfg = load_config().replace(**{"scenario.episode_slots": 8, **extra})
    return BatchCoSim(cfg, n_envs=1, seed=seed)


def test_episode_beats_equal_and_is_deterministic():
    results = []
    for _ in range(2):
        sim = _short_sim()
        pol = make_policy("dpp-opt", sim.n_rsus, 0, sim)
        assert pol.name == "dpp-opt"
        res = run_episodes(sim, pol, episodes=1, seed=0, progress=False)
        results.append((res.summary, [s["objective"] for s in pol.history]))
    (s1, h1), (s2, h2) = results
    assert h1 == h2 and s1["mean_cost"] == s2["mean_cost"] and s1["mean_reward"] == s2["mean_reward"]
    sim = _short_sim()
    eq = run_episodes(sim, make_policy("equal", sim.n_rsus, 0, sim), episodes=1, seed=0, progress=False)
    assert s1["mean_cost"] < eq.summary["mean_cost"]
    assert s1["mean_reward"] > eq.summary["mean_reward"]
    summ = pol.summary()
    assert summ["slots"] == 8 and summ["fallbacks"] >= 0 and np.isfinite(summ["median_start_gap"])
    assert "median relative gap" in pol.summary_text()


def test_options_from_config():
    sim = _short_sim(**{"training.extra": {"dpp_opt": {"random_starts": 1, "iterations": 5}}})
    opt = DppOptimizer(sim, seed=0)
    assert opt.options["random_starts"] == 1 and opt.options["iterations"] == 5
    sim.reset(0)
    opt.act_sim(sim)
    assert opt.last_stats[0]["n_starts"] == 3 and opt.last_stats[0]["iterations"] <= 5
    with pytest.raises(CosimError):
        DppOptimizer(_short_sim(**{"training.extra": {"dpp_opt": {"nope": 1}}}))
    with pytest.raises(CosimError):
        opt.act(sim.obs)
