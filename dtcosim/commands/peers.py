"""Compare the project's MAPPO with the same environments trained by other RL libraries.

    pip install -e ".[peers-sb3]"   # or peers-benchmarl, peers-rllib (each in its own environment: pyproject.toml)
    dtcosim peers                        # 18,000 slots (600 episodes) per run, 3 seeds
    dtcosim peers --slots 54000          # the paper's budget (1800 episodes x 30 slots)
    dtcosim peers --methods mappo,sb3-ppo --seeds 5

Every (method, seed) cell trains in its own process with the same budget in slots
(one slot = one step of all CVs), then its policy is evaluated deterministically
with the project's evaluator on dtcosim evaluate's episodes (seeds 10000+i). The CPU
time is the training process's own (time.process_time, all its threads; Ray's
background daemons for RLlib are not counted). Prints and writes (to --out) the
table: CPU time and its ratio to the project's MAPPO (Ly-DTMPPO, agents/mappo.py),
and the system cost, mean over seeds with a Student-t 95 % CI. Finished cells are
kept in --out/cells and not redone.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import cosim
from cosim.cli import add_debug_arg, add_list_arg
from cosim.config import CosimError
from cosim.resources import REPO_ROOT
from cosim.stats import ci95

# The other libraries' training code is the repository's examples/ (sb3_ppo.py, ...), not part of the package.
EXAMPLES = REPO_ROOT / "examples"
# Where this package is imported from: a --cell child process imports the same copy.
PACKAGE_ROOT = Path(cosim.__file__).resolve().parent.parent

# method -> (label, example module with train(), the packages it needs)
METHODS: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "mappo": ("dtcosim Ly-DTMPPO (agents/mappo.py)", None, ()),
    "sb3-ppo": ("SB3 PPO via SuperSuit (examples/sb3_ppo.py)", "sb3_ppo", ("stable_baselines3", "supersuit")),
    "benchmarl-mappo": ("BenchMARL MAPPO (examples/benchmarl_mappo.py)", "benchmarl_mappo", ("benchmarl",)),
    "rllib-ppo": ("RLlib multi-agent PPO (examples/rllib_ppo.py)", "rllib_ppo", ("ray.rllib",)),
}
EXTRAS = {"sb3-ppo": "peers-sb3", "benchmarl-mappo": "peers-benchmarl", "rllib-ppo": "peers-rllib"}
EPISODE_SLOTS = 30


def example_module(module: str):
    """The examples/ module that trains with another library (a checkout has them; a wheel does not)."""
    if not (EXAMPLES / f"{module}.py").is_file():
        raise CosimError(f"the other libraries' training code is the repository's examples/{module}.py, which a "
                         f"pip-installed package does not have: run dtcosim peers from a checkout (git clone)")
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(module)


def missing(method: str) -> list[str]:
    out = []
    for pkg in METHODS[method][2]:
        try:
            if importlib.util.find_spec(pkg) is None:
                out.append(pkg)
        except ModuleNotFoundError:
            out.append(pkg)
    return out


def train_mappo(slots: int, seed: int, n_cvs: int):
    """The project's own MAPPO (Ly-DTMPPO) at the same budget, as a loaded policy."""
    from agents import train
    from agents.checkpoint import load_policy
    from cosim.config import load_config

    cfg = load_config().replace(**{"seed": seed, "scenario.n_cvs": n_cvs})
    out = Path(tempfile.mkdtemp(prefix="compare_mappo_"))
    res = train("ly-dtmppo", cfg, out=out, episodes=math.ceil(slots / EPISODE_SLOTS), progress=False,
                tensorboard=False, log=lambda s: None)
    return load_policy(res.run_dir / "policy.safetensors", name="ly-dtmppo")


def run_cell(method: str, seed: int, slots: int, n_cvs: int, episodes: int) -> dict:
    """Train one (method, seed) in this process; CPU seconds of the training and the evaluation summary."""
    from cosim.evaluation import evaluate_policies
    from cosim.config import load_config

    module = METHODS[method][1]
    train = train_mappo if module is None else example_module(module).train
    t0, w0 = time.process_time(), time.perf_counter()
    policy = train(slots, seed=seed, n_cvs=n_cvs)
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    cfg = load_config().replace(**{"scenario.n_cvs": n_cvs})
    summary = evaluate_policies(cfg, {method: policy}, episodes)[method]
    return {"method": method, "seed": seed, "slots": slots, "cpu_s": cpu, "wall_s": wall,
            "cost": summary["mean_cost"], "cost_ci95_episodes": summary["cost_ci95"], "episodes": episodes}


