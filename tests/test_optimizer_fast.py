"""dpp-opt's compiled solver (cosim/fast/objective.py): the analytic gradient, the line-search rules, adaptive
random starts, warm starts, the compiled decode and probe against their numpy forms, and the
limited-memory method against the dense one, up to a city-sized slot (200 CVs, 20 RSUs)."""

import numpy as np
import pytest

from cosim import fast
from cosim.config import load_config
from cosim.env import BatchCoSim
from cosim.optimizer import (AUTO_DENSE_DIM_PER_ITERATION, DEFAULTS, DppOptConfig, DppOptimizer, SlotProblem,
                             _env_slice, _probe, _tasks_slice, bfgs_multistart, resolve_method)
from cosim.runner import run_episodes
from strategies import busy_queues
from test_optimizer import _check_feasible

pytestmark = pytest.mark.skipif(not fast.AVAILABLE, reason="numba is not installed")

# Floors active often (large b_min and F_min), no dropped parts, a deadline penalty: every branch of
# the backward pass sees use.
CONFIGS = {
    "default": {},
    "floors": {"actions.min_bandwidth_share": 0.25, "compute.min_rsu_share_hz": 3e9, "lyapunov.deadline_penalty": 2.0},
    "no-drop": {"actions.min_split_share": 0.0},
}


def _spread_rsus(n, radius, road=700.0):
    """n RSUs evenly along the default road (north side), each of coverage radius ``radius``."""
    return [{"x": road * (k + 0.5) / n, "y": 9.375, "height": 10.0, "radius": radius} for k in range(n)]


# Partial coverage as in a city: 6 small RSUs, each CV covered by 0-2 of them (the objective visits the
# covered links only: cosim.fast.objective.Links).
CONFIGS["city"] = {"scenario.n_cvs": 16, "scenario.rsus": _spread_rsus(6, 70.0)}


def _problem(seed, **changes):
    """One environment's slot with non-empty queues and windows, an inactive CV and a CV out of coverage."""
    cfg = load_config().replace(**changes) if changes else load_config()
    sim = BatchCoSim(cfg, n_envs=1, seed=seed)
    sim.reset(seed)
    active, rng = busy_queues(sim, seed)
    p, q = sim.params, sim.queues
    covered = sim.covered[:1] & active[..., None]
    covered[0, 2] = False
    covered[0, 0] = True  # at least one CV with every RSU: bandwidth and CPU shares over several links
    args = (p, _env_slice(q, 0), _tasks_slice(sim.tasks, 0), sim.cv_cpu[:1], sim.spec_eff[:1], covered, active)
    return SlotProblem(*args), SlotProblem(*args).use_fused(), rng


@pytest.mark.parametrize("config", list(CONFIGS))
def test_analytic_gradient_matches_finite_differences(config):
    """The hand-derived reverse-mode gradient against central differences on random points of random
    slots. The objective has kinks (mode switches, the max over parts, floors, dropped parts): a point
    within h of one makes the difference quotient, not the gradient, wrong, so a few entries may differ;
    a wrong adjoint would make a whole kind of entry differ at every point."""
    h = 1e-6
    tight, total, worst_median = 0, 0, []
    for seed in range(3):
        ref, prob, rng = _problem(seed, **CONFIGS[config])
        obj = prob.fused
        for _ in range(12):
            x = np.clip(rng.normal(0.0, 3.0, prob.d), -prob.bound, prob.bound)
            f, g = obj.value_grad(x)
            assert f == obj(x[None])[0]  # the value is the line search's, bit for bit
            np.testing.assert_allclose(f, ref(x[None])[0], rtol=1e-9)  # and model.slot's
            eye = np.eye(prob.d) * h
            gc = (obj(x + eye) - obj(x - eye)) / (2 * h)
            err = np.abs(g - gc) / (np.abs(gc) + 1e-7 * max(1.0, abs(f)))
            tight += int(np.sum(err < 1e-3))
            total += err.size
            worst_median.append(np.median(err))
    assert tight >= 0.98 * total, (tight, total)
    assert np.median(worst_median) < 1e-5


