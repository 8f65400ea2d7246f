"""Learning agents: the algorithm registry and the one call that trains any of them.

    from agents import train
    result = train("ly-dtmppo", cfg, out="runs/mine")   # or resume="runs/mine"

Adding an algorithm (e.g. Ly-MADDPG): write ``agents/maddpg.py`` with a
:class:`agents.common.Trainer` subclass and register it below. Importing this
package does not import torch; the trainer module is imported when it is used.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cosim.config import Config, CosimError, load_config
from cosim.extra_sections import register_section
from cosim.resources import checkpoint_dir

if TYPE_CHECKING:
    from .common import FitResult, Trainer


@dataclass(frozen=True)
class Algorithm:
    """A registered algorithm: where its Trainer lives, whether its actors see the digital twin and
    which ``training.extra`` sections its settings come from."""

    module: str
    trainer: str
    twin: bool
    summary: str
    sections: tuple[str, ...] = ()

    def trainer_class(self) -> type[Trainer]:
        return getattr(importlib.import_module(self.module), self.trainer)


ALGORITHMS: dict[str, Algorithm] = {
    "ly-dtmppo": Algorithm("agents.mappo", "MAPPOTrainer", True, "MAPPO, actors see the digital twin (the paper's)",
                           ("mappo",)),
    "ly-mappo": Algorithm("agents.mappo", "MAPPOTrainer", False, "MAPPO without the twin's block (ablation)",
                          ("mappo",)),
    "ly-maddpg": Algorithm("agents.maddpg", "MADDPGTrainer", True, "MADDPG, deterministic actors, centralised Q",
                           ("offpolicy", "maddpg")),
    "ly-matd3": Algorithm("agents.matd3", "MATD3Trainer", True, "MATD3: twin critics, target smoothing, delays",
                          ("offpolicy", "matd3")),
    "ly-masac": Algorithm("agents.masac", "MASACTrainer", True, "MASAC: squashed Gaussians, auto temperature",
                          ("offpolicy", "masac")),
    "ly-dagger": Algorithm("agents.imitation", "DaggerTrainer", True,
                           "DAgger from the per-slot optimiser into the set actor (twin's view, any fleet)", ("dagger",)),
}
for _name, _spec in ALGORITHMS.items():  # config validation then refuses a misspelt training.extra section
    for _section in _spec.sections:
        register_section(_section, _name)


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise CosimError(f"unknown algorithm '{name}' (choose {', '.join(ALGORITHMS)})")
    return ALGORITHMS[name]


def make_trainer(algo: str, cfg: Config, **sim_kwargs: Any) -> Trainer:
    """Seed everything, build the training simulator (training.n_envs episodes at once) and the trainer.

    The algorithm's twin flag overrides ``twin.enabled``: that flag is what tells the two MAPPOs apart.
    """
    from cosim.env import BatchCoSim
    from cosim.trace_mobility import TraceMix, mixes_folders, trace_dirs

    from .common import seed_everything
    spec = get_algorithm(algo)
    if cfg.training.arch == "set" and spec.module not in ("agents.mappo", "agents.imitation"):  # off-policy: MLPs
        raise CosimError(f"training.arch=set is available for ly-dtmppo and ly-mappo, not {algo}")
    cfg = cfg.replace(**{"twin.enabled": spec.twin})
    sim_cfg = cfg
    if mixes_folders(cfg):  # several trace folders: MAPPO plays each batch on one (TraceMix)
        if spec.module != "agents.mappo":
            raise CosimError(f"trace.dir: mixing {len(trace_dirs(cfg))} trace folders is available for ly-dtmppo "
                             f"and ly-mappo, not {algo}")
        sim_cfg = TraceMix(cfg).folders[0].apply(cfg)  # checks every folder; the first is the base scenario
    seed_everything(cfg.seed)
    sim = BatchCoSim(sim_cfg, n_envs=cfg.training.n_envs, seed=cfg.seed,
                     initial_energy_queue=cfg.training.initial_energy_queue, **sim_kwargs)
    try:
        # sim.cfg: with the RSUs placed on the map; a mix keeps every folder in the trainer's config
        trainer = spec.trainer_class()(cfg if sim_cfg is not cfg else sim.cfg, sim)
    except BaseException:
        sim.close()
        raise
    trainer.name = algo
    return trainer


def train(algo: str | None, cfg: Config | None = None, out: str | Path | None = None,
          resume: str | Path | None = None, episodes: int | None = None, progress: bool = True,
          tensorboard: bool = True, stop_after: int | None = None, runs_root: str | Path = "runs",
          log=print, **sim_kwargs: Any) -> FitResult:
    """Train ``algo`` on ``cfg`` into ``out`` (default runs/scenario__algo__seed__time), or resume a run.

    With ``resume=DIR`` the algorithm and config come from DIR (``algo`` and ``cfg`` must then
    be None or agree); ``episodes`` may raise the budget of a finished run.
    """
    from cosim.outputs import OutputDir

    from .checkpoint import POLICY_FILE
    from .common import CHECKPOINT_FILE, CONFIG_FILE, CURVES_FILE, METRICS_FILE, fit, read_checkpoint_meta, run_name

    if resume is not None:
        run_dir = Path(resume)
        ckpt = run_dir / CHECKPOINT_FILE
        if not ckpt.is_file():
            raise CosimError(f"nothing to resume: {ckpt} not found")
        meta = read_checkpoint_meta(ckpt)
        if algo is not None and algo != meta["algo"]:
            raise CosimError(f"{run_dir} was trained with {meta['algo']}, not {algo}")
        algo = meta["algo"]
        get_algorithm(algo)
        cfg = load_config([run_dir / CONFIG_FILE])
    else:
        if algo is None:
            raise CosimError("no algorithm given")
        get_algorithm(algo)
        cfg = cfg if cfg is not None else load_config()
        run_dir = Path(out) if out is not None else Path(runs_root) / run_name(cfg, algo)
        if (run_dir / CHECKPOINT_FILE).is_file():
            raise CosimError(f"{run_dir} already holds a run ({CHECKPOINT_FILE}); continue it with --resume "
                             f"{run_dir} or choose another --out")
    # Written in place (not staged): the periodic checkpoints must survive a crash for --resume.
    # A fresh run refuses a folder holding files of these names that no run of dtcosim wrote; a resumed one
    # holds the run's own (its checkpoint was read above).
    writes = (CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE, POLICY_FILE, CURVES_FILE, "tb")
    with OutputDir(run_dir, staged=False, what="--resume" if resume is not None else "--out", writes=writes,
                   ours=(lambda f: True) if resume is not None else None):
        trainer = make_trainer(algo, cfg, **sim_kwargs)
        try:
            return fit(trainer, run_dir, episodes=episodes, resume=resume is not None, progress=progress,
                       tensorboard=tensorboard, stop_after=stop_after, algo=algo, log=log)
        finally:
            trainer.sim.close()


# ---------------------------------------------------------------------------
# Policies by name or file: reference policies, the per-slot optimiser, trained checkpoints

SHIPPED_CHECKPOINT = checkpoint_dir() / "ly-dtmppo_set.safetensors"     # set-structured: any CVs, any RSU layout
PAPER_CHECKPOINT = checkpoint_dir() / "ly-dtmppo_paper.safetensors"  # the paper's MLP and actions: 5 CVs, 3 RSUs only
# The paper's MLP for the default scenario with the shipped action options (configs/shipped.yaml), and its
# twin-less twin trained the same way: the pair that measures the twin's worth there.
DEFAULT_CHECKPOINT = checkpoint_dir() / "ly-dtmppo_default.safetensors"
MAPPO_CHECKPOINT = checkpoint_dir() / "ly-mappo_default.safetensors"
FALLBACK_POLICY = "equal"
SOLVERS = ("dpp-opt",)  # policies that need the whole simulator


def policy_names() -> list[str]:
    from cosim.policies import REFERENCE_POLICIES
    return [*REFERENCE_POLICIES, *SOLVERS]


def default_policy() -> str:
    """The shipped set-structured Ly-DTMPPO checkpoint (any --cvs, any RSU layout), or the best
    reference policy if it is missing."""
    return str(SHIPPED_CHECKPOINT) if SHIPPED_CHECKPOINT.is_file() else FALLBACK_POLICY


REFINED = re.compile(r"refined(\d*):(.+)")  # refinedN:POLICY: POLICY's proposal refined by N optimiser iterations


def refined_base(name_or_path: str) -> str:
    """The proposing policy of a ``refinedN:POLICY`` name (the name itself otherwise)."""
    m = REFINED.fullmatch(name_or_path)
    return m.group(2) if m else name_or_path


def config_for(name_or_path: str, cfg: Config, explicit: Any = ()) -> Config:
    """The config to deploy a policy under: a checkpoint's observation and action options
    (``agents.checkpoint.POLICY_OPTIONS``) unless set in ``explicit``; a named policy's: ``cfg``."""
    from cosim.policies import REFERENCE_POLICIES
    name_or_path = refined_base(name_or_path)
    if name_or_path in REFERENCE_POLICIES or name_or_path in SOLVERS or not Path(name_or_path).exists():
        return cfg
    from .checkpoint import config_for_policy, read_policy_file
    return config_for_policy(cfg, read_policy_file(name_or_path)[0], explicit)


