"""What every training algorithm shares: seeding, networks, the training loop and its outputs.

An algorithm is a :class:`Trainer` subclass (see ``agents/mappo.py``); the
loop :func:`fit` around it does everything else the same way for all of them:

* one place that seeds ``random``, numpy and torch and sets torch's threads;
* per-episode metrics to ``metrics.csv`` and TensorBoard (``charts/...``,
  ``losses/...``), a tqdm bar (episode, reward, cost, slots/s, time left);
* atomic checkpoints (temp file, then ``os.replace``) every
  ``training.checkpoint_every`` episodes, at the end and on Ctrl-C, holding
  everything a resumed run needs to finish exactly as an uninterrupted one:
  weights, optimiser moments, normaliser statistics, the metrics so far and
  the random states of numpy, torch, python and the simulator;
* the deployable policy (``policy.safetensors``, see ``agents/checkpoint.py``),
  training curves as PNG and the resolved config beside them.

Training happens in *iterations* of ``sim.n_envs`` whole episodes (the
simulator resets all environments together), so a checkpoint always falls
between iterations and never inside an episode.
"""

from __future__ import annotations

import copy
import csv
import ctypes
import json
import platform
import random
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from cosim.config import Config, CosimError, save_config, to_dict
from cosim.env import ACTION_BOUND, BatchCoSim
from cosim.runner import RECORD_FIELDS, EpisodeRecord, record_from_row
from cosim.signals import interrupt_behind
from cosim.stats import smooth
from cosim.trace_mobility import mixes_folders, trace_dirs

from .checkpoint import OBS_CLIP, POLICY_FILE, atomic_write, save_policy
from .nets import TORCH_THREADS, ActorSpec

CHECKPOINT_FILE = "checkpoint.safetensors"   # full training state, for --resume
METRICS_FILE = "metrics.csv"
CURVES_FILE = "curves.png"
CONFIG_FILE = "config.yaml"


# ---------------------------------------------------------------------------
# Seeding and random states

def seed_everything(seed: int, threads: int = TORCH_THREADS) -> None:
    """Seed python, numpy and torch (the simulator has its own generators) and fix torch's threads."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


def _generator_of(obj: Any) -> np.random.Generator | None:
    rng = getattr(obj, "_rng", None)
    return rng if isinstance(rng, np.random.Generator) else None


def capture_rng(sim: BatchCoSim) -> dict[str, Any]:
    """Every random state that drives training: python, numpy, torch, the simulator's generators."""
    ss = sim._seed_seq
    state: dict[str, Any] = {
        "python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
        "sim": sim._rng.bit_generator.state,
        "seed_seq": {"entropy": ss.entropy, "spawn_key": list(ss.spawn_key), "pool_size": ss.pool_size,
                     "n_children_spawned": ss.n_children_spawned},
    }
    for key, owner in (("twin", sim.twin), ("mobility", sim.mobility)):
        rng = _generator_of(owner)
        if rng is not None:
            state[key] = rng.bit_generator.state
    return state


def restore_rng(sim: BatchCoSim, state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    ss = state["seed_seq"]
    sim._seed_seq = np.random.SeedSequence(ss["entropy"], spawn_key=tuple(ss["spawn_key"]),
                                           pool_size=ss["pool_size"], n_children_spawned=ss["n_children_spawned"])
    sim._rng.bit_generator.state = state["sim"]
    for key, owner in (("twin", sim.twin), ("mobility", sim.mobility)):
        rng = _generator_of(owner)
        if rng is not None and key in state:
            rng.bit_generator.state = state[key]


def keep_freed_memory() -> None:
    """Let glibc's malloc serve large blocks from its heap and keep what is freed (instead of an mmap,
    fresh zeroed pages and an munmap for every tensor above 128 KiB, ~1000 page faults per MAPPO
    iteration): about 10 % less CPU time in training. Allocation addresses do not enter any result.
    A no-op where the C library is not glibc."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    libc.mallopt(m_mmap_threshold, 64 << 20)
    libc.mallopt(m_trim_threshold, 256 << 20)


_MALLOC_TUNED = False


# ---------------------------------------------------------------------------
# Normalisers

class RunningMeanStd:
    """Mean and variance over everything seen so far (Chan et al.'s parallel update), float64."""

    def __init__(self, shape: tuple[int, ...] = (), eps: float = 1e-4):
        self.mean = np.zeros(shape)
        self.var = np.ones(shape)
        self.count = eps

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64).reshape(-1, *self.mean.shape)
        b_mean, b_var, b_n = x.mean(0), x.var(0), x.shape[0]
        delta, tot = b_mean - self.mean, self.count + b_n
        self.mean = self.mean + delta * b_n / tot
        self.var = (self.var * self.count + b_var * b_n + delta**2 * self.count * b_n / tot) / tot
        self.count = tot

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var + 1e-8)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": float(self.count)}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.mean, self.var, self.count = np.asarray(d["mean"]), np.asarray(d["var"]), float(d["count"])


