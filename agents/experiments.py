"""The paper's experiment grid (Sec. VII): cells, budgets, and running them resumably.

An experiment file (``configs/experiments/*.yaml``) names algorithms, a sweep
and seeds; the grid is the union of the cells of every experiment, so a cell
two figures share (Ly-DTMPPO at 5 CVs and V = 5 is in Fig. 4, 5, 6 and 7) is
trained once. A cell trains one algorithm on one config with one seed, then
evaluates its policy deterministically on fresh seeds. A finished cell leaves
``done.json`` and is never redone; an interrupted one resumes from its
checkpoint. Cells run in worker processes, or on a Ray cluster.

A sweep axis is either a config key with a list of values (``lyapunov.V: [5, 10]``) or a named
axis whose values are named variants, each a group of overrides, a preset file, or nothing::

    sweep:
      scenario: {default: {}, congested: configs/scenarios/congested.yaml}
      twin: {none: {algo: ly-mappo}, paper: {}, global: {twin.view: global}}
    exclude: [{algo: dpp-opt, actions: best}]   # combinations not to run

A variant's ``algo`` replaces the cell's algorithm (Ly-MAPPO is Ly-DTMPPO without the twin).
Each record says which variant of each axis it belongs to (``variants``: experiment -> axis ->
variant), and figures select by those names. With ``eval_slots: N`` an experiment's cells are
evaluated on N-slot episodes (a long-horizon evaluation); a learned one evaluates the policy
trained by the same cell at the usual episode length (its training cell, run first), so the
long evaluation never retrains.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import time
import typing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from cosim.config import (Config, ConfigError, CosimError, _f, flat_overrides, flatten, load_config, load_settings,
                          read_json, read_yaml, to_dict)
from cosim.evaluation import EVAL_SEED
from cosim.resources import REPO_ROOT, config_dir
from cosim.signals import cancel_ray_tasks

EXPERIMENTS_DIR = config_dir() / "experiments"
DONE_FILE = "done.json"


ALGO_AXIS = "algo"  # the name an exclude entry (or a variant) uses for the algorithm


@dataclass(frozen=True)
class Experiment:
    """One figure's or table's worth of cells: an experiment file's settings, typed and checked by the
    config's loader (cosim.config.load_settings), so an unknown key or a wrong type is one line."""

    name: str = _f("", doc="the experiment's name (default: the file's stem)")
    description: str = _f("")
    algos: tuple[str, ...] = _f((), doc="algorithms and reference policies to run")
    sweep: dict = _f({}, doc="axes, the product is taken: a config key -> list of values, or an axis name -> "
                             "{variant name: config overrides (mapping), a preset file, or empty}")
    fixed: dict = _f({}, doc="config overrides shared by every cell (a variant's overrides win)")
    exclude: tuple[dict, ...] = _f((), doc="combinations not to run: each {algo: NAME, AXIS: VARIANT, ...} "
                                           "leaves out the cells matching all of its entries")
    eval_slots: int = _f(0, 0, 100_000, doc="evaluate on episodes this many slots long (a long-horizon "
                                            "evaluation, 0: scenario.episode_slots); training is unchanged")
    eval_episodes: int = _f(0, 0, 100_000, doc="long-horizon cells: evaluate on at most this many episodes (0: the "
                                               "budget's; a 3000-slot dpp-opt episode takes about a minute)")
    figures: tuple[str, ...] = _f((), doc="figures and tables the experiment feeds")

    @classmethod
    def load(cls, path: Path) -> Experiment:
        where = f"experiment file {path}"
        exp = load_settings(cls, read_yaml(path, "experiment file"), where)
        if not exp.algos:
            raise ConfigError(f"{where}: 'algos' must list at least one algorithm")
        if exp.eval_slots == 1:
            raise ConfigError(f"{where}: eval_slots must be 0 (the usual episodes) or at least 2, got 1")
        sweep: dict[str, Any] = {}
        for k, v in exp.sweep.items():
            if not isinstance(k, str) or (isinstance(v, (list, dict)) and not v):
                raise ConfigError(f"{where}: sweep.{k} must be a config key with at least one value, or an axis "
                                  f"with at least one named variant")
            if k == ALGO_AXIS:
                raise ConfigError(f"{where}: sweep.{k}: '{ALGO_AXIS}' is not an axis name (list algorithms in "
                                  f"'algos'; a variant may set algo)")
            if isinstance(v, dict):
                sweep[k] = {str(name): _variant(where, k, str(name), spec) for name, spec in v.items()}
            else:
                sweep[k] = tuple(_normalise(k, x) for x in (v if isinstance(v, list) else [v]))
        fixed = {k: _normalise(k, v) for k, v in flatten(exp.fixed).items()}
        # Variant names are strings (YAML may read a name such as 0 as a number): so are their mentions.
        exclude = tuple({k: str(v) if isinstance(sweep.get(k), dict) else v for k, v in e.items()}
                        for e in exp.exclude)
        exp = replace(exp, name=exp.name or path.stem, sweep=sweep, fixed=fixed, exclude=exclude)
        exp._check_axes(where)
        exp._check_exclude(where)
        return exp

    def axis_variants(self, axis: str) -> list[tuple[Any, dict[str, Any]]]:
        """(variant name, overrides) of one axis; a plain axis's variants are its values."""
        v = self.sweep[axis]
        if isinstance(v, dict):
            return list(v.items())
        return [(x, {axis: x}) for x in v]

    def combinations(self) -> Iterable[tuple[dict[str, Any], dict[str, Any], str | None]]:
        """Every (variant of each axis, their overrides, the algorithm a variant imposes or None)."""
        axes = sorted(self.sweep)
        for combo in itertools.product(*(self.axis_variants(a) for a in axes)):
            labels: dict[str, Any] = {}
            overrides: dict[str, Any] = {}
            for axis, (name, ov) in zip(axes, combo):
                labels[axis] = name
                overrides.update(ov)
            yield labels, {k: v for k, v in overrides.items() if k != ALGO_AXIS}, overrides.get(ALGO_AXIS)

    def excluded(self, algo: str, labels: Mapping[str, Any]) -> bool:
        return any(_matches(e, algo, labels) for e in self.exclude)

    def _check_axes(self, where: str) -> None:
        """Two axes that set the same key would make the product depend on the axes' order."""
        keys = {a: {k for _, ov in self.axis_variants(a) for k in ov} for a in self.sweep}
        for a, b in itertools.combinations(sorted(keys), 2):
            both = sorted(keys[a] & keys[b])
            if both:
                raise ConfigError(f"{where}: sweep axes '{a}' and '{b}' both set {both[0]}: give each key to one "
                                  f"axis")

    def _check_exclude(self, where: str) -> None:
        algos = set(self.algos) | {a for _, _, a in self.combinations() if a}
        combos = list(self.combinations())
        for i, entry in enumerate(self.exclude):
            at = f"{where}: exclude[{i}]"
            if not entry:
                raise ConfigError(f"{at} is empty: name an algo and/or a variant of an axis")
            for k, v in entry.items():
                if k == ALGO_AXIS:
                    if v not in algos:
                        raise ConfigError(f"{at}: algo '{v}' is not run by this experiment (its algos: "
                                          f"{', '.join(sorted(algos))})")
                elif k not in self.sweep:
                    choose = ", ".join([ALGO_AXIS, *sorted(self.sweep)])
                    raise ConfigError(f"{at}: unknown axis '{k}' (choose {choose})")
                else:
                    names = [n for n, _ in self.axis_variants(k)]
                    if v not in names:
                        raise ConfigError(f"{at}: axis '{k}' has no variant {v!r} (its variants: "
                                          f"{', '.join(map(str, names))})")
            if not any(_matches(entry, algo_of or a, labels) for labels, _, algo_of in combos for a in self.algos):
                raise ConfigError(f"{at} matches no cell of the experiment")


