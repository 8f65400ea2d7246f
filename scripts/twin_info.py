#!/usr/bin/env python
"""What the twin is worth under each information model (twin.info), per scenario, in one command.

    python scripts/twin_info.py --out docs/results/twin_info                      # default, congested, city
    python scripts/twin_info.py --scenarios congested --seeds 0 1 2 --out OUT

default, congested: Ly-DTMPPO (the shipped recipe, configs/shipped.yaml, + the scenario's preset) is
trained under each twin.info (oracle, previous, reported) and Ly-MAPPO (no twin) the same way, for
each seed (runs/twin_info/<scenario>/<algo>[_<info>]_s<seed>; a finished run, one with curves.png,
is not retrained: the command for each is printed). Every run is evaluated under the twin.info it
was trained with on the same 20 episodes (seeds 10000..). The table: cost, mean ± 95 % CI over
the seeds, and the change against Ly-MAPPO paired by seed (mean ± 95 % CI of the per-seed changes).

city: resco/cologne8 with 20 CVs and 8 RSUs, replayed from a SUMO recording (traces/cologne8,
recorded when missing: 40 episodes, the last 20 held out). Training a set policy there under each
model and seed does not fit this machine's budget, so the shipped set policy (ly-dtmppo_set,
trained on the default road with the oracle view) is evaluated, not retrained, under each model on
the 20 held-out episodes, beside itself with every twin block hidden (twin.hide: the view as
zeros: what the same actor does without a twin) and the equal split and dpp-opt.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents import make_policy  # noqa: E402
from agents.checkpoint import config_for_policy, load_policy, read_policy_file  # noqa: E402
from cosim.cli import add_debug_arg, run_main  # noqa: E402
from cosim.config import load_config  # noqa: E402
from cosim.evaluation import EVAL_SEED, evaluate_each  # noqa: E402
from cosim.stats import ci95  # noqa: E402
from cosim.twin import TWIN_BLOCKS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
INFOS = ("oracle", "previous", "reported")
PRESETS = {"default": [], "congested": ["configs/scenarios/congested.yaml"]}
CITY_TRACE = "traces/cologne8"
CITY_RECORD = ["--map", "resco/cologne8", "--cvs", "20", "--rsus", "8", "--episodes", "40",
               "--set", "trace.eval_share=0.5", "--workers", "1"]
SET_POLICY = "checkpoints/ly-dtmppo_set.safetensors"


def run_name(algo: str, info: str | None, seed: int) -> str:
    return f"{algo}_{info}_s{seed}" if info else f"{algo}_s{seed}"


def train_command(scenario: str, algo: str, info: str | None, seed: int) -> list[str]:
    cmd = [sys.executable, "scripts/train.py", "--algo", algo, "--backend", "analytic", "--seed", str(seed),
           "--config", "configs/shipped.yaml"]
    for c in PRESETS[scenario]:
        cmd += ["--config", c]
    if info:
        cmd += ["--set", f"twin.info={info}"]
    return cmd + ["--out", f"runs/twin_info/{scenario}/{run_name(algo, info, seed)}", "--quiet", "--no-tensorboard"]


def ensure_trained(scenario: str, algo: str, info: str | None, seed: int) -> Path:
    out = ROOT / "runs" / "twin_info" / scenario / run_name(algo, info, seed)
    cmd = train_command(scenario, algo, info, seed)
    print(" ".join(["python"] + cmd[1:]), flush=True)
    if not (out / "curves.png").exists():  # written last: the run finished
        subprocess.run(cmd, cwd=ROOT, check=True)
    return out / "policy.safetensors"


def mean_ci(x: list[float]) -> tuple[float, float]:
    a = np.asarray(x, float)
    return float(a.mean()), float(ci95(a))


def learned_table(scenario: str, seeds: list[int], episodes: int) -> tuple[str, dict]:
    base = load_config(PRESETS[scenario], [])
    cells = [("ly-mappo", None)] + [("ly-dtmppo", i) for i in INFOS]
    paths = {(a, i, s): ensure_trained(scenario, a, i, s) for a, i in cells for s in seeds}
    policies = {}
    for (a, i, s), path in paths.items():
        label = run_name(a, i, s)
        # each run under the options it was trained with, twin.info included (a POLICY_OPTIONS key or not)
        cfg = config_for_policy(base, read_policy_file(path)[0])
        if i:
            cfg = cfg.replace(**{"twin.info": i})
        policies[label] = (cfg, lambda sim, path=path, label=label: load_policy(path, env=sim, name=label))
    summaries, _ = evaluate_each(policies, episodes, seed=EVAL_SEED)
    cost = {k: summaries[run_name(*k)]["mean_cost"] for k in paths}
    none = [cost[("ly-mappo", None, s)] for s in seeds]
    m, c = mean_ci(none)
    rows = [f"| {scenario} | Ly-MAPPO (no twin) | {m:.4f} ± {c:.4f} | – | "
            + ", ".join(f"{v:.4f}" for v in none) + " |"]
    data = {"ly-mappo": none}
    for i in INFOS:
        v = [cost[("ly-dtmppo", i, s)] for s in seeds]
        ch = [100.0 * (a / b - 1.0) for a, b in zip(v, none)]
        m, c = mean_ci(v)
        cm, cc = mean_ci(ch)
        rows.append(f"| {scenario} | Ly-DTMPPO, `twin.info: {i}` | {m:.4f} ± {c:.4f} | {cm:+.1f} ± {cc:.1f} % | "
                    + ", ".join(f"{x:.4f}" for x in v) + " |")
        data[f"ly-dtmppo_{i}"] = v
    return "\n".join(rows), data


def city_table(episodes: int) -> tuple[str, dict]:
    if not (ROOT / CITY_TRACE / "meta.json").exists():
        cmd = [sys.executable, "scripts/record_traces.py", "--out", CITY_TRACE] + CITY_RECORD
        print(" ".join(["python"] + cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    base = load_config([], ["backend=trace", "scenario.n_cvs=20", f"trace.dir={CITY_TRACE}", "trace.part=eval", "trace.eval_share=0.5"])
    meta = read_policy_file(ROOT / SET_POLICY)[0]
    policies = {}
    for i in INFOS:
        cfg = config_for_policy(base, meta).replace(**{"twin.info": i})
        policies[f"set, {i}"] = (cfg, lambda sim: load_policy(ROOT / SET_POLICY, env=sim, name="set"))
    cfg = config_for_policy(base, meta).replace(**{"twin.hide": list(TWIN_BLOCKS)})
    policies["set, every twin block hidden"] = (cfg, lambda sim: load_policy(ROOT / SET_POLICY, env=sim, name="set"))
    for n in ("equal", "dpp-opt"):
        policies[n] = (base, lambda sim, n=n: make_policy(n, sim.n_rsus, seed=EVAL_SEED, env=sim))
    summaries, _ = evaluate_each(policies, episodes, seed=EVAL_SEED)
    hidden = summaries["set, every twin block hidden"]["mean_cost"]
    rows = []
    for k, s in summaries.items():
        rel = f"{100.0 * (s['mean_cost'] / hidden - 1.0):+.2f} %" if k.startswith("set") and "hidden" not in k else "–"
        rows.append(f"| city (cologne8, 20 CVs, 8 RSUs) | {k} | {s['mean_cost']:.4f} ± {s['cost_ci95']:.4f} | {rel} | "
                    f"{episodes} episodes |")
    return "\n".join(rows), {k: s["mean_cost"] for k, s in summaries.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", nargs="+", default=["default", "congested", "city"],
                    choices=["default", "congested", "city"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--out", default=None, help="folder for twin_info.md and twin_info.json")
    add_debug_arg(ap)
    args = ap.parse_args()
    head = ("| scenario | policy | cost (mean ± 95 % CI) | vs no twin (paired by seed; city: vs the twin hidden) "
            "| per seed |\n|---|---|---|---|---|")
    parts, data = [], {}
    for scen in args.scenarios:
        rows, d = city_table(args.episodes) if scen == "city" else learned_table(scen, args.seeds, args.episodes)
        parts.append(rows)
        data[scen] = d
        print(rows, flush=True)
    table = head + "\n" + "\n".join(parts)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "twin_info.md").write_text(f"seeds {args.seeds}, {args.episodes} evaluation episodes from seed "
                                          f"{EVAL_SEED} (`python scripts/twin_info.py`)\n\n{table}\n")
        (out / "twin_info.json").write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    run_main(main)