# ---------------------------------------------------------------------------
# Observation normalisation: the one normaliser of every trainer's network inputs

class Normalizer:
    """Running mean/std of raw inputs (numpy, float64); normalises float32 tensors, clipped to
    ``OBS_CLIP`` exactly as a deployed policy does. Disabled: the clip only (mean 0, std 1)."""

    def __init__(self, shape: tuple[int, ...], enabled: bool):
        self.rms = RunningMeanStd(shape)
        self.enabled = enabled
        self._refresh()

    def _refresh(self) -> None:
        self.mean = torch.as_tensor(self.rms.mean, dtype=torch.float32)
        self.std = torch.as_tensor(self.rms.std, dtype=torch.float32)

    def update(self, x: np.ndarray) -> None:
        if self.enabled:
            self.rms.update(x)
            self._refresh()

    def __call__(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x
        if self.enabled:
            x = (x - self.mean) / self.std
        return x.clamp(-OBS_CLIP, OBS_CLIP)

    def state_dict(self) -> dict[str, Any]:
        return self.rms.state_dict()

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.rms.load_state_dict(d)
        self._refresh()

    @staticmethod
    def policy_tensors(state: dict[str, Any] | None, dim: int) -> dict[str, torch.Tensor]:
        """``obs_mean`` and ``obs_std`` of a policy file from a Normalizer's state (None: disabled)."""
        if state is None:
            return {"obs_mean": torch.zeros(dim), "obs_std": torch.ones(dim)}
        return {"obs_mean": torch.as_tensor(state["mean"], dtype=torch.float32),
                "obs_std": torch.as_tensor(np.sqrt(state["var"] + 1e-8), dtype=torch.float32)}


# ---------------------------------------------------------------------------
# Adam over one flat buffer

class FlatAdam(torch.optim.Adam):
    """``torch.optim.Adam(foreach=True)`` with gradient-norm clipping, bit-identical to it and to
    ``clip_grad_norm_(foreach=True)``, on flat buffers: the parameters become views of one buffer,
    the moments live in two more and the gradients are gathered into a fourth, so a step is about
    ten tensor ops in all instead of about ten per parameter (on CPU the foreach ops loop over the
    tensors). Each parameter starts on a ``ALIGN``-float boundary, as a separately allocated one does
    (the matmuls read the weights where they are); the padding stays zero.

    The state dict is torch's Adam's (its per-parameter moments are views of the buffers), so
    checkpoints load in either; :meth:`load_state_dict` copies a loaded state back into the buffers.
    """

    ALIGN = 32  # floats: 128 bytes, at least torch's CPU allocation alignment, and whole AVX-512 loop chunks

    def __init__(self, params: list[nn.Parameter], lr: float, eps: float):
        params = list(params)
        super().__init__(params, lr=lr, eps=eps, foreach=True)
        self._params = params
        sizes = [p.numel() for p in params]
        padded = [-(-n // self.ALIGN) * self.ALIGN for n in sizes]
        self._offsets = np.concatenate([[0], np.cumsum(padded)[:-1]]).astype(int).tolist()
        total = int(sum(padded))
        self._flat = torch.zeros(total)
        self._exp_avg = torch.zeros(total)
        self._exp_avg_sq = torch.zeros(total)
        self._grad = torch.zeros(total)
        self._steps = torch.zeros(len(params))
        self._denom = torch.zeros(total)
        # cat(..., out=grad) writes every parameter's gradient and the (zero) padding after it in one op
        self._pads = [torch.zeros(q - n) for n, q in zip(sizes, padded)]
        with torch.no_grad():
            for p, o in zip(params, self._offsets):
                self._flat[o:o + p.numel()].copy_(p.reshape(-1))
                p.data = self._flat[o:o + p.numel()].view_as(p)
        self._bind()

    def _view(self, buf: torch.Tensor, i: int) -> torch.Tensor:
        p, o = self._params[i], self._offsets[i]
        return buf[o:o + p.numel()].view_as(p)

    def _bind(self) -> None:
        """Make torch's per-parameter state the views of the flat buffers (as its lazy init would, zeros)."""
        for i, p in enumerate(self._params):
            self.state[p] = {"step": self._steps[i], "exp_avg": self._view(self._exp_avg, i),
                             "exp_avg_sq": self._view(self._exp_avg_sq, i)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        loaded = [self.state.get(p, {}) for p in self._params]
        with torch.no_grad():
            for i, st in enumerate(loaded):
                self._steps[i] = st.get("step", 0.0)
                self._view(self._exp_avg, i).copy_(st.get("exp_avg", 0.0))
                self._view(self._exp_avg_sq, i).copy_(st.get("exp_avg_sq", 0.0))
        self._bind()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params:
            p.grad = None

    @torch.no_grad()
    def clip_and_step(self, max_grad_norm: float) -> None:
        """``clip_grad_norm_(params, max_grad_norm, foreach=True)`` (if > 0), then ``step()``."""
        grads = [p.grad for p in self._params]
        if any(g is None for g in grads):  # a parameter without a gradient: torch's own path, on the same state
            if max_grad_norm > 0:
                nn.utils.clip_grad_norm_(self._params, max_grad_norm, foreach=True)
            super().step()
            return
        clip = None
        if max_grad_norm > 0:  # the very expressions of torch.nn.utils.clip_grad (same ops, same roundings)
            total_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
            clip_coef = float(max_grad_norm) / (total_norm + 1e-6)
            clip = torch.clamp(clip_coef, max=1.0)
        torch.cat([t for g, pad in zip(grads, self._pads) for t in (g.reshape(-1), pad)], out=self._grad)
        if clip is not None:
            self._grad.mul_(clip)
        # torch.optim.adam._multi_tensor_adam (capturable=False, no weight decay, no amsgrad), one op per line
        group = self.param_groups[0]
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        self._steps += 1.0  # integers, exact in float32: what _foreach_add_(steps, 1.0) gives
        step = self._steps[0].item()
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        step_size = (lr / bias_correction1) * -1
        bias_correction2_sqrt = bias_correction2 ** 0.5
        g = self._grad
        self._exp_avg.lerp_(g, 1 - beta1)
        self._exp_avg_sq.mul_(beta2)
        self._exp_avg_sq.addcmul_(g, g, value=1 - beta2)
        denom = torch.sqrt(self._exp_avg_sq, out=self._denom)
        denom.div_(bias_correction2_sqrt)
        denom.add_(eps)
        self._flat.addcdiv_(self._exp_avg, denom, value=step_size)


# ---------------------------------------------------------------------------
# The interface every algorithm implements

@dataclass
class Iteration:
    """What one training iteration returns: its episodes and scalar training statistics."""

    episodes: list[EpisodeRecord]
    losses: dict[str, float]


class Trainer(ABC):
    """One learning algorithm driving a :class:`BatchCoSim`.

    Subclasses set ``name``, declare their learning state in ``STATE`` and implement
    ``iterate`` and ``actor``; :func:`fit` does the rest. ``iterate`` plays
    ``sim.n_envs`` whole episodes (``sim.reset()`` ... ``done``), learning during or
    after them as the algorithm likes (PPO after, off-policy methods with a replay
    buffer during), and returns their metrics via :class:`cosim.runner.EpisodeSums`.

    ``STATE`` maps a checkpoint key to an attribute holding part of the *complete*
    learning state: a network (``nn.Module``), a tensor or parameter, an optimiser,
    an object with ``state_dict``/``load_state_dict`` (normalisers, replay buffers)
    or an int counter. :meth:`state_dict` copies them all (it must not share memory
    with the live networks, since :func:`fit` keeps the last one to save on Ctrl-C)
    and :meth:`load_state_dict` puts them back; :func:`fit` adds the random states.
    ``actor(state)`` extracts the deployable policy from such a state.

    ``settings`` is the algorithm's typed settings dataclass; :meth:`resolved_config`
    is the config with those settings written out, as saved in the run's config.yaml.
    """

    name: str = "trainer"
    STATE: dict[str, str] = {}

    def __init__(self, cfg: Config, sim: BatchCoSim):
        self.cfg = cfg
        self.sim = sim
        keep_freed_memory()

    @abstractmethod
    def iterate(self, first_episode: int) -> Iteration: ...

    def resolved_config(self) -> Config:
        """The config with the algorithm's resolved settings (defaults included) in training.extra."""
        return self.cfg

    def state_dict(self) -> dict[str, Any]:
        # A part that is None (an optional helper this run does not use) is left out.
        return {key: _copy_part(getattr(self, attr)) for key, attr in self.STATE.items()
                if getattr(self, attr) is not None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = [k for k, attr in self.STATE.items() if k not in state and getattr(self, attr) is not None]
        if missing:
            raise CosimError(f"checkpoint lacks the {self.name} state '{missing[0]}'")
        for key, attr in self.STATE.items():
            part = getattr(self, attr)
            if part is None:
                continue
            if isinstance(part, int):
                setattr(self, attr, int(state[key]))
            else:
                _load_part(part, state[key])

    @abstractmethod
    def actor(self, state: dict[str, Any]) -> tuple[ActorSpec, dict[str, torch.Tensor]]:
        """The deployable actor of a ``state_dict()``: its spec and tensors (the AgentMLP's
        state dict under 'net.', 'obs_mean', 'obs_std' and, for Gaussian actors, 'log_std')."""


def _copy_part(part: Any) -> Any:
    """A copy of one declared part of a trainer's state (see Trainer.STATE)."""
    if isinstance(part, nn.Module):
        return {k: v.detach().clone() for k, v in part.state_dict().items()}
    if isinstance(part, torch.Tensor):
        return part.detach().clone()
    if isinstance(part, torch.optim.Optimizer):
        return copy.deepcopy(part.state_dict())
    if isinstance(part, int):
        return part
    return part.state_dict()  # normalisers and replay buffers return copies


def _load_part(part: Any, value: Any) -> None:
    if isinstance(part, torch.Tensor):
        with torch.no_grad():
            part.copy_(value)
    else:  # modules, optimisers, normalisers, replay buffers
        part.load_state_dict(value)


# ---------------------------------------------------------------------------
# Nested state <-> flat tensors + JSON, so a checkpoint is one safetensors file (no pickle)

def flatten_state(obj: Any, tensors: dict[str, torch.Tensor], path: str = "s") -> Any:
    """Move tensors/arrays of a nested structure into ``tensors``; return a JSON-able skeleton."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().clone().contiguous()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        tensors[path] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__ndarray__": path}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: flatten_state(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {"__items__": [[flatten_state(k, tensors, f"{path}.k{i}"), flatten_state(v, tensors, f"{path}.{i}")]
                              for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten_state(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten_state(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {path}")


def unflatten_state(skel: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skel, dict):
        if "__tensor__" in skel:
            return tensors[skel["__tensor__"]]
        if "__ndarray__" in skel:
            return tensors[skel["__ndarray__"]].numpy()
        if "__tuple__" in skel:
            return tuple(unflatten_state(v, tensors) for v in skel["__tuple__"])
        if "__items__" in skel:
            return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in skel["__items__"]}
        return {k: unflatten_state(v, tensors) for k, v in skel.items()}
    if isinstance(skel, list):
        return [unflatten_state(v, tensors) for v in skel]
    return skel


def save_state_file(path: Path, state: dict[str, Any], meta: dict[str, Any] | None = None) -> None:
    from safetensors.torch import save_file
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state(state, tensors)
    header = {"state": json.dumps(skeleton), "meta": json.dumps(meta or {})}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=header))


def _damaged(path: Path, why: str) -> CosimError:
    return CosimError(f"{path} is damaged or not a training checkpoint ({why}); train anew, or resume from a copy")


def read_checkpoint_meta(path: Path) -> dict[str, Any]:
    """The JSON metadata of a training checkpoint (algo, config), without reading its tensors."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        meta = json.loads(header.get("meta", "null"))
    except (SafetensorError, OSError, ValueError, RecursionError) as exc:
        raise _damaged(path, " ".join(str(exc).split())[:100]) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("algo"), str) or "state" not in header:
        raise _damaged(path, "no dtcosim training metadata")
    return meta


def load_state_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, meta) of a checkpoint; a truncated, random or foreign file is one CosimError."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        state = unflatten_state(json.loads(header["state"]), tensors)
        meta = json.loads(header.get("meta", "{}"))
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise _damaged(path, " ".join(str(exc).split())[:100] or type(exc).__name__) from None
    if not isinstance(state, dict) or not isinstance(meta, dict):
        raise _damaged(path, "its header is not a dtcosim state")
    return state, meta


# ---------------------------------------------------------------------------
# Runs

def scenario_name(cfg: Config) -> str:
    if mixes_folders(cfg):
        return f"{cfg.backend}-{len(trace_dirs(cfg))}folders"  # each batch replays one folder's fleet and RSUs
    return f"{cfg.backend}-{cfg.scenario.n_cvs}cv-{cfg.n_rsus}rsu"


def run_name(cfg: Config, algo: str) -> str:
    return f"{scenario_name(cfg)}__{algo}__{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class FitResult:
    run_dir: Path
    metrics: list[EpisodeRecord]
    episodes: int
    seconds: float          # wall time of this call's training
    slots_per_s: float      # environment slots (all E envs) per second in this call
    finished: bool          # reached the episode budget (False: stopped early via stop_after)


def _write_metrics_csv(path: Path, rows: list[EpisodeRecord]) -> None:
    def write(p: Path) -> None:
        with open(p, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(RECORD_FIELDS)
            w.writerows([[getattr(m, k) for k in RECORD_FIELDS] for m in rows])
    atomic_write(path, write)


def read_metrics_csv(path: Path) -> list[EpisodeRecord]:
    with open(path, newline="") as fh:
        return [record_from_row(r) for r in csv.DictReader(fh)]


def plot_curves(metrics: list[EpisodeRecord], path: Path, title: str) -> None:
    """Reward and system cost per episode, raw (faint) and smoothed, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = np.array([m.episode for m in metrics])
    window = max(1, len(metrics) // 30)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "reward", "mean reward R(t) per slot"),
                           (axes[1], "cost", "mean system cost per slot")):
        y = np.array([getattr(m, key) for m in metrics])
        ax.plot(ep, y, alpha=0.25, lw=0.8, color="C0")
        ax.plot(ep, smooth(y, window), lw=1.8, color="C0", label=f"moving average ({window} episodes)")
        ax.set_xlabel("episode")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        if key == "cost" and y.size and y.min() > 0 and y.max() / y.min() > 30:
            ax.set_yscale("log")  # early costs can be orders of magnitude above the converged ones
        if key == "reward" and y.size and y.max() < 0 and y.min() / y.max() > 30:
            ax.set_yscale("symlog")
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)


class _TensorBoard:
    """A SummaryWriter, or nothing when disabled."""

    def __init__(self, log_dir: Path | None, purge_step: int | None):
        self.w = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter
            self.w = SummaryWriter(str(log_dir), purge_step=purge_step)

    def episodes(self, rows: list[EpisodeRecord]) -> None:
        if self.w is None:
            return
        for m in rows:
            for k, v in asdict(m).items():
                if k not in ("episode", "seed"):
                    self.w.add_scalar(f"charts/{k}", v, m.episode)

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.w is not None:
            for k, v in values.items():
                self.w.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.w is not None:
            self.w.close()


def fit(trainer: Trainer, run_dir: str | Path, episodes: int | None = None, resume: bool = False,
        progress: bool = True, tensorboard: bool = True, stop_after: int | None = None,
        algo: str | None = None, log: Callable[[str], None] = print) -> FitResult:
    """Train ``trainer`` for ``episodes`` (default: training.episodes), writing into ``run_dir``.

    ``resume=True`` continues from ``run_dir/checkpoint.safetensors``. ``stop_after``
    ends this call (with a checkpoint) once that many episodes are done in total, as
    an interruption would. Ctrl-C saves the state at the last iteration boundary and re-raises.
    """
    from tqdm import tqdm

    cfg, sim = trainer.cfg, trainer.sim
    algo = algo or trainer.name
    total = episodes if episodes is not None else cfg.training.episodes
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / CHECKPOINT_FILE
    metrics: list[EpisodeRecord] = []
    done = 0
    if resume:
        if not ckpt_path.is_file():
            raise CosimError(f"no checkpoint to resume in {run_dir} (expected {CHECKPOINT_FILE})")
        state, meta = load_state_file(ckpt_path)
        if meta.get("algo") != algo:
            raise CosimError(f"checkpoint in {run_dir} is {meta.get('algo')}, not {algo}")
        try:
            trainer.load_state_dict(state["trainer"])
            restore_rng(sim, state["rng"])
            done = int(state["episodes"])
            metrics = [record_from_row(dict(zip(RECORD_FIELDS, r))) for r in state["metrics"].tolist()]
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as exc:
            raise _damaged(ckpt_path, f"its state does not fit this run: {' '.join(str(exc).split())[:100]}") from None
        # The budget of the run, raised by an earlier --resume --episodes N, persists in the checkpoint.
        budget = int(state.get("budget", cfg.training.episodes))
        if episodes is None:
            total = budget
        elif episodes < done:
            raise CosimError(f"--episodes {episodes} is below the {done} episodes {run_dir} has done already")
    else:
        save_config(trainer.resolved_config(), run_dir / CONFIG_FILE)  # every setting, defaults included
    _write_metrics_csv(run_dir / METRICS_FILE, metrics)  # a resumed run drops rows past its checkpoint

    def snapshot() -> dict[str, Any]:
        table = np.array([[getattr(m, k) for k in RECORD_FIELDS] for m in metrics], dtype=np.float64)
        return {"trainer": trainer.state_dict(), "rng": capture_rng(sim), "episodes": done, "budget": total,
                "metrics": table.reshape(-1, len(RECORD_FIELDS))}

    meta = {"algo": algo, "config": to_dict(trainer.resolved_config())}

    def save(snap: dict[str, Any]) -> None:
        save_state_file(ckpt_path, snap, meta)
        spec, tensors = trainer.actor(snap["trainer"])
        save_policy(run_dir / POLICY_FILE, spec, tensors, algo=algo, cfg=trainer.resolved_config(),
                    episodes=snap["episodes"])

    tb = _TensorBoard(run_dir / "tb" if tensorboard else None, purge_step=done if resume else None)
    stop = min(total, stop_after) if stop_after is not None else total
    bar = tqdm(total=total, initial=done, unit="ep", disable=not progress, dynamic_ncols=True, desc=algo)
    every = cfg.training.checkpoint_every
    boundary = snapshot()
    t0, slots = time.perf_counter(), 0
    try:
        while done < stop:
            it = trainer.iterate(done)
            if done == 0 and not any(r.tasks for r in it.episodes):  # nothing to learn from, ever
                raise CosimError(f"no vehicle became a CV in the first {len(it.episodes)} training episodes: on a "
                                 f"SUMO map check sumo.cv_vtype, the routes (vehicles must depart within the "
                                 f"episode) and sumo.warmup_s")
            rows = it.episodes[: total - done]  # the last iteration may overshoot the budget
            metrics.extend(rows)
            prev, done = done, done + len(rows)
            slots += len(it.episodes) * sim.episode_slots
            boundary = snapshot()
            elapsed = time.perf_counter() - t0
            tb.episodes(rows)
            tb.scalars("losses", it.losses, done)
            tb.scalars("charts", {"slots_per_s": slots / max(elapsed, 1e-9)}, done)
            with open(run_dir / METRICS_FILE, "a", newline="") as fh:
                csv.writer(fh).writerows([[getattr(m, k) for k in RECORD_FIELDS] for m in rows])
            bar.set_postfix(reward=f"{np.mean([m.reward for m in rows]):.2f}",
                            cost=f"{np.mean([m.cost for m in rows]):.3f}", slots_s=f"{slots / max(elapsed, 1e-9):.0f}",
                            refresh=False)
            bar.update(done - prev)
            if done // every > prev // every and done < stop:
                save(boundary)
        save(boundary)
    except (KeyboardInterrupt, SystemError) as exc:  # SystemError: an interrupt inside a numba kernel
        interrupt = interrupt_behind(exc)
        if interrupt is None:
            raise
        bar.close()
        save(boundary)
        log(f"interrupted: saved the state after {boundary['episodes']} episodes; continue with --resume {run_dir}")
        raise interrupt from None
    finally:
        bar.close()
        tb.close()
    elapsed = time.perf_counter() - t0
    if metrics:
        plot_curves(metrics, run_dir / CURVES_FILE, f"{algo} on {scenario_name(cfg)}, seed {cfg.seed}")
    return FitResult(run_dir, metrics, done, elapsed, slots / max(elapsed, 1e-9), finished=done >= total)


def clip_actions(raw: np.ndarray) -> np.ndarray:
    """The PettingZoo action space's bound, [-10, 10] (beyond it every softmax/sigmoid is saturated)."""
    return np.clip(raw, -ACTION_BOUND, ACTION_BOUND)
