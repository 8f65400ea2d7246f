"""Closed-form checks of the model against docs/model.md section 10, and its invariants."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from strategies import floats, random_slot

from cosim import model as M


def worked_slot(cfg):
    """The worked slot of docs/model.md section 10 (I = 2, unit fading, empty queues)."""
    p = M.ModelParams.from_config(cfg)
    x, y = np.array([[150.0, 420.0]]), np.array([[-1.875, 5.625]])
    hd = M.horizontal_distance(p, x, y)
    d = M.distance_3d(p, hd)
    se = M.spectral_efficiency(p, d, np.ones_like(d))
    tasks = M.Tasks(size=np.array([[2e6, 3e6]]), instr=np.array([[0.02e6, 0.03e6]]),
                    intensity=np.array([[1500.0, 2000.0]]), co_intensity=np.array([[300.0, 100.0]]),
                    deadline=np.array([[1.0, 1.0]]))
    cpu = np.array([[2e9, 3e9]])
    dec = M.make_decision(p, np.array([[[0.4, 0.6, 0, 0], [0.2, 0, 0.5, 0.3]]]),
                          np.array([[[1, 0, 0], [0, 0.02, 0.5]]]), np.array([[[0.5, 0, 0], [0, 0.5, 0.25]]]))
    return p, hd, d, se, tasks, cpu, dec


def sig(x, digits=4):
    return float(f"{x:.{digits}g}")


def test_worked_slot_matches_spec(cfg):
    p, hd, d, se, tasks, cpu, dec = worked_slot(cfg)
    cov = M.coverage(p, hd)
    assert cov[0].tolist() == [[True, False, False], [False, True, True]]
    assert sig(d[0, 0, 0], 5) == 52.216
    state = M.QueueState.zeros(1, 2, 3, p.window)
    r, new = M.slot(p, state, tasks, cpu, se, dec)
    assert sig(r.rate[0, 0, 0] / 1e6, 5) == 553.36
    assert sig(r.rate[0, 1, 1] / 1e6, 5) == 10.514
    assert sig(r.rate[0, 1, 2] / 1e6, 5) == 256.89
    np.testing.assert_allclose(dec.cpu[0] / 1e9, [[9.5, 0, 0], [0, 9.5, 4.75]])
    assert r.instr_mode[0].tolist() == [[False, False, False], [False, True, False]]
    np.testing.assert_allclose(r.delay[0], [0.6, 0.4])
    assert sig(r.rsu_delay[0, 0, 0], 5) == 0.19164
    assert [sig(e, 5) for e in r.energy[0]] == [64.247, 140.50]
    assert [sig(c, 5) for c in r.cost[0]] == [0.37462, 0.42834]
    assert sig(r.reward[0], 5) == -4.0148
    assert np.all(new.q_loc == 0) and np.all(new.q_rsu == 0)
    assert [sig(y, 5) for y in new.energy[0]] == [54.247, 130.50]
    r2, _ = M.slot(p, new, tasks, cpu, se, dec)
    assert sig(r2.reward[0], 5) == -4.4322
    assert sig(r2.reward[0] - r.reward[0], 4) == -0.4174


def test_reference_scales(cfg):
    p = M.ModelParams.from_config(cfg)
    assert p.T_ref == pytest.approx(1.4)
    assert p.E_ref == pytest.approx(218.75)
    assert p.W_ref == pytest.approx(3.5e9)


def test_littles_law_delay_uses_window_means(cfg):
    p = M.ModelParams.from_config(cfg)
    hq = np.array([[[4e9], [2e9], [0.0]]])
    hl = np.array([[[1e9], [1e9], [0.0]]])
    np.testing.assert_allclose(M.littles_law_delay(p.tau, hq, hl), [[3.0]])
    assert M.littles_law_delay(p.tau, hq, np.zeros_like(hl))[0, 0] == 0.0


def test_queue_backlog_builds_and_delays_later_tasks(cfg):
    """All-local with more work than the CPU does: Q_loc grows and W_loc turns positive."""
    p, hd, d, se, tasks, cpu, _ = worked_slot(cfg)
    tasks.size[:] = 6e6  # 9e9 cycles on a 2-3 GHz CPU
    dec = M.make_decision(p, np.array([[[1.0, 0, 0, 0]] * 2]), np.zeros((1, 2, 3)), np.zeros((1, 2, 3)))
    state = M.QueueState.zeros(1, 2, 3, p.window)
    r1, s1 = M.slot(p, state, tasks, cpu, se, dec)
    np.testing.assert_allclose(s1.q_loc[0], [9e9 - 2e9, 1.2e10 - 3e9])
    r2, s2 = M.slot(p, s1, tasks, cpu, se, dec)
    assert np.all(r2.wait_loc > 0) and np.all(r2.delay > r1.delay)
    assert np.all(r2.drift_loc > 0)


def _random_slot(data, n_envs=2, n_cvs=3):
    """A random slot: positions, tasks, fades, queues and raw actions from hypothesis."""
    x, y, fading, raw, active, seed = random_slot(data, n_envs, n_cvs)
    q = data.draw(arrays(float, (n_envs, n_cvs), elements=floats(0, 1e11)))
    q_rsu = data.draw(arrays(float, (n_envs, 3), elements=floats(0, 1e11)))
    return x, y, fading, raw, active, q, q_rsu, seed


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_projection_meets_constraints_and_slot_is_finite(cfg, data):
    p = M.ModelParams.from_config(cfg)
    x, y, fading, raw, active, q, q_rsu, seed = _random_slot(data)
    rng = np.random.default_rng(seed)
    hd = M.horizontal_distance(p, x, y)
    cov = M.coverage(p, hd, active)
    dec = M.project(p, raw, cov, active)
    # C5: shares in [0, 1] summing to 1, nothing to RSUs out of range.
    assert np.all(dec.split >= 0) and np.all(dec.split <= 1)
    np.testing.assert_allclose(dec.split.sum(-1), 1.0, rtol=1e-9)
    assert np.all(dec.split[..., 1:][~cov] == 0)
    # C4: per-vehicle bandwidth shares in [0, 1] summing to at most 1; b_min on used links.
    used = dec.split[..., 1:] > 0
    assert np.all(dec.bandwidth >= 0) and np.all(dec.bandwidth.sum(-1) <= 1 + 1e-9)
    assert np.all(dec.bandwidth[used] >= p.min_bandwidth_share - 1e-12)
    # C6: per-RSU CPU within F_max - C_twin; nothing allocated where nothing is offloaded.
    assert np.all(dec.cpu >= 0) and np.all(dec.cpu.sum(-2) <= p.rsu_capacity * (1 + 1e-9))
    assert np.all(dec.cpu[~used] == 0) and np.all(dec.cpu[used] >= p.min_rsu_share * (1 - 1e-9))
    state = M.QueueState.zeros(*x.shape, 3, p.window)
    state.q_loc, state.q_rsu = q, q_rsu
    state.energy = q / 1e8
    tasks = M.draw_tasks(rng, p, x.shape)
    cpu = M.draw_cv_cpu(rng, p, x.shape)
    se = M.spectral_efficiency(p, M.distance_3d(p, hd), fading)
    r, new = M.slot(p, state, tasks, cpu, se, dec, active)
    for name in ("delay", "energy", "cost", "reward", "agent_reward", "wait_loc", "wait_rsu"):
        assert np.all(np.isfinite(getattr(r, name))), name
    # Queues never go negative.
    assert np.all(new.q_loc >= 0) and np.all(new.q_rsu >= 0) and np.all(new.energy >= 0)
    # Per-agent rewards add up to the system reward.
    np.testing.assert_allclose(r.agent_reward.sum(-1), r.reward, rtol=1e-9, atol=1e-9)
    # Inactive CVs carry no task.
    assert np.all(r.cost[~active] == 0) and np.all(r.energy[~active] == 0)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_queues_stay_nonnegative_over_many_slots(cfg, data):
    p = M.ModelParams.from_config(cfg)
    seed = data.draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    shape = (2, 4)
    state = M.QueueState.zeros(*shape, 3, p.window)
    cpu = M.draw_cv_cpu(rng, p, shape)
    for _ in range(15):
        x = rng.uniform(0, 700, shape)
        y = rng.choice([-5.625, -1.875, 1.875, 5.625], shape)
        hd = M.horizontal_distance(p, x, y)
        cov = M.coverage(p, hd)
        dec = M.project(p, rng.normal(0, 5, shape + (11,)), cov)
        se = M.spectral_efficiency(p, M.distance_3d(p, hd), M.draw_fading(rng, shape + (3,)))
        r, state = M.slot(p, state, M.draw_tasks(rng, p, shape), cpu, se, dec)
        assert np.all(state.q_loc >= 0) and np.all(state.q_rsu >= 0) and np.all(state.energy >= 0)
        np.testing.assert_allclose(r.agent_reward.sum(-1), r.reward, rtol=1e-9)


def test_mode_is_the_faster_upload(cfg):
    p, hd, d, se, tasks, cpu, dec = worked_slot(cfg)
    state = M.QueueState.zeros(1, 2, 3, p.window)
    r, _ = M.slot(p, state, tasks, cpu, se, dec)
    used = r.offloaded[0]
    G = tasks.size[0][:, None] * dec.split[0, :, 1:]
    rate = np.where(used, r.rate[0], 1)
    d_data = G / rate
    d_instr = tasks.instr[0][:, None] / rate + G * tasks.co_intensity[0][:, None] / np.where(used, dec.cpu[0], 1)
    np.testing.assert_allclose(r.upload_delay[0][used], np.minimum(d_data, d_instr)[used])


def test_small_parts_are_dropped_and_renormalised(cfg):
    p = M.ModelParams.from_config(cfg)
    raw = np.zeros((1, 1, 11))
    raw[..., :4] = [5.0, 5.0, -5.0, -5.0]  # two big parts, two of about 2e-5
    dec = M.project(p, raw, np.ones((1, 1, 3), bool))
    np.testing.assert_allclose(dec.split[0, 0], [0.5, 0.5, 0, 0])
    assert dec.cpu[0, 0, 1] == 0 and dec.bandwidth[0, 0, 1] == 0


def test_no_coverage_means_all_local(cfg):
    p = M.ModelParams.from_config(cfg)
    dec = M.project(p, np.random.default_rng(0).normal(0, 3, (1, 2, 11)), np.zeros((1, 2, 3), bool))
    np.testing.assert_allclose(dec.split[..., 0], 1.0)
    assert np.all(dec.bandwidth == 0) and np.all(dec.cpu == 0)


def test_deadline_penalty_adds_to_cost(cfg):
    p, hd, d, se, tasks, cpu, dec = worked_slot(cfg)
    tasks.deadline[:] = 0.5  # CV0 (0.6 s) misses, CV1 (0.4 s) makes it
    state = M.QueueState.zeros(1, 2, 3, p.window)
    r0, _ = M.slot(p, state, tasks, cpu, se, dec)
    assert r0.deadline_miss[0].tolist() == [True, False]
    p2 = M.ModelParams.from_config(cfg.replace(**{"lyapunov.deadline_penalty": 2.0}))
    r2, _ = M.slot(p2, state, tasks, cpu, se, dec)
    np.testing.assert_allclose(r2.cost[0] - r0.cost[0], [2.0, 0.0])
