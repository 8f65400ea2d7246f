#!/usr/bin/env python
"""Environment speed: slots/s and agent-slots/s, with ratios measured in this one run.

    python scripts/bench_env.py                 # analytic: PettingZoo env vs batch env (1, 16, 256)
    python scripts/bench_env.py --sumo          # also the SUMO-backed env (libsumo and TraCI), 5 and 50 CVs
    python scripts/bench_env.py --trace         # also the batch env replaying recorded SUMO traces (256 envs)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cosim.cli import run_main  # noqa: E402
from cosim.config import load_config  # noqa: E402
from cosim.env import make_batch_env, make_env  # noqa: E402
from cosim.runner import format_table  # noqa: E402


def bench_parallel_env(cfg, backend: str, seconds: float) -> tuple[float, int]:
    """Slots/s of the PettingZoo env stepping dict actions, as a user of the API would."""
    env = make_env(cfg, backend=backend, seed=0)
    rng = np.random.default_rng(0)
    actions = {a: rng.uniform(-10, 10, env.action_space(a).shape).astype(np.float32) for a in env.possible_agents}
    env.reset(seed=0)
    slots, t0 = 0, time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds:
            if not env.agents:
                env.reset()
            env.step(actions)
            slots += 1
    finally:
        elapsed = time.perf_counter() - t0
        env.close()
    return slots / elapsed, len(env.possible_agents)


def bench_batch_env(cfg, backend: str, n_envs: int, seconds: float) -> tuple[float, int]:
    """Environment-slots/s of the batch env (E slots per step)."""
    sim = make_batch_env(cfg, n_envs=n_envs, backend=backend, seed=0)
    raw = np.random.default_rng(0).uniform(-10, 10, (n_envs, sim.n_cvs, sim.action_dim))
    sim.reset(0)
    steps, t0 = 0, time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds:
            if sim.step(raw).done:
                sim.reset()
            steps += 1
    finally:
        elapsed = time.perf_counter() - t0
        sim.close()
    return steps * n_envs / elapsed, sim.n_cvs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="wall time per measurement")
    ap.add_argument("--sumo", action="store_true", help="also measure the SUMO backend")
    ap.add_argument("--trace", action="store_true",
                    help="also the trace backend at 256 envs (on 16 road episodes recorded first)")
    args = ap.parse_args()
    cfg = load_config()
    rows = []

    def add(name: str, backend: str, n_envs: int, cvs: int, slots_s: float, n_agents: int) -> None:
        rows.append({"env": name, "backend": backend, "envs": n_envs, "cvs": cvs,
                     "slots_s": slots_s, "agent_slots_s": slots_s * n_agents})

    base, n = bench_parallel_env(cfg, "analytic", args.seconds)
    add("PettingZoo", "analytic", 1, cfg.scenario.n_cvs, base, n)
    for e in (1, 16, 256):
        add("batch", "analytic", e, cfg.scenario.n_cvs, *bench_batch_env(cfg, "analytic", e, args.seconds))
    if args.sumo:
        for cvs in (5, 50):
            c = cfg.replace(**{"scenario.n_cvs": cvs})
            if cvs != cfg.scenario.n_cvs:
                add("PettingZoo", "analytic", 1, cvs, *bench_parallel_env(c, "analytic", args.seconds))
            for lib in (True, False):
                c2 = c.replace(**{"sumo.use_libsumo": lib})
                name = "PettingZoo (libsumo)" if lib else "PettingZoo (TraCI)"
                add(name, "sumo", 1, cvs, *bench_parallel_env(c2, "sumo", args.seconds))
    if args.trace:
        from cosim.trace_mobility import record_episodes, write_meta, write_traces
        with tempfile.TemporaryDirectory(prefix="cosim-bench-traces-") as d:
            write_traces(d, record_episodes(cfg, cfg.scenario.n_cvs, range(16)))
            write_meta(d, cfg, cfg.scenario.n_cvs, cfg.scenario.rsus, "the paper's road")
            c = cfg.replace(**{"trace.dir": d, "trace.part": "all"})
            add("batch", "trace", 256, cfg.scenario.n_cvs, *bench_batch_env(c, "trace", 256, args.seconds))
    ref: dict[int, float] = {}
    for r in rows:  # each CV count's first analytic PettingZoo row is its reference
        if r["env"] == "PettingZoo" and r["backend"] == "analytic":
            ref.setdefault(r["cvs"], r["agent_slots_s"])
    for r in rows:
        r["ratio"] = r["agent_slots_s"] / ref[r["cvs"]]
    print(format_table(rows, [("env", "env", "{}"), ("backend", "backend", "{}"), ("envs", "envs", "{:d}"),
                              ("cvs", "CVs", "{:d}"), ("slots_s", "slots/s", "{:,.0f}"),
                              ("agent_slots_s", "agent-slots/s", "{:,.0f}"),
                              ("ratio", "x PettingZoo analytic (same CVs)", "{:.2f}")]))
    if args.trace:
        speed = {r["backend"]: r["slots_s"] for r in rows if r["env"] == "batch" and r["envs"] == 256}
        print(f"trace backend at 256 envs: {speed['trace'] / speed['analytic']:.2f}x the analytic batch env's slots/s")
    return 0


if __name__ == "__main__":
    run_main(main)
