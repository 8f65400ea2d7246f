"""Deployable policies: save a trained actor, load it back without executing any code.

A policy file is one ``.safetensors`` file: the actor's tensors plus a JSON
header (``algo``, ``arch``, ``obs_dim``, ``action_dim``, ``n_cvs``, ``n_rsus``,
``twin``, ``share_params``, ``hidden``, the episodes trained and the full
config). Loading reads tensors and JSON only (no pickle), validates the header,
rebuilds the network from it and checks it against the environment it will drive.

Two architectures (``arch``): ``mlp``, the paper's actor, is tied to the
``n_cvs`` and ``n_rsus`` it was trained on; ``set`` (agents/entity.py) runs on
any number of CVs and RSUs and records instead the observation's entity layout
(``entity``: own blocks and RSU-token blocks), which the environment must match.

    policy = load_policy("checkpoints/ly-dtmppo_paper.safetensors", env=sim)
    raw = policy.act(obs)              # (E, I, D) -> (E, I, 3K+2), deterministic: the Gaussian mean
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from cosim.config import Config, CosimError, to_dict
from cosim.env import ACTION_BOUND
from cosim.outputs import temp_path
from cosim.twin import ObsLayout

from .entity import PER_CV, PER_RSU, SetActor, expand_log_std
from .nets import TORCH_THREADS, ActorSpec, AgentMLP

POLICY_FILE = "policy.safetensors"  # the deployable actor in a run folder
FORMAT = "dtcosim-policy/1"
OBS_CLIP = 10.0  # normalised observations are clipped to this, in training and deployment alike


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temp file in the same folder, then os.replace: a reader never sees half a file."""
    path = Path(path)
    tmp = temp_path(path)  # removed by the next run into this folder if a SIGKILL leaves it
    try:
        try:
            write(tmp)
        except Exception as exc:
            err = _as_oserror(exc, path)
            if err is exc:
                raise
            raise err from None
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as a plain open() would have made it (some writers use 0600)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _as_oserror(exc: Exception, path: Path) -> Exception:
    """safetensors reports a failed write (disk full, file-size limit) as a SafetensorError naming
    the OS error: the OSError it stands for, so it reads as every other full disk; other errors as they are."""
    import re
    if isinstance(exc, OSError) or type(exc).__name__ != "SafetensorError":
        return exc
    m = re.search(r"os error (\d+)", str(exc))
    if m is None:
        return exc
    code = int(m.group(1))
    return OSError(code, os.strerror(code), str(path))


def save_policy(path: str | Path, spec: ActorSpec, tensors: dict[str, torch.Tensor], algo: str, cfg: Config,
                episodes: int) -> Path:
    """Write the actor (tensors + JSON header) atomically to ``path``."""
    from safetensors.torch import save_file
    meta = {"format": FORMAT, "algo": algo, "arch": spec.arch, "obs_dim": spec.obs_dim, "action_dim": spec.action_dim,
            "n_cvs": spec.n_agents, "n_rsus": cfg.n_rsus, "twin": cfg.twin.enabled,
            "share_params": spec.share_params, "hidden": spec.hidden, "episodes": episodes,
            "actor": asdict(spec), "config": to_dict(cfg)}
    data = {k: v.detach().cpu().clone().contiguous().float() for k, v in tensors.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: save_file(data, str(p), metadata={"dtcosim": json.dumps(meta)}))
    return path


