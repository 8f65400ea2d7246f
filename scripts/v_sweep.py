#!/usr/bin/env python
"""The Lyapunov trade-off over V: long-run cost, energy against the budget and the energy queue Y.

    python scripts/v_sweep.py --values 1 2 5 10 20 50 100 --slots 3000 --out docs/lyapunov
    python scripts/v_sweep.py --values 1 5 20 100 --learner 1=runs/V1 5=checkpoints/ly-dtmppo_default.safetensors \
        20=runs/V20 100=runs/V100

For every V, dpp-opt (the per-slot drift-plus-penalty optimiser) and the learners given for that V
(--learner V=PATH: a policy file or run folder trained at that V, run under the action and twin
options it was trained with) play the same --episodes long-horizon episodes of --slots slots
(episode i reset with seed 10000 + i; the same tasks and channels for every V and policy). Prints
and writes (--out: v_sweep.json, v_sweep.md, fig_v_sweep.png) per V and policy: the time-average
cost and energy per CV over the second half, the energy against the budget, Y at the end, its
growth per slot over the second half and whether it has levelled off
(cosim.evaluation.LEVELLED_SHARE). Drift-plus-penalty theory: once Y has levelled, the cost is
within O(1/V) of the constrained optimum and Y grows as O(V); before, energy runs over budget.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents import make_policy  # noqa: E402
from agents.checkpoint import config_for_policy, load_policy, read_policy_file  # noqa: E402
from cosim.cli import add_common_args, add_list_arg, config_from_args, run_main  # noqa: E402
from cosim.config import CosimError, flat_overrides  # noqa: E402
from cosim.evaluation import EVAL_SEED, evaluate_each  # noqa: E402
from cosim.runner import format_table, strict_json  # noqa: E402

COLUMNS = [("V", "V", "{:g}"), ("policy", "policy", "{}"), ("cost_last_half", "cost 2nd half", "{:.4f}"),
           ("energy_last_half_j", "energy/CV 2nd half J", "{:.2f}"), ("energy_vs_budget", "vs budget", "{:+.1%}"),
           ("y_final_j", "Y end J", "{:.0f}"), ("y_growth_j_per_slot", "Y growth J/slot", "{:+.3f}"),
           ("levelled", "Y levelled", "{}")]


def parse_learners(items: list[str]) -> dict[float, list[str]]:
    out: dict[float, list[str]] = {}
    for item in items:
        v, sep, path = item.partition("=")
        try:
            key = float(v)
        except ValueError:
            key = None
        if not sep or key is None or not path:
            raise CosimError(f"--learner {item}: write V=PATH (e.g. 20=runs/V20)")
        out.setdefault(key, []).append(path)
    return out


def figure(rows: list[dict], budget: float, path: Path) -> None:
    from agents.figures import v_tradeoff_figure  # one figure for this script and the lyapunov_v_long experiment
    v_tradeoff_figure(rows, budget, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, backend_default="analytic")
    add_list_arg(ap, "--values", metavar="V", type=float, default=[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0],
                 help="the V values (default 1 2 5 10 20 50 100)")
    add_list_arg(ap, "--learner", metavar="V=PATH", default=[], help="a policy trained at V, run at V")
    ap.add_argument("--slots", type=int, default=3000, help="slots per episode (default 3000)")
    ap.add_argument("--episodes", type=int, default=1, help="episodes per V and policy (default 1)")
    ap.add_argument("--no-dpp-opt", action="store_true", help="the learners only")
    ap.add_argument("--out", default=None, help="folder for v_sweep.json, v_sweep.md and fig_v_sweep.png")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args()
    if args.slots < 2 or args.episodes < 1:
        ap.error("--slots must be at least 2 and --episodes at least 1")
    cfg = config_from_args(args)
    learners = parse_learners(args.learner)
    explicit = set(flat_overrides(args.config, args.overrides)) | {"lyapunov.V"}
    values = sorted(set(args.values) | set(learners))
    rows: list[dict] = []
    for V in values:
        here = cfg.replace(**{"lyapunov.V": V})
        pols: dict[str, tuple] = {}
        if not args.no_dpp_opt:
            pols["dpp-opt"] = (here, lambda sim: make_policy("dpp-opt", sim.n_rsus, seed=EVAL_SEED, env=sim))
        for k, path in enumerate(learners.get(V, [])):
            meta = read_policy_file(path)[0]
            name = f"{meta['algo']} trained at V" + (f" #{k + 1}" if k else "")
            pols[name] = (config_for_policy(here, meta, explicit),
                          lambda sim, path=path, name=name: load_policy(path, env=sim, name=name))
        if not pols:
            continue
        _, long = evaluate_each(pols, args.episodes, seed=EVAL_SEED, slots=args.slots, progress=not args.quiet)
        for name, lh in long.items():
            rows.append({"V": V, "policy": name, "cost_last_half": lh.cost_last_half,
                         "energy_last_half_j": lh.energy_last_half_j, "energy_vs_budget": lh.energy_vs_budget,
                         "energy_budget_j": lh.energy_budget_j, "y_final_j": lh.y_final_j,
                         "y_growth_j_per_slot": lh.y_growth_j_per_slot, "y_levelled": lh.y_levelled,
                         "levelled": "yes" if lh.y_levelled else "no"})
        print(format_table([r for r in rows if r["V"] == V], COLUMNS), flush=True)
    if not rows:
        raise CosimError("nothing to run: give --learner V=PATH or leave out --no-dpp-opt")
    head = (f"{args.episodes} episode(s) of {args.slots} slots per V and policy, seeds {EVAL_SEED}.."
            f"{EVAL_SEED + args.episodes - 1}; second half = slots {args.slots // 2}..{args.slots}")
    print("\n" + head)
    table = format_table(rows, COLUMNS)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "v_sweep.json").write_text(strict_json({"slots": args.slots, "episodes": args.episodes,
                                                        "seed": EVAL_SEED, "rows": rows}))
        md = ["| V | policy | cost, 2nd half | energy per CV, 2nd half | vs budget | Y at the end | "
              "Y growth per slot | Y levelled |", "|---|---|---|---|---|---|---|---|"]
        md += [f"| {r['V']:g} | {r['policy']} | {r['cost_last_half']:.4f} | {r['energy_last_half_j']:.2f} J | "
               f"{r['energy_vs_budget']:+.1%} | {r['y_final_j']:.0f} J | {r['y_growth_j_per_slot']:+.3f} J | "
               f"{r['levelled']} |" for r in rows]
        (out / "v_sweep.md").write_text(head + "\n\n" + "\n".join(md) + "\n")
        figure(rows, rows[0]["energy_budget_j"], out / "fig_v_sweep.png")
        print(f"wrote {out / 'v_sweep.json'}, {out / 'v_sweep.md'}, {out / 'fig_v_sweep.png'}")
    return 0


if __name__ == "__main__":
    run_main(main)
