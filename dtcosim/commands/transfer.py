"""The transfer table: one trained policy on fleets and RSU layouts it was not trained on.

    dtcosim transfer                                  # the README's table (20 episodes per cell)
    dtcosim transfer --episodes 5 --scenarios default,cvs2
    dtcosim transfer --checkpoint runs/X/policy.safetensors --mlp '' --with-opt

Every scenario (rows) runs every policy (columns) deterministically on the same
fresh episodes (seed --eval-seed + i, never used in training): the set-structured
checkpoint, the paper-architecture MLP checkpoint where it can run (its own CV and
RSU counts only; '-' elsewhere), and the reference policies. Prints a markdown
table of mean system cost ± 95 % CI, with the set policy's margin over the best
reference policy, and writes every summary to --out/transfer.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


from agents import DEFAULT_CHECKPOINT, SHIPPED_CHECKPOINT, config_for, make_policy
from agents.checkpoint import fits, load_policy, read_policy_file
from cosim.cli import add_debug_arg, packaged_checkpoint
from cosim.config import Config, CosimError, load_config
from cosim.evaluation import EVAL_SEED, evaluate_each
from cosim.resources import config_dir
from dtcosim.commands.warmup import prepare

CONFIGS = config_dir() / "transfer"

# name -> (label, config files, overrides): the default scenario, other fleets, other RSU layouts.
SCENARIOS: dict[str, tuple[str, list[Path], list[str]]] = {
    "default": ("default: 5 CVs, 3 RSUs", [], []),
    "cvs2": ("2 CVs", [], ["scenario.n_cvs=2"]),
    "cvs8": ("8 CVs", [], ["scenario.n_cvs=8"]),
    "cvs16": ("16 CVs", [], ["scenario.n_cvs=16"]),
    "rsu2": ("2 RSUs (`configs/transfer/rsu2.yaml`)", [CONFIGS / "rsu2.yaml"], []),
    "rsu5": ("5 RSUs, other positions and radii (`configs/transfer/rsu5.yaml`)", [CONFIGS / "rsu5.yaml"], []),
}
REFERENCES = ("equal", "nearest", "local", "random")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT), type=packaged_checkpoint, metavar="NAME|PATH",
                    help=f"the set-structured policy (default: {SHIPPED_CHECKPOINT.stem})")
    ap.add_argument("--mlp", default=str(DEFAULT_CHECKPOINT), type=packaged_checkpoint, metavar="NAME|PATH",
                    help=f"the paper-architecture policy to compare where it runs ('' for none; "
                         f"default: {DEFAULT_CHECKPOINT.stem})")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help=f"comma-separated, of {', '.join(SCENARIOS)} (default: all)")
    ap.add_argument("--episodes", type=int, default=20, help="evaluation episodes per cell (default 20)")
    ap.add_argument("--eval-seed", type=int, default=EVAL_SEED, help=f"episode i uses seed EVAL_SEED + i "
                                                                     f"(default {EVAL_SEED})")
    ap.add_argument("--with-opt", action="store_true", help="add the per-slot optimiser dpp-opt (slow: ~0.1 s a slot)")
    ap.add_argument("--out", default="runs/transfer", help="output folder for transfer.json (default runs/transfer)")
    add_debug_arg(ap)
    args = ap.parse_args(argv)
    if args.episodes < 1:
        ap.error("--episodes must be at least 1")
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for n in names:
        if n not in SCENARIOS:
            raise CosimError(f"unknown scenario '{n}' in --scenarios (choose {', '.join(SCENARIOS)})")
    set_meta, _ = read_policy_file(args.checkpoint)
    mlp_meta = read_policy_file(args.mlp)[0] if args.mlp else None

    prepare(load_config(), ["dpp-opt"] if args.with_opt else [])  # first-run compiles, said first
    columns = ["set", *(["mlp"] if mlp_meta else []), *REFERENCES, *(["dpp-opt"] if args.with_opt else [])]
    results: dict[str, dict[str, dict]] = {}
    t0 = time.perf_counter()
    for n in names:
        label, files, overrides = SCENARIOS[n]
        cfg = load_config(files, overrides)
        # Each checkpoint under the options it was trained with, the reference policies under the scenario's.
        policies: dict[str, tuple[Config, object]] = {
            "set": (config_for(args.checkpoint, cfg), lambda sim: load_policy(args.checkpoint, env=sim, name="set"))}
        if mlp_meta is not None and fits(mlp_meta, cfg):
            policies["mlp"] = (config_for(args.mlp, cfg), lambda sim: load_policy(args.mlp, env=sim, name="mlp"))
        for r in (*REFERENCES, *(["dpp-opt"] if args.with_opt else [])):
            policies[r] = (cfg, lambda sim, r=r: make_policy(r, sim.n_rsus, seed=args.eval_seed, env=sim))
        results[n] = evaluate_each(policies, args.episodes, seed=args.eval_seed)[0]
        print(f"{label}: done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    head = ["scenario", *[{"set": "set policy (shipped)", "mlp": "MLP policy (paper arch, ly-dtmppo_default)"}.get(c, c) for c in columns],
            "set vs best reference"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in names:
        row = results[n]
        cells = []
        for c in columns:
            s = row.get(c)
            cells.append("—" if s is None else (f"**{s['mean_cost']:.4f} ± {s['cost_ci95']:.4f}**" if c == "set"
                                                 else f"{s['mean_cost']:.4f} ± {s['cost_ci95']:.4f}"))
        best = min(REFERENCES, key=lambda r: row[r]["mean_cost"])
        margin = row["set"]["mean_cost"] / row[best]["mean_cost"] - 1
        lines.append(f"| {SCENARIOS[n][0]} | " + " | ".join(cells) + f" | {margin:+.1%} vs {best} |")
    print(f"{args.episodes} episodes per cell, seeds {args.eval_seed}..{args.eval_seed + args.episodes - 1}, "
          f"analytic backend, mean system cost ± 95% CI")
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "transfer.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'transfer.json'}")
    return 0

