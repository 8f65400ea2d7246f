"""The contention table: every policy where CVs share RSUs, with its decision time.

    dtcosim contention                               # the README's table
    dtcosim contention --scenarios default,congested --episodes 5
    dtcosim contention --policies shipped,equal,mine=runs/<run>/policy.safetensors,mine+opt=refined10:runs/<run>/policy.safetensors

Rows are scenarios where offloading is easy (the paper's road) and where CVs contend for the
RSUs: the congested preset (10 CVs, 5 GHz RSUs), RSU layouts with coverage gaps, and the RESCO
ingolstadt21 city at 20 to 64 CVs (the maps extra). Every policy of a row runs deterministically on
the same fresh episodes (seed --eval-seed + i, never used in training), each checkpoint under its own
action and observation options; an MLP checkpoint runs only at its own CV and RSU counts ('-'
elsewhere). Columns: mean system cost ± 95 % CI over episodes, deadline misses, and the policy's
decision time per slot (ms, one environment; the machine's other load is in it). Writes
OUT/table.md and OUT/contention.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


from agents import SHIPPED_CHECKPOINT, config_for, make_policy, refined_base
from agents.checkpoint import fits, read_policy_file
from cosim.cli import add_debug_arg, add_list_arg
from cosim.config import Config, CosimError, load_config
from cosim.evaluation import EVAL_SEED, TimedPolicy, evaluate_each
from cosim.resources import checkpoint_dir, config_dir
from dtcosim.commands.warmup import prepare

# Two RSUs of 160 m at x = 150 and 550 m leave 310..390 m of the 700 m road uncovered; eight of 45 m
# on both sides of the road leave gaps between them.
PARTIAL_2 = [{"x": 150.0, "y": 9.375, "height": 10.0, "radius": 160.0},
             {"x": 550.0, "y": 9.375, "height": 10.0, "radius": 160.0}]
PARTIAL_8 = [{"x": 40.0 + 88.0 * k, "y": 30.0 if k % 2 else -12.0, "height": 10.0, "radius": 55.0} for k in range(8)]

# name -> (label, config files, overrides, episodes)
SCENARIOS: dict[str, tuple[str, list[Path], dict[str, Any], int]] = {
    "default": ("paper's road, 5 CVs, 3 RSUs", [], {}, 20),
    "congested": ("congested preset: 10 CVs, 5 GHz RSUs", [config_dir() / "scenarios" / "congested.yaml"], {}, 20),
    "partial2": ("road, 2 RSUs with a coverage gap, 8 CVs", [], {"scenario.rsus": PARTIAL_2, "scenario.n_cvs": 8}, 20),
    "partial8": ("road, 8 small RSUs on both sides, 16 CVs", [], {"scenario.rsus": PARTIAL_8, "scenario.n_cvs": 16},
                 20),
    "city20": ("ingolstadt21, 20 CVs, 5 RSUs", [], {"backend": "sumo", "sumo.map": "resco/ingolstadt21",
                                                   "scenario.n_cvs": 20, "sumo.n_rsus": 5}, 5),
    "city50": ("ingolstadt21, 50 CVs, 5 RSUs", [], {"backend": "sumo", "sumo.map": "resco/ingolstadt21",
                                                   "scenario.n_cvs": 50, "sumo.n_rsus": 5}, 5),
    "city64": ("ingolstadt21, 64 CVs, 20 RSUs", [], {"backend": "sumo", "sumo.map": "resco/ingolstadt21",
                                                    "scenario.n_cvs": 64, "sumo.n_rsus": 20}, 5),
}
POLICIES = {"shipped": str(SHIPPED_CHECKPOINT),
            "Ly-DTMPPO (paper)": str(checkpoint_dir() / "ly-dtmppo_paper.safetensors"),
            "Ly-MAPPO": str(checkpoint_dir() / "ly-mappo_default.safetensors"),
            "equal": "equal", "nearest": "nearest", "local": "local", "dpp-opt": "dpp-opt",
            "Ly-DAgger (set)": str(checkpoint_dir() / "ly-dagger_set.safetensors"),
            "Ly-DAgger + 10 opt. iterations": "refined10:" + str(checkpoint_dir() / "ly-dagger_set.safetensors")}


def _fits(path: str, cfg: Config) -> bool:
    """A named policy runs anywhere; a checkpoint (or the one a refinedN: name refines) where it fits."""
    path = refined_base(path)
    return not path.endswith(".safetensors") or fits(read_policy_file(path)[0], cfg)


def run_scenario(name: str, policies: dict[str, str], episodes: int | None, seed: int) -> dict[str, Any]:
    label, files, overrides, default_episodes = SCENARIOS[name]
    cfg = load_config([str(f) for f in files]).replace(**overrides)
    if cfg.backend == "sumo":  # RSUs placed once, so that the MLPs' fit can be judged
        from cosim.sumo_mobility import placed_config
        cfg = placed_config(cfg)
    n = episodes or default_episodes
    timed: dict[str, TimedPolicy] = {}

    def factory(policy_name: str, path: str):
        def make(sim):
            timed[policy_name] = TimedPolicy(make_policy(path, sim.n_rsus, seed=seed, env=sim))
            return timed[policy_name]
        return make

    runnable = {p: (config_for(path, cfg), factory(p, path)) for p, path in policies.items() if _fits(path, cfg)}
    summaries, _ = evaluate_each(runnable, n, seed=seed)
    cells = {p: None for p in policies}
    for p, s in summaries.items():
        cells[p] = {"cost": s["mean_cost"], "ci95": s["cost_ci95"], "misses": s["deadline_miss_rate"],
                    "decision_ms": timed[p].decision_ms}
    return {"scenario": name, "label": label, "episodes": n, "cells": cells}


def table(rows: list[dict[str, Any]], policies: list[str]) -> str:
    lines = ["| scenario | " + " | ".join(policies) + " |", "|---|" + "---|" * len(policies)]
    for r in rows:
        out = []
        for p in policies:
            c = r["cells"][p]
            out.append("-" if c is None else f"{c['cost']:.3f} ± {c['ci95']:.3f}<br>{c['misses']:.0%} missed, "
                                             f"{c['decision_ms']:.1f} ms")
        lines.append(f"| {r['label']} ({r['episodes']} ep.) | " + " | ".join(out) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_list_arg(ap, "--scenarios", default=None, help=f"rows (default: {' '.join(SCENARIOS)})")
    add_list_arg(ap, "--policies", default=None,
                 help=f"columns: {', '.join(POLICIES)}, reference names, checkpoint paths or refinedN:POLICY, each "
                      f"optionally LABEL=POLICY (default: {', '.join(POLICIES)})")
    ap.add_argument("--episodes", type=int, default=None,
                    help="episodes per cell (default: 20 on the road, 5 on the city map)")
    ap.add_argument("--eval-seed", type=int, default=EVAL_SEED,
                    help=f"episode i uses seed EVAL_SEED + i (default {EVAL_SEED})")
    ap.add_argument("--out", default="runs/contention", help="folder for table.md and contention.json (default runs/contention)")
    add_debug_arg(ap)
    args = ap.parse_args(argv)
    if args.episodes is not None and args.episodes < 1:
        ap.error("--episodes must be at least 1")
    names = args.scenarios or list(SCENARIOS)
    for n in names:
        if n not in SCENARIOS:
            raise CosimError(f"--scenarios: unknown scenario '{n}' (choose {', '.join(SCENARIOS)})")
    policies = {}
    for p in args.policies or list(POLICIES):
        label, _, path = p.partition("=") if "=" in p else (p, "", POLICIES.get(p, p))
        policies[label] = path
    prepare(load_config(), policies.values())  # first-run compiles, said before the first scenario
    rows = []
    for n in names:
        rows.append(run_scenario(n, policies, args.episodes, args.eval_seed))
        print(table(rows[-1:], list(policies)).splitlines()[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = table(rows, list(policies))
    (out / "table.md").write_text(text + "\n")
    (out / "contention.json").write_text(json.dumps(rows, indent=1))
    print(text)
    print(f"wrote {out / 'table.md'}, {out / 'contention.json'}")
    return 0

