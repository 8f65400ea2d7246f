"""Speed: environments, the per-slot optimiser and training, with ratios measured in this one run.

    dtcosim bench                 # analytic: envs (PettingZoo, batch 1-256), optimiser, training
    dtcosim bench --sumo          # also the SUMO-backed env (libsumo and TraCI), 5 and 50 CVs
    dtcosim bench --trace         # also the batch env replaying recorded SUMO traces (256 envs)
    dtcosim bench --only env      # one part: env | optimiser | training
    dtcosim bench --city          # also dpp-opt per slot from 5 CVs x 3 RSUs to 200 x 20: L-BFGS vs dense
    dtcosim bench --only city     # that table alone
    dtcosim bench --only fastpath --baseline /tmp/bench_base   # the step's targets, this tree against another
                                  # checkout (git worktree add /tmp/bench_base 125c673), each in its own process

Times are CPU time of this process (time.process_time), so other work on the machine
disturbs them less than wall time; every ratio compares two measurements of this run.
Rows marked "numpy" use the readable reference path (BatchCoSim.fused = False); the others
use cosim/fast's numba kernels when numba is installed (their compilation is cached on
disk and warmed up before timing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cosim import fast
from cosim.fast import step as fast_step
from cosim.cli import add_config_args, add_debug_arg
from cosim.config import CosimError, load_config
from cosim.env import BatchCoSim, make_batch_env, make_env
from cosim.runner import format_table

clock = time.process_time


class numpy_path:
    """Within the block, every BatchCoSim uses the numpy reference (cosim.model), not the fused kernels."""

    def __enter__(self) -> None:
        self.saved, BatchCoSim.fused = BatchCoSim.fused, False

    def __exit__(self, *exc) -> None:
        BatchCoSim.fused = self.saved


def bench_parallel_env(cfg, backend: str, seconds: float) -> tuple[float, int]:
    """Slots/s of the PettingZoo env stepping dict actions, as a user of the API would."""
    env = make_env(cfg, backend=backend, seed=0)
    rng = np.random.default_rng(0)
    actions = {a: rng.uniform(-10, 10, env.action_space(a).shape).astype(np.float32) for a in env.possible_agents}
    env.reset(seed=0)
    env.step(actions)  # warm-up (kernels loaded from numba's cache)
    slots, t0 = 0, clock()
    try:
        while clock() - t0 < seconds:
            if not env.agents:
                env.reset()
            env.step(actions)
            slots += 1
    finally:
        elapsed = clock() - t0
        env.close()
    return slots / elapsed, len(env.possible_agents)


def bench_batch_env(cfg, backend: str, n_envs: int, seconds: float) -> tuple[float, int]:
    """Environment-slots/s of the batch env (E slots per step)."""
    sim = make_batch_env(cfg, n_envs=n_envs, backend=backend, seed=0)
    raw = np.random.default_rng(0).uniform(-10, 10, (n_envs, sim.n_cvs, sim.action_dim))
    sim.reset(0)
    sim.step(raw)  # warm-up
    steps, t0 = 0, clock()
    try:
        while clock() - t0 < seconds:
            if sim.step(raw).done:
                sim.reset()
            steps += 1
    finally:
        elapsed = clock() - t0
        sim.close()
    return steps * n_envs / elapsed, sim.n_cvs


def bench_kernels(cfg, n_envs: int, seconds: float) -> tuple[float, int]:
    """Environment-slots/s of the fused kernels alone on one slot's inputs (no draws, no mobility,
    no Python around them): the bound a batch step can approach."""
    sim = make_batch_env(cfg, n_envs=n_envs, backend="analytic", seed=0)
    raw = np.random.default_rng(0).uniform(-10, 10, (n_envs, sim.n_cvs, sim.action_dim))
    sim.reset(0)
    p, pv, q, tk = sim.params, sim._fused_pv, sim.queues, sim.tasks
    steps, t0 = 0, clock()
    while clock() - t0 < seconds:
        fast_step.project_and_slot(p, pv, q, tk, sim.cv_cpu, sim.spec_eff, raw, sim.covered, sim.mob.active)
        fast_step.channel_and_observation(sim)
        steps += 1
    elapsed = clock() - t0
    sim.close()
    return steps * n_envs / elapsed, sim.n_cvs


def bench_policy(cfg, policy: str, episodes: int, **options) -> tuple[float, float, object]:
    """Seconds per slot and mean cost of ``episodes`` episodes of a policy (run_episodes, one env)."""
    from cosim.optimizer import DppOptimizer
    from cosim.policies import make_reference_policy
    from cosim.runner import run_episodes
    sim = make_batch_env(cfg, n_envs=1, backend="analytic", seed=0)
    pol = DppOptimizer(sim, seed=0, **options) if policy == "dpp-opt" else make_reference_policy(policy, sim.n_rsus, seed=0)
    run_episodes(sim, pol, 1, seed=99, progress=False)  # warm-up (another seed)
    if hasattr(pol, "history"):
        pol.history.clear()
    t0 = clock()
    res = run_episodes(sim, pol, episodes, seed=0, progress=False)
    elapsed = clock() - t0
    sim.close()
    return elapsed / (episodes * cfg.scenario.episode_slots), res.summary["mean_cost"], pol


def bench_training(cfg, algo: str, episodes: int) -> float:
    """Training slots/s (rollout and update) of ``episodes`` episodes, no logs."""
    from agents import train
    with tempfile.TemporaryDirectory() as d:
        t0 = clock()
        train(algo, cfg, out=d, episodes=episodes, progress=False, tensorboard=False, log=lambda m: None)
        elapsed = clock() - t0
    return episodes * cfg.scenario.episode_slots / elapsed


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="CPU time per environment measurement")
    ap.add_argument("--sumo", action="store_true", help="also measure the SUMO backend")
    ap.add_argument("--trace", action="store_true",
                    help="also the trace backend at 256 envs (on 16 road episodes recorded first)")
    ap.add_argument("--only", choices=("env", "optimiser", "training", "city", "fastpath"), help="run one part")
    ap.add_argument("--repeats", type=int, default=3, help="fastpath: processes per tree (the median is kept)")
    ap.add_argument("--baseline", type=Path, help="fastpath: also measure this checkout of the repository (e.g. "
                                                   "git worktree add /tmp/bench_base 125c673) and print the ratios")
    ap.add_argument("--opt-episodes", type=int, default=10, help="episodes of each optimiser run")
    ap.add_argument("--train-episodes", type=int, default=160, help="episodes of each training run")
    ap.add_argument("--city", action="store_true",
                    help="also dpp-opt's time per slot and objective, L-BFGS vs dense, up to 200 CVs x 20 RSUs")
    ap.add_argument("--city-slots", type=int, default=4, help="slots of each --city size")
    add_config_args(ap)
    add_debug_arg(ap)
    args = ap.parse_args(argv)
    if args.baseline is not None and not (args.baseline / "cosim" / "env.py").is_file():
        ap.error(f"--baseline {args.baseline}: not a checkout of this repository (no cosim/env.py there)")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.opt_episodes < 1 or args.train_episodes < 16 or args.city_slots < 1:
        ap.error("--opt-episodes and --city-slots must be >= 1 and --train-episodes >= 16 (one iteration)")
    if not 0 < args.seconds < 3600:  # also refuses nan
        raise CosimError(f"--seconds must be above 0 and below 3600, got {args.seconds}")
    cfg = load_config(args.config, args.overrides)
    print(f"numba kernels: {'yes' if fast.AVAILABLE else 'no (pip install dtcosim[fast])'}")
    if args.only in (None, "env"):
        bench_envs(cfg, args)
    if args.only in (None, "optimiser"):
        bench_optimiser(cfg, args.opt_episodes)
    if args.only == "city" or (args.city and args.only in (None, "optimiser")):
        bench_city(cfg, args.city_slots)
    if args.only in (None, "training"):
        bench_train(cfg, args.train_episodes)
    if args.only in (None, "fastpath"):
        bench_fastpath(args.seconds, args.baseline, args.repeats)
    return 0


def bench_envs(cfg, args) -> None:
    rows = []

    def add(name: str, backend: str, n_envs: int, cvs: int, slots_s: float, n_agents: int) -> None:
        rows.append({"env": name, "backend": backend, "envs": n_envs, "cvs": cvs,
                     "slots_s": slots_s, "agent_slots_s": slots_s * n_agents})

    base, n = bench_parallel_env(cfg, "analytic", args.seconds)
    add("PettingZoo", "analytic", 1, cfg.scenario.n_cvs, base, n)
    for e in (1, 16, 256):
        add("batch", "analytic", e, cfg.scenario.n_cvs, *bench_batch_env(cfg, "analytic", e, args.seconds))
    with numpy_path():
        for e in (1, 256):
            add("batch (numpy)", "analytic", e, cfg.scenario.n_cvs,
                *bench_batch_env(cfg, "analytic", e, args.seconds))
    if args.trace:
        from cosim.trace_mobility import record_episodes, write_meta, write_traces
        with tempfile.TemporaryDirectory(prefix="cosim-bench-traces-") as d:
            write_traces(d, record_episodes(cfg, cfg.scenario.n_cvs, range(16)))
            write_meta(d, cfg, cfg.scenario.n_cvs, cfg.scenario.rsus, "the paper's road")
            c = cfg.replace(**{"trace.dir": d, "trace.part": "all"})
            add("batch", "trace", 256, cfg.scenario.n_cvs, *bench_batch_env(c, "trace", 256, args.seconds))
    if fast.AVAILABLE:
        add("fused kernels only", "analytic", 256, cfg.scenario.n_cvs, *bench_kernels(cfg, 256, args.seconds))
    if args.sumo:
        for cvs in (5, 50):
            c = cfg.replace(**{"scenario.n_cvs": cvs})
            if cvs != cfg.scenario.n_cvs:
                add("PettingZoo", "analytic", 1, cvs, *bench_parallel_env(c, "analytic", args.seconds))
            for lib in (True, False):
                c2 = c.replace(**{"sumo.use_libsumo": lib})
                name = "PettingZoo (libsumo)" if lib else "PettingZoo (TraCI)"
                add(name, "sumo", 1, cvs, *bench_parallel_env(c2, "sumo", args.seconds))
    ref: dict[int, float] = {}
    for r in rows:  # each CV count's first analytic PettingZoo row is its reference
        if r["env"] == "PettingZoo" and r["backend"] == "analytic":
            ref.setdefault(r["cvs"], r["agent_slots_s"])
    for r in rows:
        r["ratio"] = r["agent_slots_s"] / ref[r["cvs"]]
    print(format_table(rows, [("env", "env", "{}"), ("backend", "backend", "{}"), ("envs", "envs", "{:d}"),
                              ("cvs", "CVs", "{:d}"), ("slots_s", "slots/s", "{:,.0f}"),
                              ("agent_slots_s", "agent-slots/s", "{:,.0f}"),
                              ("ratio", "x PettingZoo analytic (same CVs)", "{:.2f}")]))
    if args.trace:
        speed = {r["backend"]: r["slots_s"] for r in rows if r["env"] == "batch" and r["envs"] == 256}
        print(f"trace backend at 256 envs: {speed['trace'] / speed['analytic']:.2f}x the analytic batch env's slots/s")
    by = {(r["env"], r["envs"]): r["slots_s"] for r in rows if r["backend"] == "analytic"}
    print(f"batch env at 256 envs: {by['batch', 256] / by['batch (numpy)', 256]:.2f}x the numpy reference, "
          f"{by['batch', 1] / by['batch (numpy)', 1]:.2f}x at 1 env", end="")
    if ("fused kernels only", 256) in by:
        print(f"; the fused kernels alone are {by['fused kernels only', 256] / by['batch', 256]:.2f}x "
              f"the batch step (draws, mobility and Python around them)")
    else:
        print()


def bench_optimiser(cfg, episodes: int) -> None:
    """dpp-opt against the equal split on the same seeds: compiled and numpy."""
    rows = []
    t_eq, c_eq, _ = bench_policy(cfg, "equal", episodes)
    rows.append({"policy": "equal split", "path": "fused" if fast.AVAILABLE else "numpy", "episodes": episodes,
                 "ms": t_eq * 1e3, "cost": c_eq, "evals": float("nan")})
    runs = [("fused", {})] if fast.AVAILABLE else []
    runs.append(("numpy", {"fused": False}))
    by = {}
    for path, opts in runs:
        if path == "numpy":
            with numpy_path():
                t, c, pol = bench_policy(cfg, "dpp-opt", episodes, **opts)
        else:
            t, c, pol = bench_policy(cfg, "dpp-opt", episodes, **opts)
        s = pol.summary()
        row = {"policy": "dpp-opt", "path": path, "episodes": episodes, "ms": t * 1e3, "cost": c,
               "evals": s["mean_evals"] + s["mean_gradients"], "gap": s["median_start_gap"]}
        rows.append(row)
        by[path] = row
    for r in rows:
        r["ratio"] = r["ms"] / (t_eq * 1e3)
        r.setdefault("gap", float("nan"))
    print()
    print(format_table(rows, [("policy", "policy", "{}"), ("path", "path", "{}"), ("episodes", "episodes", "{:d}"),
                              ("ms", "ms/slot", "{:.2f}"), ("ratio", "x equal split's time", "{:.1f}"),
                              ("evals", "evaluations + gradients /slot", "{:,.0f}"),
                              ("gap", "median start gap", "{:.2e}"),
                              ("cost", "mean cost", "{:.5f}")]))
    if "fused" in by:
        new, ref = by["fused"], by["numpy"]
        print(f"dpp-opt: {new['ratio']:.1f}x the equal split's time (target: at most 10x); "
              f"{ref['ms'] / new['ms']:.1f}x faster than numpy (cost {new['cost'] / ref['cost'] - 1:+.3%})")


def spread_rsus(n: int, road_length_m: float, radius: float) -> list[dict[str, float]]:
    """n RSUs evenly along the analytic road's north side (the default RSUs' offset and height)."""
    return [{"x": road_length_m * (k + 0.5) / n, "y": 9.375, "height": 10.0, "radius": radius} for k in range(n)]


def city_sizes(cfg) -> list[tuple[str, int, object]]:
    """(layout, CVs, RSUs or None for the config's own) of --city. The road is the config's; 20 RSUs of
    radius 0.7 x their spacing cover each CV by 1-2 of them, as in a city; radius 200 m makes every RSU
    cover ~half the road (congested: ~10 RSUs per CV, ~120 CVs per RSU at 200 CVs)."""
    road = cfg.scenario.road_length_m
    return [("config's RSUs", 5, None), ("config's RSUs", 50, None),
            ("spread, radius 200 m", 50, spread_rsus(10, road, 200.0)),
            ("city: spread, 1-2 per CV", 200, spread_rsus(20, road, 0.7 * road / 20)),
            ("congested: spread, radius 200 m", 200, spread_rsus(20, road, 200.0))]


CITY_DENSE_MAX_DIM = 2000  # --city: the dense method is skipped where a slot has more parameters (O(d^2) each step)


def bench_city(cfg, slots: int) -> None:
    """dpp-opt per slot, its default (L-BFGS) and the dense method (the reference), on the same slots: the
    first ``slots`` of an episode driven by the default's actions (queues build up), one environment."""
    from cosim.optimizer import AUTO_DENSE_DIM_PER_ITERATION, DppOptimizer, resolve_method
    if not fast.AVAILABLE:
        print("\n--city needs the numba kernels (pip install dtcosim[fast])")
        return
    rows = []
    for layout, cvs, rsus in city_sizes(cfg):
        c = cfg.replace(**{"scenario.n_cvs": cvs, **({"scenario.rsus": rsus} if rsus else {})})
        sim = make_batch_env(c, n_envs=1, backend="analytic", seed=0)
        sim.reset(0)
        new, dense = DppOptimizer(sim, seed=0, method="lbfgs"), DppOptimizer(sim, seed=0, method="dense")
        if not rows:  # warm-up: kernels loaded from numba's cache
            new.act_sim(sim)
            dense.act_sim(sim)
        t_new = t_dense = 0.0
        f_new, f_dense, dims = [], [], []
        for _ in range(slots):
            t0 = clock()
            raw = new.act_sim(sim)
            t_new += clock() - t0
            f_new.append(new.last_stats[0]["objective"])
            dims.append(new.last_stats[0]["dim"])
            if dims[-1] <= CITY_DENSE_MAX_DIM:
                t0 = clock()
                dense.act_sim(sim)
                t_dense += clock() - t0
                f_dense.append(dense.last_stats[0]["objective"])
            sim.step(raw)
        sim.close()
        ran = len(f_dense) == slots
        rel = (np.array(f_new) - f_dense) / np.abs(f_dense) if ran else np.full(1, np.nan)
        cov = sim.covered[0]
        auto = {resolve_method(new.options | {"method": "auto"}, d) for d in dims}
        rows.append({"cvs": cvs, "rsus": sim.n_rsus, "layout": layout, "per_cv": float(cov.sum(1).mean()),
                     "auto": "/".join(sorted(auto)),
                     "dim": float(np.mean(dims)), "ms_new": t_new / slots * 1e3,
                     "ms_dense": t_dense / slots * 1e3 if ran else float("nan"),
                     "rel_mean": float(rel.mean()), "rel_worst": float(rel.max())})
    for r in rows:
        r["speedup"] = r["ms_dense"] / r["ms_new"]
    print()
    print(format_table(rows, [("cvs", "CVs", "{:d}"), ("rsus", "RSUs", "{:d}"), ("layout", "RSU layout", "{}"),
                              ("per_cv", "RSUs per CV", "{:.1f}"), ("dim", "parameters", "{:,.0f}"),
                              ("ms_new", "L-BFGS ms/slot", "{:.1f}"), ("ms_dense", "dense ms/slot", "{:.1f}"),
                              ("speedup", "x faster", "{:.1f}"),
                              ("rel_mean", "objective vs dense, mean", "{:+.1e}"),
                              ("rel_worst", "worst", "{:+.1e}"), ("auto", "default (auto) uses", "{}")]))
    print(f"dpp-opt on {slots} slots per size (one core; dense skipped above {CITY_DENSE_MAX_DIM} parameters); "
          f"objective: (L-BFGS - dense) / |dense|, positive = worse; the default (method auto) runs dense up to "
          f"{AUTO_DENSE_DIM_PER_ITERATION * new.settings.iterations:.0f} parameters, L-BFGS above")


def bench_train(cfg, episodes: int) -> None:
    """Ly-DTMPPO training (rollout and PPO update) on the fused and the numpy environment."""
    rows = []
    bench_training(cfg, "ly-dtmppo", 16)  # warm-up: imports (torch, agents) and first-call costs
    if fast.AVAILABLE:
        rows.append({"path": "fused", "slots_s": bench_training(cfg, "ly-dtmppo", episodes)})
    with numpy_path():
        rows.append({"path": "numpy", "slots_s": bench_training(cfg, "ly-dtmppo", episodes)})
    for r in rows:
        r["ratio"] = r["slots_s"] / rows[-1]["slots_s"]
        r["episodes"] = episodes
        r["budget_s"] = 1800 * cfg.scenario.episode_slots / r["slots_s"]
    print()
    print(format_table(rows, [("path", "ly-dtmppo training, env path", "{}"), ("episodes", "episodes", "{:d}"),
                              ("slots_s", "slots/s", "{:,.0f}"), ("ratio", "x numpy env", "{:.2f}"),
                              ("budget_s", "paper's budget (1800 episodes), CPU s", "{:.0f}")]))



# The batch step's throughput per agent-slot in one fresh process of a checkout, with only the API every
# version has (load_config, make_batch_env, step), so that a checkout from before a change runs it too.
STEP_PROBE = r"""
import json, sys, time
import numpy as np
from cosim.config import load_config
from cosim.env import make_batch_env
root, seconds, cases = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])
clock = time.process_time
out = {}
for name, config, E, I in cases:
    cfg = (load_config([root + "/" + config]) if config else load_config()).replace(**{"scenario.n_cvs": I})
    sim = make_batch_env(cfg, n_envs=E, backend="analytic", seed=0)
    raw = np.random.default_rng(0).uniform(-10, 10, (E, I, sim.action_dim))
    sim.reset(0)
    sim.step(raw)  # warm-up (kernels from numba's cache)
    steps, t0 = 0, clock()
    while clock() - t0 < seconds or steps < 3:
        if sim.step(raw).done:
            sim.reset()
        steps += 1
    out[name] = steps * E * I / (clock() - t0)
    sim.close()
print(json.dumps(out))
"""

# (name, config beside the default, envs, CVs): the paper's actions and the shipped set policy's options
# (configs/shipped.yaml: full bandwidth, balanced split, the twin's global view), small and large batches.
FASTPATH_CASES = [("paper 256x5", "", 256, 5), ("shipped 256x5", "configs/shipped.yaml", 256, 5),
                  ("paper 256x20", "", 256, 20), ("shipped 256x20", "configs/shipped.yaml", 256, 20),
                  ("paper 4096x200", "", 4096, 200), ("shipped 4096x200", "configs/shipped.yaml", 4096, 200)]


def probe_steps(root: Path, seconds: float) -> dict[str, float]:
    """Agent-slots/s of FASTPATH_CASES in a fresh process importing ``root``'s cosim."""
    env = dict(os.environ, PYTHONPATH=str(root))
    run = subprocess.run([sys.executable, "-c", STEP_PROBE, str(root), str(seconds), json.dumps(FASTPATH_CASES)],
                         env=env, cwd=root, capture_output=True, text=True)
    if run.returncode:
        raise CosimError(f"the step probe failed in {root}: {run.stderr.strip().splitlines()[-1:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def bench_fastpath(seconds: float, baseline: Path | None, repeats: int = 3) -> None:
    """The batch step's two targets (the shipped set policy's step within 1.2x of the paper-action step;
    per-agent-slot throughput at 4096 envs x 200 CVs within 1.2x of 256 x 20), in this tree and, with
    ``baseline``, in another checkout: ``repeats`` fresh processes per tree, alternating, the median kept."""
    here = Path(__file__).resolve().parents[2]
    trees = [("this tree", here)] + ([("baseline", baseline.resolve())] if baseline else [])
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in trees}
    for _ in range(repeats):
        for name, root in trees:
            runs[name].append(probe_steps(root, seconds))
    got = {name: {case: float(np.median([r[case] for r in rs])) for case in rs[0]} for name, rs in runs.items()}
    rows = []
    for case, *_ in FASTPATH_CASES:
        row = {"case": case, "now": got["this tree"][case]}
        if baseline:
            row["base"] = got["baseline"][case]
            row["speedup"] = row["now"] / row["base"]
        rows.append(row)
    cols = [("case", "step (config envs x CVs)", "{}"), ("now", "agent-slots/s, this tree", "{:,.0f}")]
    if baseline:
        cols += [("base", f"agent-slots/s, {baseline}", "{:,.0f}"), ("speedup", "x faster", "{:.2f}")]
    print()
    print(format_table(rows, cols))
    for name, _ in trees:
        g = got[name]
        print(f"{name}: the shipped options' step takes {g['paper 256x5'] / g['shipped 256x5']:.2f}x the paper "
              f"actions' (256 x 5; {g['paper 256x20'] / g['shipped 256x20']:.2f}x at 256 x 20; target 1.2x); "
              f"256 x 20 runs {g['paper 256x20'] / g['paper 4096x200']:.2f}x the agent-slots/s of 4096 x 200 "
              f"(shipped: {g['shipped 256x20'] / g['shipped 4096x200']:.2f}x; target 1.2x)")
