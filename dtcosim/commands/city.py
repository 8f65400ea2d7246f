"""City scale: policies on real city maps with many CVs and RSUs, with their speed.

    dtcosim city                                  # the README's table (needs the maps extra)
    dtcosim city --rows resco/ingolstadt21:200:20:0.7 --policies shipped,equal --episodes 1
    dtcosim city --rows my/city.sumocfg:100:10 --out runs/mycity

A row is MAP:CVS:RSUS[:PENETRATION]: a named map (dtcosim maps) or a .sumocfg, the number of CV
slots, the RSUs placed where the traffic is, and with a penetration the share of vehicles that
are CVs (sumo.cv_pool = penetration; without one, CV slots go to vehicles inside coverage).
Every policy of a row runs on the same episodes (seeds SEED, SEED + 1, ...), each checkpoint under
its own action options. Columns: mean system cost per slot and its 95 % CI over episodes, deadline
misses, the share of active CV-slots some RSU covers, the busiest RSU's share of the covered ones
(each at its nearest covering RSU; 1/K is an even load) as a multiple of its fair share 1/K, the
policy's decision time per slot (ms) and the whole co-simulation's slots per second of wall time
(SUMO, warm-ups, the model and the policy). Writes OUT/table.md and OUT/city.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


from agents import config_for, default_policy, make_policy
from cosim.cli import add_debug_arg, add_list_arg, resolve_policy
from cosim.config import Config, CosimError, load_config
from cosim.env import BatchCoSim
from cosim.evaluation import TimedPolicy, options_key
from cosim.runner import run_episodes
from dtcosim.commands.warmup import prepare

ROWS = ("resco/ingolstadt21:20:5", "resco/ingolstadt21:50:5", "resco/ingolstadt21:64:20",
        "resco/ingolstadt21:200:20:0.7", "resco/cologne8:20:8")
POLICIES = ("shipped", "equal", "nearest", "local", "dpp-opt")


def parse_row(text: str) -> dict[str, Any]:
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise CosimError(f"--rows: '{text}' is not MAP:CVS:RSUS[:PENETRATION]")
    try:
        row = {"map": parts[0], "cvs": int(parts[1]), "rsus": int(parts[2]),
               "penetration": float(parts[3]) if len(parts) == 4 else None}
    except ValueError:
        raise CosimError(f"--rows: '{text}': CVS and RSUS must be integers, PENETRATION a number") from None
    return row


def row_config(row: dict[str, Any], seed: int) -> Config:
    where = {"sumo.sumocfg": row["map"]} if row["map"].endswith(".sumocfg") else {"sumo.map": row["map"]}
    pool = ({"sumo.cv_pool": "penetration", "sumo.penetration": row["penetration"]}
            if row["penetration"] is not None else {})
    return load_config(defaults={"backend": "sumo"}).replace(
        **where, **pool, **{"scenario.n_cvs": row["cvs"], "sumo.n_rsus": row["rsus"], "seed": seed})


def measure(row: dict[str, Any], policies: list[str], episodes: int, seed: int) -> list[dict[str, Any]]:
    cfg = row_config(row, seed)
    groups: dict[str, tuple[Config, list[tuple[str, str]]]] = {}
    for name in policies:
        path = default_policy() if name == "shipped" else resolve_policy(name)
        run_cfg = config_for(path, cfg)
        groups.setdefault(options_key(run_cfg), (run_cfg, []))[1].append((name, path))
    out: dict[str, dict[str, Any]] = {}
    for run_cfg, members in groups.values():
        with BatchCoSim(run_cfg, n_envs=1, seed=seed) as sim:
            for name, path in members:
                policy = TimedPolicy(make_policy(path, sim.n_rsus, seed=seed, env=sim))
                t = time.perf_counter()
                s = run_episodes(sim, policy, episodes, seed=seed, progress=False, policy_name=name).summary
                wall = time.perf_counter() - t
                out[name] = {**{k: row[k] for k in ("map", "cvs", "rsus", "penetration")}, "policy": name,
                             "cost": s["mean_cost"], "cost_ci95": s["cost_ci95"], "misses": s["deadline_miss_rate"],
                             "covered": s["covered_share"], "active": s["active_share"],
                             "busiest_share": s["busiest_rsu_share"],
                             "busiest_vs_fair": s["busiest_rsu_share"] * sim.n_rsus,
                             "decision_ms": policy.decision_ms,
                             "slots_per_s": s["slots"] / wall, "episodes": episodes}
    return [out[name] for name in policies]


def table(results: list[dict[str, Any]]) -> str:
    head = ["map", "CVs", "RSUs", "CV pool", "policy", "cost (± 95 % CI)", "misses", "CV-slots covered",
            "busiest RSU (x fair)", "decision ms/slot", "slots/s, SUMO incl."]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        pool = f"penetration {r['penetration']:g}" if r["penetration"] is not None else "coverage"
        lines.append("| " + " | ".join([
            r["map"], str(r["cvs"]), str(r["rsus"]), pool, r["policy"], f"{r['cost']:.2f} ± {r['cost_ci95']:.2f}",
            f"{r['misses']:.1%}", f"{r['covered']:.1%}", f"{r['busiest_share']:.1%} ({r['busiest_vs_fair']:.1f}x)",
            f"{r['decision_ms']:.1f}", f"{r['slots_per_s']:.1f}"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_list_arg(ap, "--rows", default=None, metavar="MAP:CVS:RSUS[:P]",
                 help=f"rows (default: {' '.join(ROWS)})")
    add_list_arg(ap, "--policies", default=None,
                 help=f"shipped, reference policy names, packaged checkpoints or checkpoint paths (default: {' '.join(POLICIES)})")
    ap.add_argument("--episodes", type=int, default=2, help="episodes per policy and row (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--out", default="runs/city", help="folder for table.md and city.json (default runs/city)")
    add_debug_arg(ap)
    args = ap.parse_args(argv)
    if args.episodes < 1:
        ap.error("--episodes must be at least 1")
    rows = [parse_row(r) for r in (args.rows or ROWS)]
    policies = list(args.policies or POLICIES)
    prepare(load_config(), policies)  # first-run compiles, said before the first row
    results: list[dict[str, Any]] = []
    for row in rows:
        got = measure(row, policies, args.episodes, args.seed)
        results += got
        print("\n".join(table(got).splitlines()[2:]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = table(results)
    (out / "table.md").write_text(text + "\n")
    (out / "city.json").write_text(json.dumps(results, indent=1))
    print(text)
    print(f"wrote {out / 'table.md'}, {out / 'city.json'}")
    return 0