def read_policy_file(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a policy file or of a run folder holding one; one-line errors."""
    p = Path(path)
    if p.is_dir():
        p = p / POLICY_FILE
    if not p.is_file():
        raise CosimError(f"policy checkpoint not found: {path}")
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
            try:
                meta = json.loads(header["dtcosim"])
            except (KeyError, json.JSONDecodeError, RecursionError):
                raise CosimError(f"{p} is a safetensors file without dtcosim policy metadata") from None
            if not isinstance(meta, dict):
                raise CosimError(f"{p}: its dtcosim header is {type(meta).__name__}, not an object")
            if meta.get("format") != FORMAT:
                raise CosimError(f"{p} has policy format {meta.get('format')!r}, this code reads {FORMAT!r}")
            # Every size is checked against the tensors in the file before anything is allocated.
            validate_policy_header(p, meta, {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CosimError(f"{p} is not a policy checkpoint ({(str(exc).splitlines() or [''])[0][:80]})") from None
    for k, v in tensors.items():
        if not torch.isfinite(v).all():
            raise CosimError(f"{p}: tensor {k} holds NaN or infinite values; the policy cannot be used")
    if "obs_std" in tensors and not (tensors["obs_std"] > 0).all():
        raise CosimError(f"{p}: obs_std has zero or negative entries (observations are divided by it)")
    return meta, tensors


_KINDS = ("gaussian", "deterministic", "squashed")
MAX_POLICY_SIZE = 1 << 16  # a bound on every size in a header (agents, observation, action, hidden width)


def tensor_digest(path: str | Path) -> str:
    """sha256 over a policy file's tensors (name, dtype, shape and bytes, by name), not its JSON header.

    The header embeds the resolved config, which gains a key whenever the config does, so a policy
    retrained from its command gives the same tensors but another file sha256; this digest is what
    "retrains bit-identically" compares (checkpoints/README.md lists each shipped file's)."""
    import hashlib
    _, tensors = read_policy_file(path)
    h = hashlib.sha256()
    for name in sorted(tensors):
        x = tensors[name].contiguous()
        h.update(f"{name}|{x.dtype}|{tuple(x.shape)}|".encode())
        h.update(x.numpy().tobytes())
    return h.hexdigest()


def validate_policy_header(p: Path, meta: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
    """One CosimError unless the header describes an actor this code can rebuild: its fields have the
    right types and sensible values and the tensors in the file have exactly the shapes it implies."""
    def field(d: dict[str, Any], key: str, kind: type, where: str = "") -> Any:
        v = d.get(key)
        if kind is int:
            ok = isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_POLICY_SIZE
        else:
            ok = isinstance(v, kind)
        if not ok:
            what = f"a int in [1, {MAX_POLICY_SIZE}]" if kind is int else f"a {kind.__name__}"
            raise CosimError(f"{p}: policy header {where}{key} must be {what}, got {v!r}")
        return v

    for key in ("n_cvs", "n_rsus", "obs_dim", "action_dim", "hidden"):
        field(meta, key, int)
    field(meta, "algo", str)
    a = field(meta, "actor", dict)
    arch = a.get("arch", "mlp")
    if arch not in ("mlp", "set"):
        raise CosimError(f"{p}: policy header actor.arch {arch!r} is not mlp or set")
    kind = field(a, "kind", str, "actor.")
    if kind not in _KINDS:
        raise CosimError(f"{p}: actor.kind {kind!r} is not one of {', '.join(_KINDS)}")
    I, D, A, H = (field(a, k, int, "actor.") for k in ("n_agents", "obs_dim", "action_dim", "hidden"))
    shared = field(a, "share_params", bool, "actor.")
    if (I, D, A, H) != (meta["n_cvs"], meta["obs_dim"], meta["action_dim"], meta["hidden"]):
        raise CosimError(f"{p}: the header's sizes disagree with its actor's")
    if arch == "set":  # one network for any sizes; its width still must match the tensors
        want_ctx = (H, H)
        if shapes.get("net.rsu_ctx.weight") != want_ctx:
            raise CosimError(f"{p}: tensor net.rsu_ctx.weight has shape {list(shapes.get('net.rsu_ctx.weight', []))}, "
                             f"the header implies {list(want_ctx)}")
        ent = a.get("entity")
        if (not isinstance(ent, dict) or not isinstance(ent.get("own"), list) or not isinstance(ent.get("token"), list)
                or not all(isinstance(b, list) and len(b) == 2 and isinstance(b[0], str) and isinstance(b[1], int)
                           for b in ent["own"]) or not all(isinstance(b, str) for b in ent["token"])):
            raise CosimError(f"{p}: policy header actor.entity must list own blocks [name, width] and token "
                             f"block names, got {ent!r}")
        if shapes.get("log_std") != (len(PER_CV) + len(PER_RSU),):
            raise CosimError(f"{p}: set policy needs a log_std tensor of {len(PER_CV) + len(PER_RSU)} entries")
        return
    dt = a.get("dt_slice")
    if dt is not None and not (isinstance(dt, list) and len(dt) == 2 and all(isinstance(x, int) for x in dt)
                               and 0 <= dt[0] < dt[1] <= D):
        raise CosimError(f"{p}: actor.dt_slice {dt!r} is not [start, stop] within the {D} observation entries")
    g, d0 = (1, D + I) if shared else (I, D)
    want = {"net.layers.0.weight": (g, d0, H), "net.layers.0.bias": (g, H),
            "net.layers.1.weight": (g, H, H), "net.layers.1.bias": (g, H),
            "net.layers.2.weight": (g, H, A), "net.layers.2.bias": (g, A),
            "obs_mean": (D,), "obs_std": (D,)}
    if "log_std" in shapes:
        want["log_std"] = (I, A)
    for k, shape in want.items():
        if k not in shapes:
            raise CosimError(f"{p}: tensor {k} is missing")
        if shapes[k] != shape:
            raise CosimError(f"{p}: tensor {k} has shape {list(shapes[k])}, the header implies {list(shape)}")
    extra = sorted(set(shapes) - set(want))
    if extra:
        raise CosimError(f"{p}: unexpected tensor {extra[0]}")


class TrainedPolicy:
    """A trained actor with the reference policies' interface: ``act(obs, deterministic)``."""

    def __init__(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor], name: str | None = None,
                 seed: int | None = None):
        a = meta["actor"]
        self.meta = meta
        self.spec = ActorSpec(a["kind"], a["n_agents"], a["obs_dim"], a["action_dim"], a["hidden"],
                              a["share_params"], tuple(a["dt_slice"]) if a.get("dt_slice") else None,
                              arch=a.get("arch", "mlp"), entity=a.get("entity"), twin=a.get("twin", True))
        self.name = name or meta["algo"]
        s = self.spec
        if s.arch == "set":
            try:
                blocks = ObsLayout.blocks_of(s.entity)
            except (ValueError, KeyError, TypeError) as exc:
                raise CosimError(f"policy {self.name}: {exc}") from None
            self.net: torch.nn.Module = SetActor(blocks, s.hidden, orthogonal=False)
        else:
            self.net = AgentMLP(s.n_agents, s.obs_dim, s.action_dim, s.hidden, s.share_params, orthogonal=False)
        try:
            self.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        except RuntimeError as exc:  # missing, unexpected or mis-shaped tensors
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            detail = (lines[1] if len(lines) > 1 else lines[0] if lines else "")[:120]
            raise CosimError(f"policy {self.name}: tensors do not match its header ({detail})") from None
        self.net.eval()
        if s.arch == "set":
            self.obs_mean = self.obs_std = None
        else:
            self.obs_mean = tensors["obs_mean"].numpy().astype(np.float32)
            self.obs_std = tensors["obs_std"].numpy().astype(np.float32)
        self.log_std = tensors.get("log_std")
        self.gen = torch.Generator().manual_seed(seed if seed is not None else 0)

    def _act_set(self, obs: np.ndarray, deterministic: bool) -> np.ndarray:
        """The set actor on (E, I, D) observations of any I and K."""
        s = self.spec
        if obs.ndim != 3:
            raise CosimError(f"policy {self.name} expects observations (E, I, D), got {tuple(obs.shape)}")
        try:
            lay = ObsLayout.for_obs_dim(obs.shape[-1], self.net.blocks)
        except ValueError as exc:
            raise CosimError(f"policy {self.name}: {exc}") from None
        x = obs.copy()
        if not s.twin:  # trained without the twin: it never saw those blocks
            sl = lay.slices()
            for b in s.entity.get("twin", []):
                x[..., sl[b]] = 0.0
        x = np.clip(x, -OBS_CLIP, OBS_CLIP)
        with torch.no_grad():
            out = self.net(torch.from_numpy(x))
            if not deterministic and s.kind == "gaussian" and self.log_std is not None:
                std = expand_log_std(self.log_std, lay.n_rsus).exp()
                out = out + std * torch.randn(out.shape, generator=self.gen)
        return np.clip(out.numpy().astype(np.float64), -ACTION_BOUND, ACTION_BOUND)

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        s = self.spec
        obs = np.asarray(obs, dtype=np.float32)
        if s.arch == "set":
            return self._act_set(obs, deterministic)
        if obs.ndim != 3 or obs.shape[1:] != (s.n_agents, s.obs_dim):
            raise CosimError(f"policy {self.name} expects observations (E, {s.n_agents}, {s.obs_dim}), "
                             f"got {tuple(obs.shape)}")
        x = obs.copy()
        if s.dt_slice is not None:  # trained without the twin: it never saw this block
            x[..., s.dt_slice[0]:s.dt_slice[1]] = 0.0
        x = np.clip((x - self.obs_mean) / self.obs_std, -OBS_CLIP, OBS_CLIP)
        with torch.no_grad():
            out = self.net(torch.from_numpy(x))
            if not deterministic and s.kind == "gaussian" and self.log_std is not None:
                out = out + self.log_std.exp() * torch.randn(out.shape, generator=self.gen)
            if s.kind == "squashed":  # MASAC: the head is in raw units before the tanh
                out = ACTION_BOUND * torch.tanh(out / ACTION_BOUND)
        return np.clip(out.numpy().astype(np.float64), -ACTION_BOUND, ACTION_BOUND)


def fits(meta: dict[str, Any], cfg: Any) -> bool:
    """Whether a policy file's actor runs on ``cfg``'s fleet: a set-structured one on any, an MLP only on
    the CV and RSU counts it was trained on (``check_compatible`` says why not, against a built env)."""
    return meta.get("arch", "mlp") == "set" or (meta["n_cvs"], meta["n_rsus"]) == (cfg.scenario.n_cvs, cfg.n_rsus)


def check_compatible(meta: dict[str, Any], env: Any, where: str) -> None:
    """One-line CosimError when the checkpoint cannot drive the environment.

    An MLP checkpoint needs the CVs, observation and action sizes it was trained on; a set
    checkpoint runs on any CVs and RSUs but needs the observation's entity layout it was trained on.
    """
    if meta.get("actor", {}).get("arch", "mlp") == "set":
        have_sig, want_sig = meta["actor"]["entity"], env.layout.signature()
        if (have_sig["own"], have_sig["token"]) != (want_sig["own"], want_sig["token"]):
            view = policy_options(meta)["twin.view"]
            raise CosimError(f"checkpoint {where} reads RSU tokens {have_sig['token']} and own blocks "
                             f"{[b for b, _ in have_sig['own']]}, env has {want_sig['token']} and "
                             f"{[b for b, _ in want_sig['own']]} (it was trained with twin.view={view}: "
                             f"--set twin.view={view}, or build the env with agents.config_for)")
        return
    have = (meta["n_cvs"], meta["obs_dim"], meta["action_dim"], meta["n_rsus"])
    want = (env.n_cvs, env.obs_dim, env.action_dim, env.n_rsus)
    hint = " (an MLP policy runs only where it was trained; a set-architecture one, e.g. " \
           "checkpoints/ly-dtmppo_set.safetensors, runs on any)"
    if have[:2] != want[:2]:
        raise CosimError(f"checkpoint {where} has {have[0]} CVs x {have[1]} obs, env has {want[0]} CVs x {want[1]}"
                         + hint)
    if have[2:] != want[2:]:
        raise CosimError(f"checkpoint {where} has {have[3]} RSUs x {have[2]} actions, "
                         f"env has {want[3]} RSUs x {want[2]}" + hint)


# How a policy reads the environment and how its actions are projected: part of the policy. A run that
# deploys a checkpoint takes these from its header unless the run sets them itself (--config/--set).
POLICY_OPTIONS = ("actions.bandwidth", "actions.split", "actions.cpu", "twin.view", "twin.hide", "twin.info")


def options_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``POLICY_OPTIONS`` of a config as a plain mapping (``to_dict(cfg)``, or a policy header's
    config; keys it lacks, as in older files, are the paper's)."""
    defaults = {"actions.bandwidth": "paper", "actions.split": "paper", "actions.cpu": "paper",
                "twin.view": "paper", "twin.hide": [], "twin.info": "oracle"}
    out = {}
    for key in POLICY_OPTIONS:
        section, name = key.split(".")
        out[key] = (config.get(section) or {}).get(name, defaults[key])
    out["twin.hide"] = sorted(out["twin.hide"])  # a set of blocks: one spelling
    return out


def policy_options(meta: dict[str, Any]) -> dict[str, Any]:
    """The ``POLICY_OPTIONS`` a policy file was trained with."""
    return options_of(meta.get("config") or {})


def config_for_policy(cfg: Config, meta: dict[str, Any], explicit: Iterable[str] = ()) -> Config:
    """``cfg`` with the policy's ``POLICY_OPTIONS``, except the keys in ``explicit`` (set by the user)."""
    keep = set(explicit)
    changes = {k: v for k, v in policy_options(meta).items() if k not in keep}
    return cfg.replace(**changes) if changes else cfg


def warn_action_options(meta: dict[str, Any], env: Any, where: str) -> None:
    """One line on stderr when the environment projects actions differently from how the policy was
    trained (``actions.*``), or hides other twin blocks from it (``twin.hide``): allowed (deploying
    under other options is an experiment), never silent."""
    here_cfg = getattr(env, "cfg", None)
    if here_cfg is None:
        return
    trained, here = policy_options(meta), options_of(to_dict(here_cfg))
    # (another twin.view is another observation layout: check_compatible refuses it)
    keys = [k for k in POLICY_OPTIONS if k != "twin.view" and trained[k] != here[k]]
    if keys:
        show = lambda v: "[" + ",".join(v) + "]" if isinstance(v, list) else v  # noqa: E731
        was = " ".join(f"{k}={show(trained[k])}" for k in keys)
        now = " ".join(f"{k}={show(here[k])}" for k in keys)
        print(f"warning: {where} was trained with {was}; this run uses {now} "
              f"(--set {' --set '.join(was.split())} matches them)", file=sys.stderr)


def load_policy(path: str | Path, env: Any = None, name: str | None = None, seed: int | None = None) -> TrainedPolicy:
    """A trained policy from a ``.safetensors`` file (or a run folder); checked against ``env`` if given."""
    meta, tensors = read_policy_file(path)
    if env is not None:
        check_compatible(meta, env, str(path))
        warn_action_options(meta, env, str(path))
    torch.set_num_threads(TORCH_THREADS)  # batch-of-a-few inference: threads only add overhead
    return TrainedPolicy(meta, tensors, name=name, seed=seed)
