"""The paper's experiment grid (Sec. VII): cells, budgets, and running them resumably.

An experiment file (``configs/experiments/*.yaml``) names algorithms, a sweep
and seeds; the grid is the union of the cells of every experiment, so a cell
two figures share (Ly-DTMPPO at 5 CVs and V = 5 is in Fig. 4, 5, 6 and 7) is
trained once. A cell trains one algorithm on one config with one seed, then
evaluates its policy deterministically on fresh seeds. A finished cell leaves
``done.json`` and is never redone; an interrupted one resumes from its
checkpoint. Cells run in worker processes, or on a Ray cluster.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from cosim.config import ConfigError, CosimError, _f, load_config, load_settings, read_json, read_yaml, to_dict
from cosim.evaluation import EVAL_SEED
from cosim.resources import REPO_ROOT, config_dir

EXPERIMENTS_DIR = config_dir() / "experiments"
DONE_FILE = "done.json"


@dataclass(frozen=True)
class Experiment:
    """One figure's or table's worth of cells: an experiment file's settings, typed and checked by the
    config's loader (cosim.config.load_settings), so an unknown key or a wrong type is one line."""

    name: str = _f("", doc="the experiment's name (default: the file's stem)")
    description: str = _f("")
    algos: tuple[str, ...] = _f((), doc="algorithms and reference policies to run")
    sweep: dict = _f({}, doc="config key -> list of values (the product is taken)")
    fixed: dict = _f({}, doc="config overrides shared by every cell")
    figures: tuple[str, ...] = _f((), doc="figures and tables the experiment feeds")

    @classmethod
    def load(cls, path: Path) -> "Experiment":
        where = f"experiment file {path}"
        exp = load_settings(cls, read_yaml(path, "experiment file"), where)
        if not exp.algos:
            raise ConfigError(f"{where}: 'algos' must list at least one algorithm")
        for k, v in exp.sweep.items():
            if not isinstance(k, str) or (isinstance(v, list) and not v):
                raise ConfigError(f"{where}: sweep.{k} must be a config key with at least one value")
        sweep = {k: tuple(v if isinstance(v, list) else [v]) for k, v in exp.sweep.items()}
        return replace(exp, name=exp.name or path.stem, sweep=sweep)


@dataclass(frozen=True)
class Budget:
    """How long each cell trains and how many episodes evaluate it."""

    episodes: int
    eval_episodes: int
    seeds: int


PRESETS = {
    "full": Budget(episodes=1800, eval_episodes=20, seeds=3),   # the paper's budget
    "quick": Budget(episodes=150, eval_episodes=5, seeds=3),    # the whole grid in ~5 min on 2 cores
    "tiny": Budget(episodes=4, eval_episodes=1, seeds=1),       # tests: every code path, seconds
}


@dataclass(frozen=True)
class Cell:
    """One training run plus its evaluation."""

    algo: str
    seed: int
    overrides: tuple[tuple[str, Any], ...]  # sorted (key, value) pairs
    episodes: int
    eval_episodes: int
    backend: str

    @property
    def key(self) -> str:
        """A readable, unique folder name."""
        parts = [self.algo, self.backend]
        parts += [f"{k.split('.')[-1]}={v}" for k, v in self.overrides]
        parts += [f"ep={self.episodes}", f"seed={self.seed}"]
        return "__".join(str(p).replace("/", "_").replace(" ", "") for p in parts)

    def config(self):
        cfg = load_config(overrides=[f"{k}={json.dumps(v)}" for k, v in self.overrides])
        return cfg.replace(**{"seed": self.seed, "backend": self.backend, "training.episodes": self.episodes})

    def setting(self) -> dict[str, Any]:
        return dict(self.overrides)


