"""The fused (numba) model step equals the numpy reference in cosim.model within 1e-9 relative."""

from dataclasses import fields

import numpy as np
import pytest

from cosim import fast
from cosim.config import ConfigError
from cosim.fast import step as fast_step
from cosim import make_batch_env
from cosim import model as M
from cosim.env import BatchCoSim
from cosim.mobility import MobilityState
from strategies import busy_queues

pytestmark = pytest.mark.skipif(not fast.AVAILABLE, reason="numba is not installed (pip install dtcosim[fast])")

RTOL = 1e-9
SHIPPED_ACTIONS = {"actions.bandwidth": "full", "actions.split": "balanced"}  # configs/shipped.yaml's


def _close(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, what
    if a.dtype == bool:
        np.testing.assert_array_equal(a, b, err_msg=what)
    else:
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-300, err_msg=what)


def _random_slot(rng, p, E, I, t):
    """Random inputs with inactive CVs, uncovered RSUs, non-empty queues and windows."""
    K, m = p.n_rsus, p.window
    tasks = M.draw_tasks(rng, p, (E, I))
    cv_cpu = M.draw_cv_cpu(rng, p, (E, I))
    active = rng.random((E, I)) > 0.2
    covered = (rng.random((E, I, K)) > 0.4) & active[..., None]
    spec_eff = np.maximum(rng.gamma(2.0, 6.0, (E, I, K)), 1e-12)
    W = p.W_ref
    st = M.QueueState(rng.exponential(W, (E, I)) * (rng.random((E, I)) > 0.3),
                      rng.exponential(3 * W, (E, K)) * (rng.random((E, K)) > 0.3),
                      rng.exponential(0.5, (E, I)), rng.exponential(W, (E, m, I)), rng.exponential(W, (E, m, I)),
                      rng.exponential(W, (E, m, K)), rng.exponential(W, (E, m, K)), t)
    st.hist_lam_rsu[:, :, 0] = 0.0  # an RSU that never received anything: W_rsu = 0
    raw = rng.normal(0.0, 4.0, (E, I, M.action_dim(K)))
    raw[0, 0, 0] = np.nan  # garbage in: projected like the reference does
    raw[0, 1, -1] = np.inf
    return tasks, cv_cpu, active, covered, spec_eff, st, raw


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_project_and_slot_equal_numpy(seed):
    rng = np.random.default_rng(seed)
    sim = make_batch_env(n_envs=1)
    p = sim.params
    tasks, cv_cpu, active, covered, spec_eff, st, raw = _random_slot(rng, p, E=64, I=6, t=int(rng.integers(0, 20)))
    dec_ref = M.project(p, raw, covered, active)
    res_ref, new_ref = M.slot(p, st, tasks, cv_cpu, spec_eff, dec_ref, active)
    dec, res, new = fast_step.project_and_slot(p, fast.params_of(p), st, tasks, cv_cpu, spec_eff, raw, covered, active)
    for f in fields(M.Decision):
        _close(getattr(dec, f.name), getattr(dec_ref, f.name), f.name)
    for f in fields(M.SlotResult):
        _close(getattr(res, f.name), getattr(res_ref, f.name), f.name)
    for f in fields(M.QueueState):
        _close(getattr(new, f.name), getattr(new_ref, f.name), f.name)
    assert (~active).any() and (~covered & active[..., None]).any() and res.instr_mode.any()
    assert (res.wait_rsu > 0).any() and (res.wait_loc > 0).any() and (dec.split[..., 1:] == 0).any()
    np.testing.assert_allclose(res.agent_reward.sum(-1), res.reward, rtol=1e-9)


@pytest.mark.parametrize("options", [{"actions.bandwidth": "full"}, {"actions.split": "balanced"}, SHIPPED_ACTIONS,
                                     {**SHIPPED_ACTIONS, "actions.min_split_share": 0.25}])
def test_shipped_action_options_equal_numpy(options):
    """The full-bandwidth projection and the balanced split's exact solve in the kernel equal
    model.project_actions, and the slot after them model.slot, within 1e-9."""
    rng = np.random.default_rng(7)
    sim = BatchCoSim(make_batch_env(n_envs=1).cfg.replace(**options), n_envs=1)
    p = sim.params
    tasks, cv_cpu, active, covered, spec_eff, st, raw = _random_slot(rng, p, E=64, I=6, t=int(rng.integers(0, 20)))
    dec_ref = M.project_actions(p, raw, covered, active, tasks, spec_eff, M.start_of_slot_wait(p, st))
    res_ref, new_ref = M.slot(p, st, tasks, cv_cpu, spec_eff, dec_ref, active)
    dec, res, new = fast_step.project_and_slot(p, fast.params_of(p), st, tasks, cv_cpu, spec_eff, raw, covered, active)
    for f in fields(M.Decision):
        _close(getattr(dec, f.name), getattr(dec_ref, f.name), f.name)
    for f in fields(M.SlotResult):
        _close(getattr(res, f.name), getattr(res_ref, f.name), f.name)
    for f in fields(M.QueueState):
        _close(getattr(new, f.name), getattr(new_ref, f.name), f.name)
    used = dec.split[..., 1:] > 0
    if p.bandwidth_mode == "full":  # the whole bandwidth over the used links
        np.testing.assert_allclose(dec.bandwidth.sum(-1)[used.any(-1)], 1.0, rtol=1e-12)
    assert (used.sum(-1) >= 2).sum() >= 4  # tasks split over several RSUs: the balanced solve has work


