"""Run policies on SUMO's shipped scenarios and fresh netgenerate nets, with no flag but the map.

    dtcosim survey                                    # the README's table (a few minutes)
    dtcosim survey --cvs 3,5,8 --policies shipped,equal,local,nearest --episodes 2
    dtcosim survey --policies equal,runs/<run>/policy.safetensors --maps cross,grid
    dtcosim survey --rsus 5 --cvs 10                  # other RSU and CV counts

Each map runs as ``dtcosim run --sumocfg MAP`` (or ``--net NET``) would: RSUs placed where the
map's traffic is, CV slots inside coverage. ``shipped`` is the shipped checkpoint; a policy that
does not fit the CV or RSU count (the shipped MLP knows 5 CVs and 3 RSUs) is reported as n/a.
Prints a markdown table and writes it, with every number, to OUT/table.md and OUT/survey.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path
from typing import Any


import sumo

from agents import config_for, default_policy, make_policy
from cosim import maps
from cosim.cli import add_debug_arg, add_list_arg, resolve_policy
from cosim.config import Config, CosimError, load_config
from cosim.env import BatchCoSim
from cosim.evaluation import options_key
from cosim.runner import run_episodes
from dtcosim.commands.warmup import prepare

GAME = maps.GAME_DIR
GAME_MAPS = maps.GAME_MAPS  # the wheel's tools/game scenarios with road traffic (cosim.maps says which are left out)
# Fresh netgenerate nets (seed 0), with random trips from SUMO's randomTrips.py.
GENERATED = {
    "grid": ["--grid", "--grid.number", "6", "--grid.length", "200", "--default.lanenumber", "2"],
    "spider": ["--spider", "--spider.arm-number", "7", "--spider.circle-number", "5",
               "--spider.space-radius", "150", "--default.lanenumber", "2"],
    "random": ["--rand", "--rand.iterations", "200", "--default.lanenumber", "2"],
}


def generate(name: str, out_dir: Path) -> Path:
    net = out_dir / f"{name}.net.xml"
    if not net.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([os.path.join(sumo.SUMO_HOME, "bin", "netgenerate"), *GENERATED[name], "--seed", "0",
                               "--output-file", str(net)], capture_output=True, text=True,
                              env=dict(os.environ, SUMO_HOME=sumo.SUMO_HOME))
        if done.returncode != 0:
            raise CosimError(f"netgenerate {name} failed: {done.stderr.strip().splitlines()[-1:]}")
    return net


def survey(map_key: dict[str, str], label: str, cvs: int, rsus: int | None, policies: list[str], episodes: int,
           seed: int) -> dict[str, Any]:
    cfg = load_config(defaults={"backend": "sumo"}).replace(
        **map_key, **{"scenario.n_cvs": cvs, "seed": seed, "sumo.n_rsus": rsus})
    row: dict[str, Any] = {"map": label, "cvs": cvs, "costs": {}, "misses": {}}
    # A checkpoint runs under the action and observation options it was trained with: one SUMO per set of options.
    groups: dict[str, tuple[Config, list[tuple[str, str]]]] = {}
    for name in policies:
        path = default_policy() if name == "shipped" else resolve_policy(name)
        run_cfg = config_for(path, cfg)
        groups.setdefault(options_key(run_cfg), (run_cfg, []))[1].append((name, path))
    for run_cfg, members in groups.values():
        with BatchCoSim(run_cfg, n_envs=1, seed=seed) as sim:
            summary = sim.mobility.map_summary
            row.update(width_m=summary.width_m, height_m=summary.height_m, vehicles=summary.vehicles,
                       rsus=sim.n_rsus, placement=summary.placement, vehicle_seconds_covered=summary.covered_share)
            for name, path in members:
                try:
                    policy = make_policy(path, sim.n_rsus, seed=seed, env=sim)
                except CosimError as exc:  # a checkpoint for other CV or RSU counts
                    row["costs"][name] = None
                    row.setdefault("notes", {})[name] = str(exc)
                    continue
                s = run_episodes(sim, policy, episodes, seed=seed, progress=False, policy_name=name).summary
                row["costs"][name] = s["mean_cost"]
                row["misses"][name] = s["deadline_miss_rate"]
                row["active_share"] = s["active_share"]
                row["covered_share"] = s["covered_share"]
    return row


def table(rows: list[dict[str, Any]], policies: list[str]) -> str:
    head = ["map", "size m", "vehicles", "RSUs placed", "vehicle-s covered", "CVs", "CV-slots active",
            "active CV-slots covered",
            *[f"cost {p}" for p in policies]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        costs = [("n/a" if r["costs"].get(p) is None else f"{r['costs'][p]:.3f}") for p in policies]
        lines.append("| " + " | ".join([
            r["map"], f"{r['width_m']:.0f} x {r['height_m']:.0f}", str(r["vehicles"]),
            f"{r['rsus']} ({r['placement']})", f"{r['vehicle_seconds_covered']:.0%}", str(r["cvs"]),
            f"{r.get('active_share', 0.0):.0%}", f"{r.get('covered_share', 0.0):.1%}", *costs]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_list_arg(ap, "--maps", default=None, help=f"maps (default: all of {', '.join(GAME_MAPS + tuple(GENERATED))})")
    add_list_arg(ap, "--cvs", type=int, metavar="N", default=None, help="CV counts (default 3 5 8)")
    ap.add_argument("--rsus", type=int, default=None, help="place this many RSUs (default: as configured, 3)")
    add_list_arg(ap, "--policies", default=None,
                 help="shipped, reference policy names, packaged checkpoints (dtcosim policies) or checkpoint paths "
                      "(default: shipped equal local nearest)")
    ap.add_argument("--episodes", type=int, default=2, help="episodes per policy (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="random seed of every run (default 0)")
    ap.add_argument("--out", default="runs/survey", help="folder for table.md, survey.json and the nets (default runs/survey)")
    add_debug_arg(ap)
    args = ap.parse_args(argv)
    names = args.maps if args.maps else list(GAME_MAPS) + list(GENERATED)
    policies = args.policies if args.policies is not None else ["shipped", "equal", "local", "nearest"]
    counts = args.cvs or [3, 5, 8]
    prepare(load_config(), policies)  # first-run compiles, said before the first map
    out = Path(args.out)
    rows = []
    for name in names:
        if name in GENERATED:
            key, label = {"sumo.net": str(generate(name, out / "nets"))}, f"netgenerate {name}"
        elif (GAME / f"{name}.sumocfg").is_file():
            key, label = {"sumo.sumocfg": str(GAME / f"{name}.sumocfg")}, f"game/{name}"
        else:
            raise CosimError(f"--maps: unknown map '{name}' (choose {', '.join(GAME_MAPS + tuple(GENERATED))})")
        for cvs in counts:
            rows.append(survey(key, label, cvs, args.rsus, policies, args.episodes, args.seed))
            print(table(rows[-1:], policies).splitlines()[-1], flush=True)
    text = table(rows, policies)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n")
    (out / "survey.json").write_text(json.dumps(rows, indent=1))
    print(text)
    print(f"wrote {out / 'table.md'}, {out / 'survey.json'}")
    return 0