def load_experiments(names: Iterable[str] | None = None, directory: Path = EXPERIMENTS_DIR) -> list[Experiment]:
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise ConfigError(f"no experiment files in {directory}")
    exps = [Experiment.load(f) for f in files]
    if names:
        wanted = list(names)
        known = {e.name for e in exps}
        for n in wanted:
            if n not in known:
                raise ConfigError(f"unknown experiment '{n}' (choose {', '.join(sorted(known))})")
        exps = [e for e in exps if e.name in wanted]
    return exps


def cells_of(exp: Experiment, budget: Budget, backend: str, base: Mapping[str, Any] | None = None) -> list[Cell]:
    """The experiment's cells; ``base`` (dotted keys, e.g. from --config/--set) lies under its own overrides."""
    keys = sorted(exp.sweep)
    out = []
    for values in itertools.product(*(exp.sweep[k] for k in keys)):
        overrides = dict(base or {})
        overrides.update(exp.fixed)
        overrides.update(zip(keys, values))
        for algo, seed in itertools.product(exp.algos, range(budget.seeds)):
            out.append(Cell(algo, seed, tuple(sorted(overrides.items())), budget.episodes,
                            budget.eval_episodes, backend))
    return out


def grid(experiments: list[Experiment], budget: Budget, backend: str,
         base: Mapping[str, Any] | None = None) -> list[Cell]:
    """The union of every experiment's cells, each once, in a stable order."""
    seen: dict[str, Cell] = {}
    for exp in experiments:
        for c in cells_of(exp, budget, backend, base):
            seen.setdefault(c.key, c)
    return list(seen.values())


def is_learned(algo: str) -> bool:
    from agents import ALGORITHMS
    return algo in ALGORITHMS


def validate(cells: list[Cell]) -> None:
    """Fail before any work if a cell's config, algorithm or policy name is invalid."""
    from agents import ALGORITHMS, policy_names
    known = [*ALGORITHMS, *policy_names()]
    for c in cells:
        if c.algo not in known:
            raise ConfigError(f"unknown algorithm or policy '{c.algo}' (choose {', '.join(known)})")
        c.config()


# ---------------------------------------------------------------------------
# Running one cell (in a worker process or a Ray task)

def run_cell(cell: Cell, root: str | Path) -> dict[str, Any]:
    """Train (or resume) and evaluate one cell; returns its record. Idempotent.

    A cell whose ``algo`` is a reference policy (equal, nearest, dpp-opt, ...) is only evaluated.
    """
    run_dir = Path(root) / "cells" / cell.key
    done = run_dir / DONE_FILE
    if done.is_file():
        return read_json(done, "cell record")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per worker
    from agents import make_policy, train
    from agents.checkpoint import load_policy
    from agents.common import CHECKPOINT_FILE
    from cosim.env import BatchCoSim
    from cosim.runner import run_episodes

    t0 = time.time()
    cfg = cell.config()
    run_dir.mkdir(parents=True, exist_ok=True)
    train_seconds = train_slots_per_s = 0.0
    if is_learned(cell.algo):
        resume = (run_dir / CHECKPOINT_FILE).is_file()
        fit = train(None if resume else cell.algo, None if resume else cfg, out=run_dir,
                    resume=run_dir if resume else None, progress=False, tensorboard=False, log=lambda s: None)
        train_seconds, train_slots_per_s = fit.seconds, fit.slots_per_s
    with BatchCoSim(cfg, n_envs=1, seed=cfg.seed) as sim:
        policy = (load_policy(run_dir, env=sim) if is_learned(cell.algo)
                  else make_policy(cell.algo, sim.n_rsus, seed=cell.seed, env=sim))
        # Each CV's local backlog after every slot, summed over evaluation episodes (Fig. 5a).
        queues = np.zeros((cfg.scenario.episode_slots, sim.n_cvs))

        def record_queues(out, episode: int, slot: int) -> None:
            queues[slot] += sim.queues.q_loc[0] / sim.params.W_ref

        ev = run_episodes(sim, policy, cell.eval_episodes, seed=EVAL_SEED,
                          on_slot=record_queues, progress=False, policy_name=cell.algo)
    record = {"cell": asdict(cell), "key": cell.key, "setting": cell.setting(), "algo": cell.algo,
              "seed": cell.seed, "eval": ev.summary, "eval_episodes": [asdict(e) for e in ev.episodes],
              "queue_trajectory": (queues / cell.eval_episodes).tolist(),
              "train_seconds": train_seconds, "train_slots_per_s": train_slots_per_s, "seconds": time.time() - t0}
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, done)  # atomic: a cell is done or it is not
    return record


