"""The action parameterisations beyond the paper's (actions.bandwidth / split / cpu): invariants and behaviour."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from strategies import floats, random_slot

from cosim import model as M
from cosim.config import ConfigError, load_config
from cosim.env import BatchCoSim

OPTIONS = [dict(zip(("actions.bandwidth", "actions.split", "actions.cpu"), combo))
           for combo in itertools.product(("paper", "full"), ("paper", "balanced"), ("paper", "proportional"))]


def params(**opts):
    return M.ModelParams.from_config(load_config().replace(**opts))


def _slot_inputs(data, n_envs=2, n_cvs=4):
    x, y, fading, raw, active, seed = random_slot(data, n_envs, n_cvs, raw_bound=1e3)
    hist_q = data.draw(arrays(float, (n_envs, 10, 3), elements=floats(0, 1e11)))
    hist_lam = data.draw(arrays(float, (n_envs, 10, 3), elements=st.one_of(st.just(0.0), floats(1e3, 1e11))))
    return x, y, fading, raw, active, hist_q, hist_lam, seed


@settings(max_examples=40, deadline=None)
@given(st.data(), st.sampled_from(OPTIONS))
def test_every_option_keeps_c4_to_c6_and_no_nan(data, opts):
    p = params(**opts)
    x, y, fading, raw, active, hist_q, hist_lam, seed = _slot_inputs(data)
    rng = np.random.default_rng(seed)
    hd = M.horizontal_distance(p, x, y)
    cov = M.coverage(p, hd, active)
    se = M.spectral_efficiency(p, M.distance_3d(p, hd), fading)
    tasks = M.draw_tasks(rng, p, x.shape)
    state = M.QueueState.zeros(*x.shape, 3, p.window)
    state.hist_q_rsu, state.hist_lam_rsu, state.q_rsu = hist_q, hist_lam, hist_q[:, -1]
    dec = M.project_actions(p, raw, cov, active, tasks, se, M.start_of_slot_wait(p, state))
    for name in ("split", "bandwidth", "cpu_request", "cpu"):
        assert np.all(np.isfinite(getattr(dec, name))), name
    # C5: the split is on the simplex, nothing on uncovered RSUs, inactive CVs all local.
    assert np.all(dec.split >= 0) and np.all(dec.split <= 1 + 1e-12)
    np.testing.assert_allclose(dec.split.sum(-1), 1.0, rtol=1e-9)
    assert np.all(dec.split[..., 1:][~cov] == 0) and np.all(dec.split[~active, 0] == 1)
    # C4: bandwidth on the simplex's face (sum <= 1), b_min on used links, 0 elsewhere.
    used = dec.split[..., 1:] > 0
    assert np.all(dec.bandwidth >= 0) and np.all(dec.bandwidth.sum(-1) <= 1 + 1e-9)
    assert np.all(dec.bandwidth[used] >= p.min_bandwidth_share - 1e-12) and np.all(dec.bandwidth[~used] == 0)
    if p.bandwidth_mode == "full":
        np.testing.assert_allclose(dec.bandwidth.sum(-1)[used.any(-1)], 1.0, rtol=1e-9)
    # C6: per-RSU CPU within capacity, the floor where used, nothing where unused.
    assert np.all(dec.cpu.sum(-2) <= p.rsu_capacity * (1 + 1e-9))
    assert np.all(dec.cpu[~used] == 0) and np.all(dec.cpu[used] >= p.min_rsu_share * (1 - 1e-9))
    # Requests are shares in [0, 1]; proportional ones sum to 1 at every RSU that gets work.
    assert np.all(dec.cpu_request >= 0) and np.all(dec.cpu_request <= 1 + 1e-12)
    if p.cpu_mode == "proportional":
        np.testing.assert_allclose(dec.cpu_request.sum(-2)[used.any(-2)], 1.0, rtol=1e-9)
    r, new = M.slot(p, state, tasks, M.draw_cv_cpu(rng, p, x.shape), se, dec, active)
    for name in ("delay", "energy", "cost", "reward", "agent_reward"):
        assert np.all(np.isfinite(getattr(r, name))), name


def test_defaults_are_the_papers(cfg):
    p = M.ModelParams.from_config(cfg)
    assert p.paper_actions and (cfg.actions.bandwidth, cfg.actions.split, cfg.actions.cpu) == ("paper",) * 3
    assert cfg.training.initial_energy_queue == (0.0, 0.0)
    assert not params(**{"actions.cpu": "proportional"}).paper_actions
    with pytest.raises(ConfigError, match=r"actions.split: 'even' is not one of paper, balanced"):
        load_config().replace(**{"actions.split": "even"})


def _equal_offload(K=3):
    """Raw actions: everything offloaded, equal logits over RSUs, bandwidth and CPU logits given."""
    lay = M.ActionLayout(K)
    return lay, lambda bw, cpu: lay.assemble(np.array([-10.0, 0, 0, 0]), np.asarray(bw, float),
                                             np.asarray(cpu, float))[None, None]


def test_full_bandwidth_uses_all_of_it_over_the_used_links():
    lay, raw = _equal_offload()
    cov = np.array([[[True, True, False]]])
    p_paper, p_full = params(), params(**{"actions.bandwidth": "full"})
    a = raw([0.0, np.log(3.0), 5.0, 2.0], [0, 0, 0])  # RSU 3 uncovered; "unused" logit 2
    paper, full = M.project(p_paper, a, cov), M.project_actions(p_full, a, cov)
    assert paper.bandwidth[0, 0].sum() < 0.6          # the paper's softmax leaves most unused
    np.testing.assert_allclose(full.bandwidth[0, 0], [0.25, 0.75, 0.0])  # softmax over the used links only
    b = a.copy()
    b[..., lay.bandwidth_unused] = -7.0                # the unused logit plays no part
    np.testing.assert_array_equal(M.project_actions(p_full, b, cov).bandwidth, full.bandwidth)


def test_proportional_cpu_follows_the_work_sent_and_ignores_the_logits():
    p = params(**{"actions.cpu": "proportional"})
    split = np.array([[[0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]])  # K = 2 here
    size, intensity = np.array([[2e6, 2e6, 3e6]]), np.array([[1500.0, 2000.0, 1000.0]])
    w = M.proportional_cpu_request(split, size, intensity)
    # RSU 1 gets 3e9 cycles from CV 0 and 2e9 from CV 1: shares 0.6 / 0.4; RSU 2 gets nothing.
    np.testing.assert_allclose(w[0], [[0.6, 0.0], [0.4, 0.0], [0.0, 0.0]])
    lay = M.ActionLayout(3)
    rng = np.random.default_rng(0)
    raw = rng.normal(0, 2, (4, 5, lay.dim))
    cov = rng.random((4, 5, 3)) < 0.7
    tasks = M.draw_tasks(rng, p, (4, 5))
    d1 = M.project_actions(p, raw, cov, tasks=tasks)
    raw[..., lay.cpu] = rng.normal(0, 5, (4, 5, 3))
    d2 = M.project_actions(p, raw, cov, tasks=tasks)
    np.testing.assert_array_equal(d1.cpu, d2.cpu)
    used = d1.split[..., 1:] > 0
    cycles = d1.split[..., 1:] * (tasks.size * tasks.intensity)[..., None]
    # F_ik / F_jk = cycles_ik / cycles_jk at a shared RSU (away from the 1 MHz floor).
    ratio = np.where(used, d1.cpu / np.where(used, cycles, 1.0), np.nan)
    for e, k in itertools.product(range(4), range(3)):
        r = ratio[e, :, k][np.isfinite(ratio[e, :, k])]
        if r.size:
            np.testing.assert_allclose(r, r[0], rtol=1e-6)


def test_balance_parts_closed_form():
    # Two DataT-only links (no InstrT gain), waits 0 and 0.1 s, slopes 1 and 2 s per unit share:
    # T = l1 = 0.1 + 2 l2 with l1 + l2 = 0.7  ->  l2 = 0.2, l1 = 0.5, T = 0.5.
    big = np.full((1, 1, 2), 1e9)
    lines = M.PartDelayLines(data0=np.array([[[0.0, 0.1]]]), data1=np.array([[[1.0, 2.0]]]),
                             instr0=big, instr1=big)
    parts = M.balance_parts(lines, np.array([[0.7]]), np.array([[[True, True]]]))
    np.testing.assert_allclose(parts[0, 0], [0.5, 0.2])
    # A link whose wait alone is longer than the common finishing time gets nothing.
    parts = M.balance_parts(lines, np.array([[0.05]]), np.array([[[True, True]]]))
    np.testing.assert_allclose(parts[0, 0], [0.05, 0.0])
    # The faster mode counts: InstrT with a fixed 0.05 s then 0.5 s per share beats DataT's 2 s per share.
    lines = M.PartDelayLines(data0=np.array([[[0.0, 0.0]]]), data1=np.array([[[1.0, 2.0]]]),
                             instr0=np.array([[[1e9, 0.05]]]), instr1=np.array([[[1e9, 0.5]]]))
    parts = M.balance_parts(lines, np.array([[1.0]]), np.array([[[True, True]]]))
    T = lines.delay(parts)[0, 0]
    assert T[0] == pytest.approx(T[1], rel=1e-12)
    np.testing.assert_allclose(parts[0, 0], [0.95 / 1.5 * 0.5 + 0.05, 0.95 / 1.5])  # l1 = 0.05 + 0.5 l2 = 1 - l2


def test_start_of_slot_wait_is_littles_law_over_the_window_before_the_slot():
    p = params()
    st_ = M.QueueState.zeros(1, 2, 3, p.window)
    st_.hist_q_rsu[0, :3] = [[1e9, 0, 0], [2e9, 0, 4e9], [3e9, 0, 0]]
    st_.hist_lam_rsu[0, :3] = [[2e9, 0, 1e9], [2e9, 0, 1e9], [2e9, 0, 2e9]]
    np.testing.assert_allclose(M.start_of_slot_wait(p, st_)[0], [1.0, 0.0, 1.0])


@pytest.mark.parametrize("cpu", ["paper", "proportional"])
def test_balanced_parts_finish_together(cpu):
    """With the waits the slot ends up with equal to the planned ones (empty queues), every RSU part
    of a task finishes at the same time in the model's own slot computation."""
    cfg = load_config().replace(**{"actions.split": "balanced", "actions.cpu": cpu, "scenario.n_cvs": 5})
    spreads, paper_spreads = [], []
    with BatchCoSim(cfg, n_envs=64, seed=3) as sim:
        obs, _ = sim.reset(3)
        rng = np.random.default_rng(0)
        raw = rng.normal(0, 1, (64, 5, sim.action_dim))
        raw[..., sim.actions.local] = -1.0
        out = sim.step(raw)
        r = out.result
        spreads = M.part_spread(r.rsu_delay, r.offloaded)
    with BatchCoSim(cfg.replace(**{"actions.split": "paper"}), n_envs=64, seed=3) as sim:
        sim.reset(3)
        out_p = sim.step(raw)
        paper_spreads = M.part_spread(out_p.result.rsu_delay, out_p.result.offloaded)
    s, sp = spreads[np.isfinite(spreads)], paper_spreads[np.isfinite(paper_spreads)]
    assert s.size > 20 and sp.size > 20
    assert np.median(sp) > 0.1                   # the paper's split leaves parts finishing apart
    if cpu == "paper":
        assert s.max() < 1e-9                    # exact: the rates and CPU do not depend on the shares
    else:
        assert np.median(s) < 1e-3 and s.mean() < 0.1  # a fixed point over the CVs sharing an RSU, 12 passes
    # The agent's local share and its choice of RSUs are kept.
    np.testing.assert_allclose(out.decision.split[..., 0], out_p.decision.split[..., 0])
    assert np.all((out.decision.split[..., 1:] > 0) <= (out_p.decision.split[..., 1:] > 0))


