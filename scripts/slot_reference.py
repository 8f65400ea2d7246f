#!/usr/bin/env python
"""How far dpp-opt and the learned policies are from the per-slot optimum, per scenario.

    python scripts/slot_reference.py --out docs/results/optimality            # default, heavy-sensing, congested
    python scripts/slot_reference.py --scenarios congested --slots 20 --policy runs/X/policy.safetensors

For each scenario, each policy (dpp-opt and the checkpoints given, each under the action and twin
options it was trained with) runs --slots slots from episode seed 10000 (one environment, the next
episode's seed after each 30-slot episode). On every slot it meets, the same slot is also solved by
dpp-opt (defaults) and by its thorough mode, and bounded from below (cosim.slot_reference). Prints
and writes (optimality.md, optimality.json) per scenario and policy the relative gap of the
policy's slot objective -R(t) and of dpp-opt's to the thorough optimum (median, mean, max over
slots) and the thorough optimum's distance above the certified lower bound. A checkpoint that
cannot run on a scenario (an MLP on another fleet size) is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents import config_for, make_policy  # noqa: E402
from agents.checkpoint import fits, read_policy_file  # noqa: E402
from cosim.cli import add_debug_arg, run_main  # noqa: E402
from cosim.config import load_config  # noqa: E402
from cosim.env import BatchCoSim  # noqa: E402
from cosim.evaluation import EVAL_SEED  # noqa: E402
from cosim.runner import _act  # noqa: E402
from cosim.slot_reference import ThoroughOptimizer, trajectory_gaps  # noqa: E402

SCENARIOS = {"default": [], "heavy-sensing": ["configs/scenarios/heavy-sensing.yaml"],
             "congested": ["configs/scenarios/congested.yaml"]}
POLICIES = ["dpp-opt", "checkpoints/ly-dtmppo_default.safetensors", "checkpoints/ly-dtmppo_set.safetensors"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    ap.add_argument("--policy", nargs="+", default=POLICIES, help="dpp-opt and/or checkpoints")
    ap.add_argument("--slots", type=int, default=20)
    ap.add_argument("--out", default=None, help="folder for optimality.md and optimality.json")
    add_debug_arg(ap)
    args = ap.parse_args()
    rows, lines = [], []
    head = ("| scenario | policy | slots | policy vs thorough: median / mean / max | dpp-opt vs thorough: "
            "median / mean / max | thorough above the bound: median / max |\n|---|---|---|---|---|---|")
    for scen in args.scenarios:
        base = load_config(SCENARIOS[scen], [])
        for pol in args.policy:
            cfg = config_for(pol, base)
            if pol != "dpp-opt" and not fits(read_policy_file(pol)[0], cfg):
                print(f"{scen}: {pol} does not fit this fleet/RSU layout (an MLP checkpoint): skipped")
                continue
            t0 = time.perf_counter()
            with BatchCoSim(cfg, n_envs=1, seed=EVAL_SEED) as sim:
                policy = make_policy(pol, sim.n_rsus, seed=EVAL_SEED, env=sim, name=pol)
                g = trajectory_gaps(sim, lambda s, policy=policy: _act(policy, s.obs, s), args.slots, EVAL_SEED,
                                    ThoroughOptimizer(seed=0))
            r = {"scenario": scen, "policy": pol, **g.row(), "seconds": time.perf_counter() - t0}
            rows.append(r)
            # a run folder's policy.safetensors is named by its folder
            name = pol if pol == "dpp-opt" else (Path(pol).parent.name if Path(pol).stem == "policy" else Path(pol).stem)
            lines.append(f"| {scen} | {name} | {int(r['slots'])} | {r['policy_vs_thorough_median']:+.3%} / "
                         f"{r['policy_vs_thorough_mean']:+.3%} / {r['policy_vs_thorough_max']:+.3%} | "
                         f"{r['dpp_vs_thorough_median']:+.4%} / {r['dpp_vs_thorough_mean']:+.4%} / "
                         f"{r['dpp_vs_thorough_max']:+.4%} | {r['thorough_vs_bound_median']:.1%} / "
                         f"{r['thorough_vs_bound_max']:.1%} |")
            print(lines[-1], f"({r['seconds']:.0f} s)", flush=True)
    table = head + "\n" + "\n".join(lines)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "optimality.md").write_text(
            f"{args.slots} slots per scenario and policy from episode seed {EVAL_SEED}; gaps relative to "
            f"the thorough optimum's |-R(t)| (cosim.slot_reference)\n\n{table}\n")
        (out / "optimality.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    run_main(main)