def _run_cell_args(args: tuple[Cell, str]) -> dict[str, Any]:
    return run_cell(*args)


@dataclass
class GridReport:
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def run_grid(cells: list[Cell], root: str | Path, workers: int = 2, ray_address: str | None = None,
             progress: bool = True, on_record: Callable[[dict[str, Any]], None] | None = None) -> GridReport:
    """Run every cell not yet done, ``workers`` at a time (processes), or on Ray."""
    from tqdm import tqdm

    root = Path(root)
    (root / "cells").mkdir(parents=True, exist_ok=True)
    report = GridReport()
    todo = []
    for c in cells:
        done = root / "cells" / c.key / DONE_FILE
        if done.is_file():
            report.records.append(read_json(done, "cell record"))
            report.skipped += 1
        else:
            todo.append(c)
    bar = tqdm(total=len(cells), initial=report.skipped, unit="run", disable=not progress, dynamic_ncols=True,
               desc="grid")

    def finished(cell: Cell, rec: dict[str, Any] | None, err: BaseException | None) -> None:
        if err is not None:
            report.failed.append((cell.key, f"{type(err).__name__}: {err}"))
            bar.write(f"failed: {cell.key}: {err}")
        else:
            report.records.append(rec)
            if on_record:
                on_record(rec)
        bar.update(1)

    try:
        if ray_address is not None:
            _run_on_ray(todo, str(root), ray_address, finished)
        elif workers <= 1:
            for c in todo:
                try:
                    finished(c, run_cell(c, root), None)
                except CosimError as exc:
                    finished(c, None, exc)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed
            # spawn: torch and forked interpreters do not mix well
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
                futures = {pool.submit(_run_cell_args, (c, str(root))): c for c in todo}
                try:
                    for fut in as_completed(futures):
                        exc = fut.exception()
                        finished(futures[fut], None if exc else fut.result(), exc)
                except KeyboardInterrupt:
                    for f in futures:
                        f.cancel()
                    raise
    finally:
        bar.close()
    return report


def _run_on_ray(cells: list[Cell], root: str, address: str, finished) -> None:
    """Each cell a Ray task with one CPU; ``address`` 'local' starts a local instance."""
    try:
        import ray
    except ImportError:
        raise CosimError("--ray needs Ray: pip install 'ray[default]' (or pip install -e '.[ray]')") from None
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address == "local":
            kwargs["num_cpus"] = os.cpu_count() or 2
        else:
            kwargs["address"] = address
        # Workers must import this repository's packages wherever they run.
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}}
        ray.init(**kwargs)
    try:
        task = ray.remote(num_cpus=1)(run_cell)
        pending = {task.remote(c, root): c for c in cells}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                cell = pending.pop(ref)
                try:
                    finished(cell, ray.get(ref), None)
                except Exception as exc:  # a task's error arrives wrapped by Ray
                    finished(cell, None, exc)
    finally:
        if started:
            ray.shutdown()


def write_manifest(root: Path, experiments: list[Experiment], budget: Budget, backend: str, preset: str) -> None:
    manifest = {"preset": preset, "backend": backend, "budget": asdict(budget),
                "experiments": [{**asdict(e), "cells": [c.key for c in cells_of(e, budget, backend)]}
                                for e in experiments],
                "config": to_dict(load_config())}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1, default=list))
