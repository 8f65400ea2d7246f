"""The per-slot reference (cosim.slot_reference): the thorough mode and the certified lower bound."""

import numpy as np
import pytest

from cosim import model as M
from cosim.config import load_config
from cosim.env import BatchCoSim
from cosim.slot_reference import (ThoroughConfig, ThoroughOptimizer, _slot_args, paper_params,
                                  reference_raw, slot_lower_bound, trajectory_gaps)
from tests.test_optimizer import _fill_queues

SMALL = ThoroughConfig(random_starts=6, uniform_starts=2, hops=1, hop_starts=3)


def _random_objectives(sim, rng, n=200):
    """-R(t) of n random raw actions on the current slot (paper projection), without stepping."""
    p = paper_params(sim.params)
    raw = rng.uniform(-8, 8, (n, sim.n_cvs, M.action_dim(sim.n_rsus)))
    cov = np.broadcast_to(sim.covered[:1], (n,) + sim.covered.shape[1:])
    act = np.broadcast_to(sim.mob.active[:1], (n, sim.n_cvs))
    dec = M.project(p, raw, cov, act)
    rep = lambda a: np.repeat(np.asarray(a)[:1], n, axis=0)  # noqa: E731
    st = sim.queues
    state = M.QueueState(*(rep(getattr(st, f)) for f in ("q_loc", "q_rsu", "energy", "hist_q_loc",
                                                          "hist_lam_loc", "hist_q_rsu", "hist_lam_rsu")), st.t)
    tasks = M.Tasks(*(rep(getattr(sim.tasks, f)) for f in ("size", "instr", "intensity", "co_intensity", "deadline")))
    res, _ = M.slot(p, state, tasks, rep(sim.cv_cpu), rep(sim.spec_eff), dec, act)
    return -res.reward


@pytest.mark.parametrize("preset", [[], ["configs/scenarios/congested.yaml"], ["configs/scenarios/heavy-sensing.yaml"]])
def test_bound_below_every_decision_and_thorough_not_worse(preset):
    """On random slots with random queues: bound <= thorough <= dpp-opt, and the bound is below the
    objective of every random decision and of the three references (a bound above any of them is wrong)."""
    cfg = load_config(preset, [])
    rng = np.random.default_rng(3)
    with BatchCoSim(cfg, n_envs=1, seed=1) as sim:
        sim.reset(123)
        th = ThoroughOptimizer(seed=0, config=SMALL)
        for t in range(2):
            if t:
                _fill_queues(sim, rng, scale=t)
            args = _slot_args(sim)
            refs = reference_raw(sim)[:, 0]
            raw, f_t, f_d = th.solve(*args, ref_raw=refs)
            lb = slot_lower_bound(*args)
            tol = 1e-9 * max(1.0, abs(f_t))
            assert lb <= f_t + tol <= f_d + 2 * tol
            assert lb <= _random_objectives(sim, rng).min() + tol
            # the thorough action's value is what the environment gives it
            out = sim.step(raw[None])
            assert -out.reward[0] == pytest.approx(f_t, rel=1e-9, abs=1e-9)


def test_bound_is_tight_for_a_lone_cv_with_no_rsu():
    """No RSU in range: the only decision is all-local, so the bound is that decision's -R(t) exactly."""
    cfg = load_config([], ["scenario.n_cvs=1"])
    with BatchCoSim(cfg, n_envs=1, seed=0) as sim:
        sim.reset(5)
        sim.covered[:] = False
        args = _slot_args(sim)
        dec = M.project(args[0], reference_raw(sim)[0], sim.covered, sim.mob.active)
        res, _ = M.slot(args[0], sim.queues, sim.tasks, sim.cv_cpu, sim.spec_eff, dec, sim.mob.active)
        assert slot_lower_bound(*args) == pytest.approx(-res.reward[0], rel=1e-9)


def test_trajectory_gaps_on_a_learner_trajectory_under_other_actions():
    """A policy under actions.* options (not the paper's) is compared with the paper-parameterised optimum;
    the rows' gaps are relative to the thorough optimum and the bound sits below it."""
    cfg = load_config(["configs/shipped.yaml"], [])
    with BatchCoSim(cfg, n_envs=1, seed=0) as sim:
        from cosim.policies import EqualPolicy
        eq = EqualPolicy(sim.n_rsus)
        g = trajectory_gaps(sim, lambda s: eq.act(s.obs), slots=3, seed=10000,
                            thorough=ThoroughOptimizer(seed=0, config=SMALL))
    row = g.row()
    assert row["slots"] == 3
    assert np.all(g.bound <= g.thorough + 1e-9) and np.all(g.thorough <= g.dpp + 1e-9)
    assert row["dpp_vs_thorough_median"] >= 0 and row["thorough_vs_bound_median"] >= 0