def test_gradient_is_zero_where_nothing_can_change():
    """No coverage at all: no free parameter, and the objective is the all-local value."""
    _, prob, _ = _problem(0)
    empty = SlotProblem(prob.p, prob.state, prob.tasks, prob.cv_cpu, prob.spec_eff,
                        np.zeros_like(prob.covered)[None], prob.active[None]).use_fused()
    assert empty.d == 0
    f, g = empty.fused.value_grad(np.zeros(0))
    assert g.shape == (0,) and np.isfinite(f)


@pytest.mark.parametrize("rule", ["grid", "first"])
def test_line_search_rules_numpy_equals_fused(rule):
    """The compiled BFGS loop and the numpy one (on the same objective and analytic gradient) pick the
    same step on the same grid by the same rule, so they reach the same values."""
    ref, prob, rng = _problem(1)
    x0 = np.stack([ref.heuristic()] + [np.clip(ref.heuristic() + rng.normal(0, 1, ref.d), -8, 8) for _ in range(2)])
    opt = dict(DEFAULTS, iterations=20, line_search=rule)
    a = bfgs_multistart(prob, x0, opt, compiled=False)
    b = bfgs_multistart(prob, x0, opt)
    np.testing.assert_allclose(b["f0"], a["f0"], rtol=1e-9)
    np.testing.assert_allclose(b["f"], a["f"], rtol=1e-6)
    assert list(b["status"]) == list(a["status"])


def test_line_search_option_names_its_choices():
    from cosim.config import ConfigError
    with pytest.raises(ConfigError, match="line_search.*scan.*first, grid"):
        DppOptConfig.from_config(load_config().replace(**{"training.extra": {"dpp_opt": {"line_search": "scan"}}}))


def test_analytic_bfgs_needs_fewer_evaluations_and_is_not_worse():
    """The compiled loop with the exact gradient against the numpy loop with finite differences."""
    ref, prob_an, rng = _problem(2)
    x0 = np.stack([ref.heuristic()] + [np.clip(ref.heuristic() + rng.normal(0, 1, ref.d), -8, 8) for _ in range(3)])
    fd = bfgs_multistart(ref, x0, DEFAULTS)
    an = bfgs_multistart(prob_an, x0, DEFAULTS)
    assert an["f"].min() <= fd["f"].min() + 1e-4 * abs(fd["f"].min())
    assert prob_an.n_grads > 0 and ref.n_grads == 0
    # d - 1 evaluations saved per gradient: the evaluations (a gradient counted as one) per iteration
    per_it = lambda prob, run: (prob.n_evals + prob.n_grads) / run["iterations"].sum()  # noqa: E731
    assert per_it(prob_an, an) < per_it(ref, fd) / 3 and prob_an.d > 10


def test_compiled_decision_and_probe_equal_numpy():
    ref, prob, rng = _problem(3)
    x = np.clip(rng.normal(0.0, 3.0, prob.d), -8, 8)
    a, b = ref.decision(x), prob.decision(x)
    for name in ("split", "bandwidth", "cpu_request", "cpu"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-12, atol=1e-300, err_msg=name)
    f = float(ref(x[None])[0])
    xa, fa, ga = _probe(ref, x, f, 16, np.random.default_rng(5))
    xb, fb, gb = _probe(prob, x, f, 16, np.random.default_rng(5))
    np.testing.assert_allclose(xb, xa, rtol=1e-12, atol=1e-15)
    assert fb == pytest.approx(fa, rel=1e-12) and gb == pytest.approx(ga, rel=1e-6, abs=1e-15)


def _sim(**extra):
    cfg = load_config().replace(**{"scenario.episode_slots": 6, "training.extra": {"dpp_opt": extra}})
    return BatchCoSim(cfg, n_envs=1, seed=0)


def test_random_starts_run_only_where_the_first_starts_disagree():
    sims = {gap: _sim(random_starts=3, first_random_starts=1, more_starts_gap=gap) for gap in (0.0, 1e6, 1e-300)}
    counts = {}
    for gap, sim in sims.items():
        sim.reset(0)
        opt = DppOptimizer(sim, seed=0)
        opt.act_sim(sim)
        counts[gap] = opt.last_stats[0]["n_starts"]
    assert counts[0.0] == 2 + 3        # 'equal', the balanced heuristic and every random start at once
    assert counts[1e6] == 2 + 1        # the first random start only: no two starts differ by 1e6
    assert counts[1e-300] == 2 + 3     # the starts differ: the rest run too


