"""The queues of the default scenario and each scenario preset (congested, heavy-sensing), policy by policy.

    dtcosim queues                                  # 3 episodes of 60 slots, ~15 min
    dtcosim queues --episodes 1 --slots 30 --policies equal,nearest

For every scenario (default, then each preset) runs the reference policies,
dpp-opt and every --checkpoint whose size fits the scenario on the same
episodes (seed 10000 + i) and draws the RSU backlog (summed over RSUs), the
local backlog and the energy queue Y per CV after every slot, mean over the
episodes, in one figure (--out, default docs/scenarios/queues.png). Prints and
writes (queues.json beside the figure) the long-horizon numbers and dpp-opt's
convergence (median relative gap between its two best starts).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path


from agents import config_for, make_policy
from agents.checkpoint import load_policy, read_policy_file
from cosim.cli import add_debug_arg, add_list_arg, packaged_checkpoint
from cosim.config import CosimError, load_config
from cosim.evaluation import EVAL_SEED, evaluate_each, long_horizon_table
from cosim.resources import config_dir
from dtcosim.commands.warmup import prepare

DEFAULT_CHECKPOINT = "ly-dtmppo_paper"  # a packaged checkpoint (dtcosim policies)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default="default,congested,heavy-sensing",
                    help="comma-separated: default and/or the scenario configs congested, heavy-sensing "
                         "(default: default,congested,heavy-sensing)")
    add_list_arg(ap, "--policies", default=["equal", "nearest", "local", "dpp-opt"],
                 help="reference policies and dpp-opt (default: equal nearest local dpp-opt)")
    ap.add_argument("--checkpoint", action="extend", nargs="+", default=None, metavar="NAME|PATH",
                    help=f"policies to add where their size fits (default {DEFAULT_CHECKPOINT})")
    ap.add_argument("--episodes", type=int, default=3, help="episodes per policy and scenario (default 3)")
    ap.add_argument("--slots", type=int, default=60, help="slots per episode (default 60)")
    ap.add_argument("--out", default="docs/scenarios/queues.png", metavar="PNG",
                    help="the figure; queues.json goes beside it (default docs/scenarios/queues.png)")
    ap.add_argument("--replot", action="store_true", help="only redraw the figure from the JSON beside --out")
    add_debug_arg(ap)
    args = ap.parse_args(argv)
    if args.replot:
        src = Path(args.out).with_suffix(".json")
        if not src.is_file():
            raise CosimError(f"--replot: {src} not found (run without --replot first)")
        plot(json.loads(src.read_text()), Path(args.out), args.episodes)
        print(f"wrote {args.out}")
        return 0
    if args.episodes < 1 or args.slots < 2:
        ap.error("--episodes must be at least 1 and --slots at least 2")
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    checkpoints = [packaged_checkpoint(c) for c in (args.checkpoint if args.checkpoint is not None
                                                    else [DEFAULT_CHECKPOINT])]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    prepare(load_config(), args.policies)  # first-run compiles, said before the first scenario
    results: dict[str, dict] = {}
    for sc in scenarios:
        files = [] if sc == "default" else [config_dir() / "scenarios" / f"{sc}.yaml"]
        if files and not files[0].is_file():
            raise CosimError(f"unknown scenario '{sc}' (no {files[0]})")
        cfg = load_config(files)
        policies: dict[str, tuple] = {}  # name -> (its config, policy factory)
        for path in checkpoints:
            meta, _ = read_policy_file(path)
            if (meta.get("n_cvs"), meta.get("n_rsus")) != (cfg.scenario.n_cvs, cfg.n_rsus):
                print(f"{sc}: {path} is for {meta.get('n_cvs')} CVs x {meta.get('n_rsus')} RSUs, skipped")
                continue
            # under the action and observation options it was trained with
            policies[meta["algo"]] = (config_for(str(path), cfg), lambda sim, path=path: load_policy(path, env=sim))
        for n in args.policies:
            policies[n] = (cfg, lambda sim, n=n: make_policy(n, sim.n_rsus, seed=EVAL_SEED, env=sim))
        summaries, long = evaluate_each(policies, args.episodes, slots=args.slots)
        print(f"\n== {sc}: {cfg.scenario.n_cvs} CVs, {args.episodes} episodes x {args.slots} slots")
        print(long_horizon_table(long))
        for s in summaries.values():
            if "diagnostics_text" in s:
                print(f"{sc}: {s['diagnostics_text']}")
        results[sc] = {"long_horizon": {k: dataclasses.asdict(v) for k, v in long.items()},
                       "diagnostics": {k: s["diagnostics"] for k, s in summaries.items() if "diagnostics" in s}}

    (out.with_suffix(".json")).write_text(json.dumps(results, indent=1))
    plot(results, out, args.episodes)
    print(f"wrote {out}, {out.with_suffix('.json')}")
    return 0


def plot(results: dict[str, dict], out: Path, episodes: int) -> None:
    """One column per scenario, one row per queue; a policy keeps its colour in every panel."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    scenarios = list(results)
    names = list(dict.fromkeys(n for sc in scenarios for n in results[sc]["long_horizon"]))
    colour = {n: f"C{i}" for i, n in enumerate(names)}
    rows = [("q_rsu_trace", "RSU backlog, sum over RSUs (W_ref)"), ("q_loc_trace", "local backlog per CV (W_ref)"),
            ("y_trace_j", "energy queue Y per CV (J)")]
    fig, axes = plt.subplots(len(rows), len(scenarios), figsize=(4.2 * len(scenarios), 8.5), squeeze=False)
    for j, sc in enumerate(scenarios):
        for i, (key, label) in enumerate(rows):
            ax = axes[i][j]
            for name, lh in results[sc]["long_horizon"].items():
                ax.plot(range(1, len(lh[key]) + 1), lh[key], label=name, color=colour[name])
            ax.set_yscale("symlog", linthresh=1e-2 if key != "y_trace_j" else 10.0)
            if i == 0:
                ax.set_title(sc)
            if i == len(rows) - 1:
                ax.set_xlabel("slot")
            if j == 0:
                ax.set_ylabel(label)
        axes[0][j].legend(fontsize=7)
    fig.suptitle(f"queues after every slot, mean over {episodes} episodes (seeds {EVAL_SEED}+)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)