def make_policy(name_or_path: str, n_rsus: int, seed: int | None = None, env: Any = None, name: str | None = None):
    """A reference policy or ``dpp-opt`` by name, or a trained checkpoint (file or run folder) by path."""
    from cosim.policies import REFERENCE_POLICIES
    if name_or_path in REFERENCE_POLICIES:
        return REFERENCE_POLICIES[name_or_path](n_rsus, seed)
    if name_or_path == "dpp-opt":
        from cosim.optimizer import DppOptimizer  # imported when used: it loads the compiled kernels
        return DppOptimizer(env, seed=seed)
    refine = REFINED.fullmatch(name_or_path)
    if refine:  # another policy's proposal, refined by a few optimiser iterations on the slot
        from cosim.optimizer import RefinedPolicy
        base = make_policy(refine.group(2), n_rsus, seed=seed, env=env, name=name)
        return RefinedPolicy(base, env, iterations=int(refine.group(1) or 10), seed=seed)
    path = Path(name_or_path)
    if path.exists():
        from .checkpoint import load_policy  # torch is imported only when a checkpoint is used
        return load_policy(path, env=env, name=name)
    if "/" in name_or_path or name_or_path.endswith((".pt", ".safetensors")):
        raise CosimError(f"policy checkpoint not found: {name_or_path}")
    raise CosimError(f"unknown policy '{name_or_path}' (choose {', '.join(policy_names())}, or a checkpoint path)")


__all__ = ["ALGORITHMS", "Algorithm", "get_algorithm", "make_trainer", "train", "make_policy", "default_policy", "refined_base",
           "config_for",
           "policy_names"]