def _matches(entry: Mapping[str, Any], algo: str, labels: Mapping[str, Any]) -> bool:
    return all((algo == v) if k == ALGO_AXIS else (labels.get(k) == v) for k, v in entry.items())


def _field_type(key: str) -> Any:
    """The type of a dotted config key's field (None if it is not one: the config reports that later)."""
    tp: Any = Config
    for part in key.split("."):
        if not dataclasses.is_dataclass(tp):
            return None
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return None
        tp = hints[part]
    return tp


def _normalise(key: str, value: Any) -> Any:
    """One spelling per value, so that cells with equal settings get equal keys: YAML reads ``5.0e9`` as a
    string, a preset file and an inline override must agree; lists become tuples (hashable)."""
    tp = _field_type(key)

    def num(v: Any) -> Any:
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                return v
        return v
    if isinstance(value, list):
        floats = typing.get_origin(tp) is tuple and float in typing.get_args(tp)
        return tuple(num(v) if floats else v for v in value)
    return num(value) if tp is float else value


def _preset_file(spec: str) -> Path | None:
    """A preset named by path: as given (absolute or from the current folder), else under configs/."""
    p = Path(spec)
    cands = [p] if p.is_absolute() else [p, config_dir() / p]
    if not p.is_absolute() and p.parts and p.parts[0] == "configs":
        cands.append(config_dir().joinpath(*p.parts[1:]))
    return next((c for c in cands if c.is_file()), None)


