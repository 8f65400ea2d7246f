"""How well dpp-opt solves a scenario's slots, and whether more starts or iterations help.

    dtcosim convergence --config congested --episodes 1

Follows dpp-opt's own trajectory (default options) for --episodes episodes from
seed 10000 and, at every slot, also solves the same slot with each variant of
its options (training.extra.dpp_opt keys). Prints per variant the median
relative gap between its two best starts and the median and mean relative
objective (-R(t)) against the best any variant found on that slot, its starts
and time per slot, and for the warm-started variant how often the warm start
was the best start.
"""

from __future__ import annotations

import argparse

import numpy as np


from cosim.cli import add_common_args, config_from_args
from cosim.env import BatchCoSim
from cosim.evaluation import EVAL_SEED
from cosim.optimizer import DppOptimizer
from dtcosim.commands.warmup import prepare

VARIANTS = {
    "default": {},
    "+warm start": {"warm_start": True},
    "+local,nearest starts": {"reference_starts": ["equal", "local", "nearest"]},
    "all 4 random starts at once": {"more_starts_gap": 0.0},
    "12 random starts at once": {"random_starts": 12, "more_starts_gap": 0.0},
    "300 iterations, no pruning": {"iterations": 300, "prune_gap": 1e6},
}


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, backend_default="analytic")
    ap.add_argument("--episodes", type=int, default=1, help="episodes (default 1)")
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    prepare(cfg, ["dpp-opt"])  # first-run compiles, said before the first slot
    gaps = {v: [] for v in VARIANTS}
    objs = {v: [] for v in VARIANTS}
    with BatchCoSim(cfg, n_envs=1, seed=EVAL_SEED) as sim:
        opts = {v: DppOptimizer(sim, seed=EVAL_SEED, **o) for v, o in VARIANTS.items()}
        for ep in range(args.episodes):
            sim.reset(EVAL_SEED + ep)
            done = False
            while not done:
                acts = {v: o.act_sim(sim) for v, o in opts.items()}
                for v, o in opts.items():
                    gaps[v].append(o.last_stats[0]["start_gap"])
                    objs[v].append(o.last_stats[0]["objective"])
                done = sim.step(acts["default"]).done
    best = np.min(np.array([objs[v] for v in VARIANTS]), axis=0)
    print(f"{sum(len(g) for g in gaps.values()) // len(VARIANTS)} slots, {cfg.scenario.n_cvs} CVs")
    for v in VARIANTS:
        rel = (np.array(objs[v]) - best) / np.abs(best)
        s = opts[v].summary()
        warm = f", warm start best in {s['share_warm_best']:.0%} of slots" if opts[v].settings.warm_start else ""
        print(f"{v:>28}: two best starts differ by {np.nanmedian(gaps[v]):.3%} (median), "
              f"objective above the best variant's by {np.median(rel):.4%} median, {np.mean(rel):.4%} mean, "
              f"{s['mean_starts']:.1f} starts, {s['mean_seconds'] * 1e3:.1f} ms/slot{warm}")
    return 0