def test_warm_start_is_used_within_an_episode_and_dropped_between():
    runs = []
    for _ in range(2):  # the same seeds give the same numbers
        sim = _sim(warm_start=True)
        opt = DppOptimizer(sim, seed=0)
        run_episodes(sim, opt, episodes=2, seed=0, progress=False)
        runs.append(list(opt.history))
    assert [s["objective"] for s in runs[0]] == [s["objective"] for s in runs[1]]
    h = list(opt.history)
    assert [s["warm_started"] for s in h] == ([False] + [True] * 5) * 2  # none at each episode's first slot
    assert all(s["n_starts"] >= 4 for s in h[1:6])  # 'equal', 'warm', balanced, a random start
    share = opt.summary()["share_warm_best"]
    assert share == np.mean([s["best_start"] == "warm" for s in h if s["warm_started"]]) and 0 <= share <= 1
    assert opt._warm
    opt.reset()
    assert not opt._warm
    assert not DppOptimizer(_sim(), seed=0).settings.warm_start  # off by default (see cosim/optimizer.py)


def test_warm_start_from_the_same_slot_is_not_worse():
    """Solving the same slot again, the warm start begins where the last solve ended: best-of-starts
    can only keep or improve that value."""
    sim = _sim(warm_start=True)
    sim.reset(3)
    opt = DppOptimizer(sim, seed=0)
    sim.step(opt.act_sim(sim))  # t = 1: warm starts are in use from here on
    first = opt.act_sim(sim)
    f1 = opt.last_stats[0]["optimised"]
    opt.act_sim(sim)
    st = opt.last_stats[0]
    assert st["warm_started"] and st["optimised"] <= f1 + 1e-12 * abs(f1)
    assert first.shape == (1, sim.n_cvs, sim.action_dim)


# ---------------------------------------------------------------------------
# The limited-memory method (the default) against the dense inverse Hessian (the reference)

def _busy_sim(n_cvs=5, rsus=None, seed=0):
    changes = {"scenario.n_cvs": n_cvs, **({"scenario.rsus": rsus} if rsus else {})}
    sim = BatchCoSim(load_config().replace(**changes), n_envs=1, seed=seed)
    sim.reset(seed)
    busy_queues(sim, seed)
    return sim


def test_lbfgs_numpy_equals_fused():
    """The two-loop recursion in numpy and numba (on the same objective and analytic gradient), with every
    pair kept and with a ring of 3 that wraps; with every pair kept it follows the dense method."""
    ref, prob, rng = _problem(1)
    x0 = np.stack([ref.heuristic()] + [np.clip(ref.heuristic() + rng.normal(0, 1, ref.d), -8, 8) for _ in range(2)])
    dense = bfgs_multistart(prob, x0, dict(DEFAULTS, iterations=20, method="dense"))
    for memory in (0, 3):
        opt = dict(DEFAULTS, iterations=20, method="lbfgs", memory=memory)
        a = bfgs_multistart(prob, x0, opt, compiled=False)
        b = bfgs_multistart(prob, x0, opt)
        np.testing.assert_allclose(b["f"], a["f"], rtol=1e-6)
        assert list(b["status"]) == list(a["status"]) and list(b["iterations"]) == list(a["iterations"])
        if memory == 0:
            np.testing.assert_allclose(b["f"], dense["f"], rtol=1e-6)
    assert not np.allclose(a["f"], dense["f"], rtol=1e-6)  # 3 pairs: another method


SLOTS_VS_DENSE = [  # (CVs, RSUs, seed): the default road, and 10 RSUs of radius 200 m (each CV has ~5)
    (5, None, 0), (5, None, 1), (5, None, 2), (20, None, 3), (50, None, 4), (50, _spread_rsus(10, 200.0), 5)]