def table(cells: list[dict], skipped: dict[str, str], methods: list[str]) -> str:
    base = [c["cpu_s"] for c in cells if c["method"] == "mappo"]
    base_cpu = sum(base) / len(base) if base else float("nan")
    lines = ["| method | CPU s per run | CPU time vs project MAPPO | system cost ± 95 % CI | seeds |",
             "|---|---|---|---|---|"]
    for m in methods:
        if m in skipped:
            lines.append(f"| {METHODS[m][0]} | | | not run: {skipped[m]} | |")
            continue
        rows = [c for c in cells if c["method"] == m]
        if not rows:
            continue
        cpu = sum(c["cpu_s"] for c in rows) / len(rows)
        costs = [c["cost"] for c in rows]
        lines.append(f"| {METHODS[m][0]} | {cpu:.1f} | {cpu / base_cpu:.2f}x | "
                     f"{sum(costs) / len(costs):.3f} ± {float(ci95(np.array(costs))):.3f} | {len(rows)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slots", type=int, default=18000, help="training budget per run in slots (default 18000)")
    ap.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 per method (default 3)")
    add_list_arg(ap, "--methods", default=None, help=f"a subset of {', '.join(METHODS)} (default: all)")
    ap.add_argument("--cvs", type=int, default=5, help="number of CVs (default 5)")
    ap.add_argument("--episodes", type=int, default=20, help="evaluation episodes per run (default 20)")
    ap.add_argument("--out", default="runs/compare_peers", help="output folder (default runs/compare_peers)")
    ap.add_argument("--cell", nargs=2, metavar=("METHOD", "SEED"), help=argparse.SUPPRESS)  # one child run
    add_debug_arg(ap)
    args = ap.parse_args(argv)
    methods = list(METHODS) if args.methods is None else args.methods
    for m in methods:
        if m not in METHODS:
            raise CosimError(f"unknown method '{m}' in --methods (choose {', '.join(METHODS)})")
    if args.slots < EPISODE_SLOTS or args.seeds < 1 or args.episodes < 1 or args.cvs < 1:
        raise CosimError(f"--slots must be at least {EPISODE_SLOTS}; --seeds, --episodes and --cvs at least 1")
    if args.cell:
        print(json.dumps(run_cell(args.cell[0], int(args.cell[1]), args.slots, args.cvs, args.episodes)))
        return 0
    if "mappo" not in methods:
        methods.insert(0, "mappo")  # the reference every ratio is measured against

    out = Path(args.out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    skipped = {m: f"pip install -e \".[{EXTRAS[m]}]\" (missing {', '.join(missing(m))})" for m in methods
               if missing(m)}
    cells = []
    for seed in range(args.seeds):  # seed-major: an interrupted run still has every method at some seeds
        for m in methods:
            if m in skipped:
                continue
            path = out / "cells" / f"{m}__slots{args.slots}__cvs{args.cvs}__ep{args.episodes}__seed{seed}.json"
            if not path.is_file():
                cmd = [sys.executable, "-m", "dtcosim", "peers", "--cell", m, str(seed), "--slots", str(args.slots),
                       "--cvs", str(args.cvs), "--episodes", str(args.episodes)]
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                    [str(PACKAGE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                    raise CosimError(f"{m} seed {seed} failed: {tail}")
                path.write_text(proc.stdout.strip().splitlines()[-1])
            cell = json.loads(path.read_text())
            cells.append(cell)
            print(f"{m:16s} seed {seed}: cost {cell['cost']:.4f}, training CPU {cell['cpu_s']:.1f} s", flush=True)
    text = table(cells, skipped, methods)
    header = (f"{args.slots} training slots per run ({args.slots // EPISODE_SLOTS} episodes of {EPISODE_SLOTS}), "
              f"{args.cvs} CVs, seeds 0..{args.seeds - 1}; each policy evaluated on {args.episodes} episodes "
              f"(seeds 10000..{10000 + args.episodes - 1})")
    print(header)
    print(text)
    (out / "table.md").write_text(header + "\n\n" + text + "\n")
    (out / "results.json").write_text(json.dumps({"cells": cells, "skipped": skipped}, indent=2))
    print(f"wrote {out / 'table.md'}, {out / 'results.json'}")
    return 0