def _variant(where: str, axis: str, name: str, spec: Any) -> dict[str, Any]:
    """A named variant's flat, checked overrides (``algo`` kept as a key)."""
    at = f"{where}: sweep.{axis}.{name}"
    if spec is None:
        return {}
    if isinstance(spec, str):
        f = _preset_file(spec)
        if f is None:
            raise ConfigError(f"{at}: preset file {spec} not found (looked in the current folder and configs/)")
        ov = flat_overrides([f])
    elif isinstance(spec, Mapping):
        ov = flatten(spec)
    else:
        raise ConfigError(f"{at} must be a mapping of config overrides, a preset file or empty, got {spec!r}")
    ov = {k: _normalise(k, v) for k, v in ov.items()}
    algo = ov.get(ALGO_AXIS)
    if algo is not None:
        from agents import ALGORITHMS, policy_names
        known = [*ALGORITHMS, *policy_names()]
        if algo not in known:
            raise ConfigError(f"{at}: unknown algorithm or policy '{algo}' (choose {', '.join(known)})")
    try:
        load_config(overrides=[f"{k}={json.dumps(v)}" for k, v in ov.items() if k != ALGO_AXIS])
    except ConfigError as exc:
        raise ConfigError(f"{at}: {exc}") from None
    return ov


@dataclass(frozen=True)
class Budget:
    """How long each cell trains and how many episodes evaluate it."""

    episodes: int
    eval_episodes: int
    seeds: int