def test_method_auto_picks_by_size():
    """The default: dense on small slots (faster there), L-BFGS keeping every pair above 0.625 x iterations
    parameters (50 at the default 80); a limited memory is always L-BFGS."""
    assert DppOptConfig().method == "auto" and DppOptConfig().memory == 0
    opt = DEFAULTS
    n = int(AUTO_DENSE_DIM_PER_ITERATION * opt["iterations"])
    assert n == 50 and resolve_method(opt, n) == "dense" and resolve_method(opt, n + 1) == "lbfgs"
    assert resolve_method(dict(opt, iterations=300), 180) == "dense"
    assert resolve_method(dict(opt, memory=10), 5) == "lbfgs"
    assert resolve_method(dict(opt, method="dense"), 10**4) == "dense"
    small, big = _busy_sim(5, None, 0), _busy_sim(50, None, 4)
    for sim, method in ((small, "dense"), (big, "lbfgs")):
        pol = DppOptimizer(sim, seed=0)
        pol.act_sim(sim)
        assert pol.last_stats[0]["method"] == method, pol.last_stats[0]["dim"]


def test_lbfgs_objective_within_half_a_percent_of_dense():
    """L-BFGS keeping every pair since the last reset (the default above 50 parameters) against the dense method on
    seeded slots of up to 50 CVs: it takes the same steps in exact arithmetic, so only rounding can make
    them part. Worst seen: 1.8e-15 above dense here (mean -2e-14), 1.8e-14 on 20 more slots of 5-50 CVs
    and 3-10 RSUs. Its decisions meet the constraints and it is never worse than the reference policies."""
    rel = []
    for n_cvs, rsus, seed in SLOTS_VS_DENSE:
        sim = _busy_sim(n_cvs, rsus, seed)
        new, dense = DppOptimizer(sim, seed=seed, method="lbfgs"), DppOptimizer(sim, seed=seed, method="dense")
        raw = new.act_sim(sim)
        dense.act_sim(sim)
        f_new, f_dense = new.last_stats[0]["objective"], dense.last_stats[0]["objective"]
        rel.append((f_new - f_dense) / abs(f_dense))
        _check_feasible(sim.params, sim.project(raw), sim.covered, sim.mob.active)
        assert new.last_stats[0]["gain_over_references"] >= 0
    assert np.mean(rel) <= 5e-3, rel
    assert max(rel) <= 5e-3, rel


def test_lbfgs_short_memory_is_a_valid_optimiser():
    """A short memory is another method (not dense's iterates) but still an optimiser: feasible, and at
    least as good as the reference policies."""
    sim = _busy_sim(20, None, 3)
    opt = DppOptimizer(sim, seed=0, memory=5)
    raw = opt.act_sim(sim)
    _check_feasible(sim.params, sim.project(raw), sim.covered, sim.mob.active)
    assert opt.last_stats[0]["gain_over_references"] > 0 and opt.last_stats[0]["fallback"] is None


def test_city_slot_200_cvs_20_rsus():
    """A city-sized slot: 200 CVs, 20 small RSUs (each CV covered by 1-2), a few iterations. The compiled
    objective (links only) equals model.slot's there, the decision is feasible and not worse than the
    references."""
    sim = _busy_sim(200, _spread_rsus(20, 25.0), 0)
    ncov = sim.covered[0].sum(axis=1)
    assert ncov.max() <= 2 and sim.n_rsus == 20
    opt = DppOptimizer(sim, seed=0, iterations=5, random_starts=1, probe_dirs=4)
    raw = opt.act_sim(sim)
    st = opt.last_stats[0]
    assert raw.shape == (1, 200, sim.action_dim) and np.all(np.isfinite(raw))
    _check_feasible(sim.params, sim.project(raw), sim.covered, sim.mob.active)
    assert st["gain_over_references"] >= 0 and st["roundtrip_error"] < 1e-9 * abs(st["objective"])
    assert st["method"] == "lbfgs"
    assert st["dim"] < 4 * int(ncov.sum()) + 200 + 20  # parameters only where an RSU covers a CV
    args = (sim.params, _env_slice(sim.queues, 0), _tasks_slice(sim.tasks, 0), sim.cv_cpu[:1], sim.spec_eff[:1],
            sim.covered[:1], sim.mob.active[:1])
    ref, fast = SlotProblem(*args), SlotProblem(*args).use_fused()
    x = np.clip(np.random.default_rng(0).normal(0.0, 3.0, (4, ref.d)), -8, 8)
    np.testing.assert_allclose(fast(x), ref(x), rtol=1e-9)