def test_proportional_cpu_has_no_kernel_and_says_so():
    sim = BatchCoSim(make_batch_env(n_envs=1).cfg.replace(**{"actions.cpu": "proportional"}), n_envs=1)
    assert fast_step.projection_options(sim.params) is None  # BatchCoSim.step runs model.project_actions
    sim.reset(0)
    with pytest.raises(ValueError, match="no kernel for actions.cpu = proportional"):
        fast_step.project_and_slot(sim.params, sim._fused_pv, sim.queues, sim.tasks, sim.cv_cpu, sim.spec_eff,
                                   np.zeros((1, sim.n_cvs, sim.action_dim)), sim.covered, sim.mob.active)


def _pair(seed, twin=True, **cfg):
    sims = []
    for fused in (True, False):
        s = make_batch_env(n_envs=8, seed=seed, twin=twin)
        if cfg:
            s = BatchCoSim(s.cfg.replace(**cfg), n_envs=8, seed=seed)
        s.fused = fused
        sims.append(s)
    return sims


def _with_inactive(sim, rng):
    """Make some CV slots inactive (as on a SUMO map with too few vehicles) and redo the slot's start."""
    mob = sim.mob
    active = rng.random(mob.x.shape) > 0.25
    sim.mob = MobilityState(mob.x, mob.y, mob.speed, mob.heading, mob.lane, active)


@pytest.mark.parametrize("twin,cfg", [(True, {}), (False, {}),
                                      (True, {"twin.staleness": 2, "twin.sync_error": 0.1}),
                                      (True, {**SHIPPED_ACTIONS, "twin.view": "global"}),
                                      (True, {"actions.split": "balanced", "actions.min_split_share": 0.2})])
def test_batch_env_fused_equals_numpy_over_an_episode(twin, cfg):
    a, b = _pair(3, twin, **cfg)
    assert fast_step.projection_options(a.params) is not None  # the kernels run these actions.* options
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    oa, sa = a.reset(11)
    ob, sb = b.reset(11)
    _close(oa, ob, "first obs")
    actions = np.random.default_rng(0).normal(0, 3, (30, 8, a.n_cvs, a.action_dim))
    for t in range(30):
        if t in (4, 17):  # inactive CVs from here on, both sides alike
            _with_inactive(a, rng_a)
            _with_inactive(b, rng_b)
        out_a, out_b = a.step(actions[t]), b.step(actions[t])
        for f in fields(M.SlotResult):
            _close(getattr(out_a.result, f.name), getattr(out_b.result, f.name), f"slot {t} {f.name}")
        _close(out_a.obs, out_b.obs, f"slot {t} obs")
        _close(out_a.state, out_b.state, f"slot {t} state")
        _close(a.spec_eff, b.spec_eff, "spec_eff")
        _close(a.covered, b.covered, "covered")
        for f in ("q_loc", "q_rsu", "energy"):
            _close(getattr(a.queues, f), getattr(b.queues, f), f)
    assert a.queues.q_rsu.max() > 0


@pytest.mark.parametrize("view", ["paper", "global"])
def test_observation_kernel_writes_every_view_at_its_layouts_offsets(view):
    """The kernel writes each block where the twin's ObsLayout puts it: the fused observation is the numpy
    one bit for bit (float32), for every view."""
    a, b = (make_batch_env(n_envs=3, seed=2) for _ in range(2))
    a, b = (BatchCoSim(s.cfg.replace(**{"twin.view": view}), n_envs=3, seed=2) for s in (a, b))
    b.fused = False
    off = fast_step.obs_offsets(a.layout)
    for name, sl in a.layout.slices().items():
        assert getattr(off, name) == sl.start
    (oa, sa), (ob, sb) = a.reset(7), b.reset(7)
    raw = np.random.default_rng(1).normal(0, 3, (5, 3, a.n_cvs, a.action_dim))
    for t in range(5):
        np.testing.assert_array_equal(oa, ob)
        np.testing.assert_array_equal(sa, sb)
        oa, sa = a.step(raw[t]).obs, a.state
        ob, sb = b.step(raw[t]).obs, b.state


def test_unknown_observation_block_is_refused_not_sent_to_the_slow_path():
    from cosim.twin import OBS_BLOCKS, Block, ObsLayout
    layout = ObsLayout(3, OBS_BLOCKS + (Block("dt_new_feature", per_rsu=True, twin=True),))
    with pytest.raises(ConfigError, match="dt_new_feature have no fused kernel.*BatchCoSim.fused = False"):
        fast_step.obs_offsets(layout)
    with pytest.raises(ConfigError, match="needs the block.s. task"):
        fast_step.obs_offsets(ObsLayout(3, OBS_BLOCKS[1:]))