PRESETS = {
    "full": Budget(episodes=1800, eval_episodes=20, seeds=3),   # the paper's budget
    "quick": Budget(episodes=150, eval_episodes=5, seeds=3),    # the paper's 135 cells in ~7 min on 2 cores (docs/guide/reproduction.md)
    "tiny": Budget(episodes=4, eval_episodes=1, seeds=1),       # tests: every code path; every experiment in ~1 min
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
    eval_slots: int = 0  # > 0: a long-horizon evaluation of the policy the same cell trains at the usual length
    # experiment -> {axis: variant}: which experiments list the cell, as what (not part of the key)
    variants: dict = field(default_factory=dict, compare=False)
    long_episodes: int = 0  # a long-horizon cell's episodes (0: eval_episodes); its training cell keeps eval_episodes

    @property
    def key(self) -> str:
        """A readable, unique folder name."""
        parts = [self.algo, self.backend]
        parts += [f"{k.split('.')[-1]}={_key_value(v)}" for k, v in self.overrides]
        if self.eval_slots:
            parts.append(f"slots={self.eval_slots}")
        parts += [f"ep={self.episodes}", f"seed={self.seed}"]
        key = "__".join(str(p).replace("/", "_").replace(" ", "") for p in parts)
        if len(key) > MAX_KEY:  # many overrides: a readable head and a digest of the whole
            key = f"{key[:MAX_KEY - 60]}__{hashlib.sha1(key.encode()).hexdigest()[:12]}__{'__'.join(parts[-2:])}"
        return key

    @property
    def training_cell(self) -> Cell | None:
        """The cell whose trained policy a long-horizon cell evaluates (None: nothing to share)."""
        return replace(self, eval_slots=0, long_episodes=0) if self.eval_slots and is_learned(self.algo) else None

    def config(self):
        cfg = load_config(overrides=[f"{k}={json.dumps(v)}" for k, v in self.overrides])
        return cfg.replace(**{"seed": self.seed, "backend": self.backend, "training.episodes": self.episodes})

    def setting(self) -> dict[str, Any]:
        return dict(self.overrides)


def _key_value(v: Any) -> str:
    """A value in a folder name: scalars as str() (so the keys of older results stay valid), except
    large whole floats (1e7, not 10000000.0); a list's items joined by commas."""
    if isinstance(v, (list, tuple)):
        return ",".join(map(_key_value, v)) or "[]"
    if isinstance(v, float) and v.is_integer() and abs(v) >= 1e4:
        digits = str(int(v))
        zeros = len(digits) - len(digits.rstrip("0"))
        return f"{digits[:len(digits) - zeros]}e{zeros}"  # exact: 25e5 is 2500000
    return str(v)


MAX_KEY = 230  # a folder name must stay under the file systems' 255 bytes


def _merge_variants(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    return {**a, **b}


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
    """The experiment's cells; ``base`` (dotted keys, e.g. from --config/--set) lies under its own overrides.

    A long-horizon experiment's learned cells come with their training cells (listed first)."""
    out: dict[str, Cell] = {}
    for labels, ov, algo_of in exp.combinations():
        overrides = dict(base or {})
        overrides.update(exp.fixed)
        overrides.update(ov)
        items = tuple(sorted(overrides.items()))
        for algo, seed in itertools.product(exp.algos, range(budget.seeds)):
            algo = algo_of or algo
            if exp.excluded(algo, labels):
                continue
            c = Cell(algo, seed, items, budget.episodes, budget.eval_episodes, backend, exp.eval_slots,
                     {exp.name: dict(labels)})
            long = (replace(c, long_episodes=min(exp.eval_episodes, budget.eval_episodes))
                    if c.eval_slots and exp.eval_episodes else c)
            for cell in filter(None, (c.training_cell, long)):
                if cell.key in out:  # a variant's algo can make two combinations one cell
                    cell = replace(out[cell.key], variants=_merge_variants(out[cell.key].variants, cell.variants))
                out[cell.key] = cell
    return list(out.values())


def grid(experiments: list[Experiment], budget: Budget, backend: str,
         base: Mapping[str, Any] | None = None) -> list[Cell]:
    """The union of every experiment's cells, each once, in a stable order."""
    seen: dict[str, Cell] = {}
    for exp in experiments:
        for c in cells_of(exp, budget, backend, base):
            if c.key in seen:
                c = replace(seen[c.key], variants=_merge_variants(seen[c.key].variants, c.variants))
            seen[c.key] = c
    return list(seen.values())


def is_learned(algo: str) -> bool:
    from agents import ALGORITHMS
    return algo in ALGORITHMS


def validate(cells: list[Cell]) -> None:
    """Fail before any work if a cell's config, algorithm or policy name is invalid, or if it asks for
    something its algorithm ignores or refuses."""
    from agents import ALGORITHMS, policy_names
    known = [*ALGORITHMS, *policy_names()]
    configs: dict[tuple, Any] = {}
    for c in cells:
        if c.algo not in known:
            raise ConfigError(f"unknown algorithm or policy '{c.algo}' (choose {', '.join(known)})")
        if c.overrides not in configs:  # many cells share a setting: build each config once
            configs[c.overrides] = c.config()
        cfg = configs[c.overrides]
        if c.algo == "dpp-opt" and (cfg.actions.bandwidth, cfg.actions.split, cfg.actions.cpu) != ("paper",) * 3:
            raise ConfigError(f"cell {c.key}: dpp-opt optimises the paper's actions only (actions.bandwidth/split/"
                              f"cpu = paper); leave this combination out with the experiment's exclude, e.g. "
                              f"exclude: [{{algo: dpp-opt, AXIS: VARIANT}}]")
        if c.algo in ALGORITHMS and dict(c.overrides).get("twin.enabled", ALGORITHMS[c.algo].twin) != \
                ALGORITHMS[c.algo].twin:
            raise ConfigError(f"cell {c.key}: twin.enabled={str(cfg.twin.enabled).lower()} is ignored by {c.algo}, "
                              f"whose twin flag is fixed: choose the algorithm instead (ly-dtmppo with the twin, "
                              f"ly-mappo without; a variant may set algo: ly-mappo)")


# ---------------------------------------------------------------------------
# Running one cell (in a worker process or a Ray task)

def run_cell(cell: Cell, root: str | Path) -> dict[str, Any]:
    """Train (or resume) and evaluate one cell; returns its record. Idempotent.

    A cell whose ``algo`` is a reference policy (equal, nearest, dpp-opt, ...) is only evaluated. A
    long-horizon cell (``eval_slots``) of a learned algorithm evaluates the policy of its training cell,
    running that cell first if it is not done.
    """
    run_dir = Path(root) / "cells" / cell.key
    done = run_dir / DONE_FILE
    if done.is_file():
        return read_json(done, "cell record")
    if cell.eval_slots:
        return _run_long_cell(cell, Path(root))
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
        # Each CV's local backlog (Fig. 5a) and each RSU's backlog after every slot, summed over episodes.
        queues = np.zeros((cfg.scenario.episode_slots, sim.n_cvs))
        rsu_queues = np.zeros((cfg.scenario.episode_slots, sim.n_rsus))

        def record_queues(out, episode: int, slot: int) -> None:
            queues[slot] += sim.queues.q_loc[0] / sim.params.W_ref
            rsu_queues[slot] += sim.queues.q_rsu[0] / sim.params.W_ref

        ev = run_episodes(sim, policy, cell.eval_episodes, seed=EVAL_SEED,
                          on_slot=record_queues, progress=False, policy_name=cell.algo)
    record = {"cell": _cell_dict(cell), "key": cell.key, "setting": cell.setting(), "algo": cell.algo,
              "seed": cell.seed, "variants": cell.variants, "eval": ev.summary,
              "eval_episodes": [asdict(e) for e in ev.episodes],
              "queue_trajectory": (queues / cell.eval_episodes).tolist(),
              "rsu_queue_trajectory": (rsu_queues / cell.eval_episodes).tolist(),
              "train_seconds": train_seconds, "train_slots_per_s": train_slots_per_s, "seconds": time.time() - t0}
    _write_record(done, record)
    return record


def _run_long_cell(cell: Cell, root: Path) -> dict[str, Any]:
    """Evaluate on ``cell.eval_slots``-slot episodes (cosim.evaluation.evaluate_long_horizon); a learned
    policy is the one its training cell trained (run here first if needed: never a second training)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from agents import make_policy
    from agents.checkpoint import load_policy
    from cosim.evaluation import evaluate_long_horizon

    t0 = time.time()
    base = cell.training_cell
    policy: Any
    if base is not None:
        run_cell(base, root)
        base_dir = root / "cells" / base.key
        policy = lambda sim: load_policy(base_dir, env=sim)  # noqa: E731
    else:
        policy = lambda sim: make_policy(cell.algo, sim.n_rsus, seed=cell.seed, env=sim)  # noqa: E731
    summaries, long = evaluate_long_horizon(cell.config(), {cell.algo: policy},
                                            cell.long_episodes or cell.eval_episodes, cell.eval_slots, seed=EVAL_SEED)
    run_dir = root / "cells" / cell.key
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = summaries[cell.algo]
    summary.pop("diagnostics_text", None)
    record = {"cell": _cell_dict(cell), "key": cell.key, "setting": cell.setting(), "algo": cell.algo,
              "seed": cell.seed, "variants": cell.variants, "eval": summary, "eval_slots": cell.eval_slots,
              "long_horizon": asdict(long[cell.algo]), "trained_in": base.key if base is not None else None,
              "train_seconds": 0.0, "train_slots_per_s": 0.0, "seconds": time.time() - t0}
    _write_record(run_dir / DONE_FILE, record)
    return record


def _cell_dict(cell: Cell) -> dict[str, Any]:
    """The cell's definition; which experiments list it is the record's own ``variants`` (kept up to date)."""
    return {k: v for k, v in asdict(cell).items() if k != "variants"}


def _write_record(done: Path, record: dict[str, Any]) -> None:
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=_json_default))
    os.replace(tmp, done)  # atomic: a cell is done or it is not


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def label_record(done: Path, cell: Cell) -> dict[str, Any]:
    """A finished cell's record, with the experiments now listing it added to its ``variants``
    (a cell another experiment ran first belongs to this one too)."""
    rec = read_json(done, "cell record")
    have = rec.get("variants") or {}
    merged = _merge_variants(have, cell.variants)
    if merged != have:
        rec["variants"] = merged
        _write_record(done, rec)
    return rec


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
            report.records.append(label_record(done, c))
            report.skipped += 1
        else:
            todo.append(c)
    # Long-horizon cells of learned policies wait for every training cell (added if not listed): two workers
    # never train in one folder.
    listed = {c.key for c in cells}
    extra = {t.key: t for c in todo if (t := c.training_cell) is not None and t.key not in listed
             and not (root / "cells" / t.key / DONE_FILE).is_file()}
    phases = [[*extra.values(), *(c for c in todo if c.training_cell is None)],
              [c for c in todo if c.training_cell is not None]]
    phases = [p for p in phases if p]
    bar = tqdm(total=len(cells) + len(extra), initial=report.skipped, unit="run", disable=not progress,
               dynamic_ncols=True, desc="grid")

    def finished(cell: Cell, rec: dict[str, Any] | None, err: BaseException | None) -> None:
        if err is not None:
            report.failed.append((cell.key, f"{type(err).__name__}: {err}"))
            bar.write(f"failed: {cell.key}: {err}")
        else:
            report.records.append(rec)
            if on_record:
                on_record(rec)
        bar.update(1)

    def runnable(phase: list[Cell]) -> list[Cell]:
        """A long-horizon cell whose training cell failed fails too (rather than train it again)."""
        out = []
        for c in phase:
            t = c.training_cell
            if t is not None and not (root / "cells" / t.key / DONE_FILE).is_file():
                finished(c, None, CosimError(f"its training cell {t.key} did not finish"))
            else:
                out.append(c)
        return out

    try:
        if ray_address is not None:
            _run_on_ray(phases, str(root), ray_address, finished, runnable)
        elif workers <= 1:
            for c in (c for phase in phases for c in runnable(phase)):
                try:
                    finished(c, run_cell(c, root), None)
                except CosimError as exc:
                    finished(c, None, exc)
        elif phases:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed
            from cosim.signals import stop_workers, worker_init
            # spawn: torch and forked interpreters do not mix well
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                     initializer=worker_init) as pool:
                try:
                    for phase in phases:
                        futures = {pool.submit(_run_cell_args, (c, str(root))): c for c in runnable(phase)}
                        for fut in as_completed(futures):
                            err = fut.exception()
                            finished(futures[fut], None if err else fut.result(), err)
                except BaseException:  # Ctrl-C, SIGTERM: no worker (nor its SUMO) outlives the grid
                    stop_workers(pool)
                    raise
    finally:
        bar.close()
    return report


RAY_CONNECT_TIMEOUT_S = 10.0


def check_ray_address(address: str, timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """One CosimError unless something accepts a connection at a ``[ray://]HOST:PORT`` address within
    ``timeout_s`` (ray.init waits for ever, deaf to Ctrl-C, where nothing listens)."""
    import re
    import socket
    m = re.fullmatch(r"(?:ray://)?\[?([^\]\s]+?)\]?:(\d+)", address.strip())
    if m is None:  # 'local', 'auto' and the like: Ray resolves them itself
        return
    host, port = m.group(1), int(m.group(2))
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise CosimError(f"--ray {address}: no Ray cluster answers at {host}:{port} within {timeout_s:g} s ({why}); "
                         f"start one there (ray start --head) or use --ray local") from None


def _run_on_ray(phases: list[list[Cell]], root: str, address: str, finished,
                runnable: Callable[[list[Cell]], list[Cell]] = list) -> None:
    """Each cell a Ray task with one CPU, phase after phase; ``address`` 'local' starts a local instance."""
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
            check_ray_address(address)
            kwargs["address"] = address
        # Workers must import this repository's packages wherever they run.
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}}
        ray.init(**kwargs)
    pending: dict[Any, Cell] = {}
    try:
        task = ray.remote(num_cpus=1)(run_cell)
        for cells in phases:
            pending = {task.remote(c, root): c for c in runnable(cells)}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    cell = pending.pop(ref)
                    try:
                        finished(cell, ray.get(ref), None)
                    except Exception as exc:  # a task's error arrives wrapped by Ray
                        finished(cell, None, exc)
    except BaseException:  # Ctrl-C, SIGTERM: the tasks this run started stop too (on a remote cluster as well)
        cancel_ray_tasks(pending)
        raise
    finally:
        if started:
            ray.shutdown()


def write_manifest(root: Path, experiments: list[Experiment], budget: Budget, backend: str, preset: str,
                   base: Mapping[str, Any] | None = None) -> None:
    """manifest.json: the budget and each experiment's definition and cells. Experiments an earlier run
    with the same budget wrote into ``root`` (e.g. ``--experiments`` one at a time) are kept."""
    manifest = {"preset": preset, "backend": backend, "budget": asdict(budget),
                "experiments": [{**asdict(e), "cells": [c.key for c in cells_of(e, budget, backend, base)]}
                                for e in experiments],
                "config": to_dict(load_config())}
    path = root / "manifest.json"
    if path.is_file():
        try:
            old = read_json(path, "manifest")
        except ConfigError:
            old = {}
        if isinstance(old, dict) and (old.get("backend"), old.get("budget")) == (backend, asdict(budget)):
            names = {e.name for e in experiments}
            manifest["experiments"] += [e for e in old.get("experiments", []) if e.get("name") not in names]
    path.write_text(json.dumps(manifest, indent=1, default=list))
