"""Record SUMO mobility for the `trace` backend: many episodes, in parallel worker processes or on Ray.

    dtcosim traces --out traces/road --episodes 200                 # the paper's road
    dtcosim traces --out traces/cross --sumocfg path/to/cross.sumocfg --cvs 5 --episodes 100
    dtcosim traces --out traces/road --episodes 1000 --ray local    # or --ray ADDRESS
    dtcosim traces --out traces/ingolstadt21 --map resco/ingolstadt21 --cvs 64 --rsus 8 --penetration 0.3
    dtcosim train --algo ly-dtmppo --traces traces/road                    # train on the recording
    dtcosim evaluate --checkpoint runs/<run>/policy.safetensors --traces traces/road   # held-out part
    dtcosim train --algo ly-dtmppo --set training.arch=set --traces traces/road,traces/cross   # mix maps

Episode j is recorded with seed FIRST_SEED + j, exactly as SumoMobility(cfg).reset(seed) runs
it. RSUs on other maps are placed once (as dtcosim run would) and every episode uses them.
The last trace.eval_share of the episodes (by seed) are held out for evaluation.
Folders recorded on different maps (other RSU layouts, --cvs, episode lengths; the same slot
length) train one set-structured policy together: --traces A,B draws one folder per episode
batch (trace.mix: episodes | equal), and dtcosim evaluate --traces A,B reports each folder.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any


from cosim.cli import add_common_args, add_map_args, config_from_args, map_overrides
from cosim.config import Config, CosimError, with_rsus
from cosim.outputs import OutputDir, check_writable_dir, refuse_foreign
from cosim.resources import REPO_ROOT
from cosim.signals import cancel_ray_tasks, stop_workers, worker_init
from cosim.trace_mobility import record_episodes, split_episodes, write_meta, write_traces


def resolve_map(cfg: Config) -> tuple[Config, Any]:
    """The config with this map's RSUs fixed (placed once here, not in every worker)."""
    from cosim.sumo_mobility import SumoMobility

    mob = SumoMobility(cfg)
    try:
        rsus, name, summary = mob.rsu_configs(), mob._map.name, mob.map_summary
    finally:
        mob.close()
    fixed = with_rsus(cfg, rsus).replace(**{"sumo.rsu_placement": "config"})  # workers: no placement run
    if summary is not None:  # ... and no survey for the warm-up either
        fixed = fixed.replace(**{"sumo.warmup_s": summary.warmup_s})
    return fixed, (rsus, name)


def _on_ray(cfg: Config, chunks: list[list[int]], address: str, done) -> None:
    try:
        import ray
    except ImportError:
        raise CosimError("--ray needs Ray: pip install 'ray[default]' (or pip install -e '.[ray]')") from None
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "runtime_env": {"env_vars": {"PYTHONPATH": str(REPO_ROOT)}}}
        if address == "local":
            kwargs["num_cpus"] = os.cpu_count() or 2
        else:
            from agents.experiments import check_ray_address
            check_ray_address(address)
            kwargs["address"] = address
        ray.init(**kwargs)
    pending: dict[Any, int] = {}
    try:
        task = ray.remote(num_cpus=1)(record_episodes)
        pending = {task.remote(cfg, cfg.scenario.n_cvs, c): k for k, c in enumerate(chunks)}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                done(pending.pop(ref), ray.get(ref))
    except BaseException:  # Ctrl-C, SIGTERM: the tasks this run started stop too
        cancel_ray_tasks(pending)
        raise
    finally:
        if started:
            ray.shutdown()


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, backend_default="sumo")
    ap.add_argument("--out", required=True, help="trace folder to write (meta.json, traces_*.npz)")
    ap.add_argument("--episodes", type=int, default=100, help="episodes to record (default 100)")
    ap.add_argument("--first-seed", type=int, default=0, help="episode j uses seed FIRST_SEED + j (default 0)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes, one SUMO each (default 2)")
    ap.add_argument("--chunk", type=int, default=None, help="episodes per task (default: spread over the workers)")
    ap.add_argument("--ray", default=None, metavar="ADDRESS", help="run the tasks on Ray ('local' or an address; default: local worker processes)")
    add_map_args(ap)
    args = ap.parse_args(argv)
    if args.episodes < 1 or args.workers < 1 or (args.chunk is not None and args.chunk < 1):
        ap.error("--episodes, --workers and --chunk must be at least 1")
    cfg = config_from_args(args, defaults={"backend": "sumo"})
    cfg = cfg.replace(**map_overrides(args), backend="sumo")
    out = check_writable_dir(args.out)
    if list(out.glob("traces_*.npz")):
        raise CosimError(f"--out: {out} already holds traces; choose a new folder")
    refuse_foreign(out, {"meta.json"})  # before any SUMO starts; OutputDir checks again under its lock

    t0 = time.perf_counter()
    cfg, (rsus, name) = resolve_map(cfg)
    seeds = list(range(args.first_seed, args.first_seed + args.episodes))
    size = args.chunk or max(1, math.ceil(len(seeds) / (4 * args.workers)))
    chunks = [seeds[i:i + size] for i in range(0, len(seeds), size)]
    # Locked, and never over a meta.json the user put there; the traces land in place (chunk by chunk).
    with OutputDir(out, staged=False, writes={"meta.json", *(f"traces_{k:04d}.npz" for k in range(len(chunks)))}):
        return _record(args, out, cfg, rsus, name, seeds, chunks, t0)


def _record(args: argparse.Namespace, out: Path, cfg: Config, rsus: Any, name: str, seeds: list[int],
            chunks: list[list[int]], t0: float) -> int:
    write_meta(out, cfg, cfg.scenario.n_cvs, rsus, name)
    active: list[float] = []

    def done(k: int, arrays: dict) -> None:
        write_traces(out, arrays, part=k)
        active.append(float(arrays["active"].mean()))

    if args.ray is not None:
        _on_ray(cfg, chunks, args.ray, done)
    elif args.workers == 1:
        for k, c in enumerate(chunks):
            done(k, record_episodes(cfg, cfg.scenario.n_cvs, c))
    else:
        # spawn: each worker its own libsumo, never a forked copy of this process's SUMO state
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), initializer=worker_init) as pool:
            try:
                futures = [pool.submit(record_episodes, cfg, cfg.scenario.n_cvs, c) for c in chunks]
                for k, f in enumerate(futures):
                    done(k, f.result())
            except BaseException:  # Ctrl-C, SIGTERM, a failed chunk: no worker (nor its SUMO) outlives the run
                stop_workers(pool)
                raise
    seconds = time.perf_counter() - t0
    n_eval = len(split_episodes(len(seeds), cfg.trace.eval_share, "eval"))
    print(f"recorded {len(seeds)} episodes of {cfg.scenario.episode_slots} slots, {cfg.scenario.n_cvs} CV slots, "
          f"{len(rsus)} RSUs on {name} in {seconds:.1f} s ({len(chunks)} tasks); CV slots active "
          f"{sum(active) / len(active):.1%}; the last {n_eval} (by seed) are held out for evaluation")
    print(f"wrote {out}/meta.json, {out}/traces_*.npz; train with: dtcosim train --algo ly-dtmppo "
          f"--traces {out}")
    return 0