def test_bulk_slots_csv_is_the_per_row_file(tmp_path):
    """slots.csv written from whole arrays equals the old row-by-row DictWriter output."""
    import csv

    from cosim.policies import make_reference_policy
    from cosim.runner import run_episodes

    sim = make_batch_env(n_envs=2, seed=0)
    rows = []

    def per_row(out, ep, slot):  # the former writer, one dict per row
        r, d, m = out.result, out.decision, out.mobility
        e = ep % 2
        for i in range(sim.n_cvs):
            row = {"episode": ep, "slot": slot, "cv": i, "active": int(r.active[e, i]),
                   "x": round(float(m.x[e, i]), 3), "y": round(float(m.y[e, i]), 3), "lane": int(m.lane[e, i]),
                   "speed": round(float(m.speed[e, i]), 3), "split_local": round(float(d.split[e, i, 0]), 5)}
            for k in range(sim.n_rsus):
                off = bool(r.offloaded[e, i, k])
                row[f"split_rsu{k}"] = round(float(d.split[e, i, k + 1]), 5)
                row[f"bw_rsu{k}"] = round(float(d.bandwidth[e, i, k]), 5)
                row[f"cpu_ghz_rsu{k}"] = round(float(d.cpu[e, i, k]) / 1e9, 5)
                row[f"mode_rsu{k}"] = ("InstrT" if r.instr_mode[e, i, k] else "DataT") if off else ""
            row.update({"delay_s": float(r.delay[e, i]), "energy_j": float(r.energy[e, i]),
                        "cost": float(r.cost[e, i]), "deadline_miss": int(r.deadline_miss[e, i]),
                        "agent_reward": float(r.agent_reward[e, i]), "system_cost": float(r.system_cost[e]),
                        "system_reward": float(r.reward[e])})
            rows.append(row)

    run_episodes(sim, make_reference_policy("random", sim.n_rsus, seed=1), 3, csv_path=tmp_path / "slots.csv",
                 on_slot=per_row, progress=False)
    ref = tmp_path / "ref.csv"
    with open(ref, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        # the bulk writer writes a step's environments together; the hook sees them one by one
        w.writerows(sorted(rows, key=lambda r: (r["episode"] // 2, r["slot"], r["episode"], r["cv"])))
    assert (tmp_path / "slots.csv").read_text() == ref.read_text()
    assert len(rows) == 3 * 30 * sim.n_cvs and any(r["mode_rsu0"] == "InstrT" for r in rows)


def _slot_problem(seed):
    from cosim.optimizer import SlotProblem, _env_slice, _tasks_slice
    sim = make_batch_env(n_envs=1, seed=seed)
    sim.reset(seed)
    active, rng = busy_queues(sim, seed)
    p, q = sim.params, sim.queues
    args = (p, _env_slice(q, 0), _tasks_slice(sim.tasks, 0), sim.cv_cpu[:1], sim.spec_eff[:1],
            sim.covered[:1] & active[..., None], active)
    return SlotProblem(*args), SlotProblem(*args).use_fused(), rng


@pytest.mark.parametrize("seed", [0, 4])
def test_optimiser_objective_fused_equals_numpy(seed):
    ref, fused, rng = _slot_problem(seed)
    assert ref.d == fused.d > 0
    x = rng.normal(0.0, 3.0, (200, ref.d))
    np.testing.assert_allclose(fused(x), ref(x), rtol=1e-9)
    dec = ref.decode(ref.theta(x[:5]))
    np.testing.assert_allclose(fused.evaluate_decision(dec), ref.evaluate_decision(dec), rtol=1e-9)


def test_optimiser_bfgs_fused_matches_numpy():
    """The compiled BFGS loop and its numpy reference on the same objective and gradient reach the same
    values; the numpy loop on the numpy objective (finite differences) gets as far."""
    from cosim.optimizer import DEFAULTS, bfgs_multistart
    ref, fused, rng = _slot_problem(1)
    x0 = np.stack([ref.heuristic()] + [np.clip(ref.heuristic() + rng.normal(0, 1, ref.d), -8, 8)
                                       for _ in range(2)])
    opt = dict(DEFAULTS, iterations=25, line_search="grid")
    a = bfgs_multistart(fused, x0, opt, compiled=False)
    b = bfgs_multistart(fused, x0, opt)
    np.testing.assert_allclose(b["f0"], a["f0"], rtol=1e-9)
    np.testing.assert_allclose(b["f"], a["f"], rtol=1e-6)
    c = bfgs_multistart(ref, x0, opt)
    np.testing.assert_allclose(c["f0"], a["f0"], rtol=1e-9)
    np.testing.assert_allclose(c["f"].min(), b["f"].min(), rtol=1e-3)