def test_balanced_split_lowers_the_equal_policys_cost():
    from agents import make_policy
    costs = {}
    for split in ("paper", "balanced"):
        cfg = load_config().replace(**{"actions.split": split})
        with BatchCoSim(cfg, n_envs=32, seed=1) as sim:
            pol = make_policy("equal", sim.n_rsus, env=sim)
            obs, _ = sim.reset(1)
            tot = 0.0
            for _ in range(10):
                out = sim.step(pol.act(obs))
                obs, tot = out.obs, tot + out.result.system_cost.mean()
            costs[split] = tot / 10
    assert costs["balanced"] < 0.97 * costs["paper"]


def test_mappo_masks_the_ignored_entries():
    from agents import make_trainer
    cfg = load_config().replace(**{"scenario.n_cvs": 2, "training.n_envs": 2, "actions.bandwidth": "full",
                                   "actions.cpu": "proportional"})
    tr = make_trainer("ly-dtmppo", cfg)
    try:
        lay = tr.sim.actions
        covered = np.array([[[True, True, False], [False, False, False]]] * 2)
        used = np.array([[[True, False, False], [False, False, False]]] * 2)
        m = tr._action_mask(covered, used).numpy()
        assert m[0, 0, lay.split].tolist() == [1, 1, 1, 0]
        assert m[0, 0, lay.bandwidth].tolist() == [1, 0, 0, 0]     # the unused-bandwidth logit is ignored
        assert m[..., lay.cpu].sum() == 0                          # so are the CPU logits
    finally:
        tr.sim.close()


def test_dpp_opt_refuses_other_parameterisations():
    from cosim.config import CosimError
    from cosim.optimizer import DppOptimizer
    cfg = load_config().replace(**{"actions.split": "balanced"})
    with BatchCoSim(cfg, n_envs=1, seed=0) as sim:
        sim.reset(0)
        with pytest.raises(CosimError, match="dpp-opt optimises the paper's action parameterisation"):
            DppOptimizer(sim).act_sim(sim)


@pytest.mark.parametrize("options,exact", [({"actions.split": "balanced", "actions.bandwidth": "full"}, False),
                                           ({"actions.split": "balanced", "actions.cpu": "proportional"}, True)])
def test_fused_step_runs_the_shipped_options_and_numpy_the_others(options, exact):
    """The numba kernel covers actions.bandwidth and actions.split (within 1e-9 of model.project_actions);
    actions.cpu proportional takes the numpy path (its numbers exactly)."""
    cfg = load_config().replace(**options)
    with BatchCoSim(cfg, n_envs=8, seed=2) as sim:
        sim.fused = True
        sim.reset(2)
        raw = np.random.default_rng(1).normal(0, 1, (8, 5, sim.action_dim))
        expected = M.project_actions(sim.params, raw, sim.covered, sim.mob.active, sim.tasks, sim.spec_eff,
                                     M.start_of_slot_wait(sim.params, sim.queues))
        out = sim.step(raw)
    for name in ("split", "bandwidth", "cpu"):
        if exact:
            np.testing.assert_array_equal(getattr(out.decision, name), getattr(expected, name))
        else:
            np.testing.assert_allclose(getattr(out.decision, name), getattr(expected, name), rtol=1e-9, atol=1e-300)


def test_a_checkpoint_deployed_under_other_action_options_says_so(capsys):
    from agents import PAPER_CHECKPOINT
    from agents.checkpoint import load_policy
    with BatchCoSim(n_envs=1, seed=0) as sim:
        load_policy(PAPER_CHECKPOINT, env=sim)
    assert capsys.readouterr().err == ""
    cfg = load_config(overrides=["actions.split=balanced", "actions.bandwidth=full"])
    with BatchCoSim(cfg, n_envs=1, seed=0) as sim:
        load_policy(PAPER_CHECKPOINT, env=sim)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was trained with actions.bandwidth=paper actions.split=paper" in err
    assert "--set actions.bandwidth=paper --set actions.split=paper matches them" in err
