"""Recorded SUMO mobility, replayed at batch speed.

``scripts/record_traces.py`` runs a map in SUMO for many episodes and stores, for every
episode, slot and CV slot, what :class:`~cosim.sumo_mobility.SumoMobility` reported: position,
speed, heading, lane and the active flag. :class:`TraceMobility` replays them inside the batch
environment: each of its E environments replays one recorded episode, drawn (with replacement)
by the reset seed, so training sees SUMO's car following and lane changes at the cost of an
array lookup per slot.

A trace folder holds ``meta.json`` (the map, its RSUs, slot length, episode length, CV slots,
the configuration that recorded it) and one or more ``traces_*.npz`` files with arrays of shape
(N, T + 1, I): ``x``, ``y``, ``speed``, ``heading`` (float32), ``lane`` (int16), ``active``
(bool), and ``seeds`` (N,), the seed each episode was recorded with. Episodes are ordered by
seed; the last ``trace.eval_share`` of them are held out for evaluation (``trace.part``).

Several folders (``trace.dir`` a list; ``--traces A,B`` or ``--traces A --traces B``), recorded
on different maps, with different RSU layouts, CV slots and episode lengths, are mixed by
training: a simulator replays one folder (its RSUs, its fleet), so :class:`TraceMix` draws one
folder per episode batch from its own seeded generator, with weights ``trace.mix`` (``episodes``:
proportional to each folder's episodes in ``trace.part``, so every recorded episode is equally
likely; ``equal``: every folder equally likely), and the trainer plays that batch on a simulator
of that folder, as ``training.scenarios`` does with drawn layouts. A folder replays
``scenario.n_cvs`` CVs, or all its CV slots where it holds fewer; every folder must have the
slot length of the others (and ``scenario.slot_s``) and at least ``scenario.episode_slots``
slots (episodes replay the first ones). The set-structured policy (``training.arch=set``) mixes
any folders; the MLP only folders with ``scenario.n_cvs`` CVs and equal RSU counts.
``trace.part`` and ``trace.eval_share`` apply per folder; ``evaluate.py`` reports each folder.

    python scripts/train.py --algo ly-dtmppo --set training.arch=set --traces traces/road,traces/grid
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .config import Config, ConfigError, CosimError, RSUConfig
from .mobility import BatchMobility, MobilityState, _row
from .scenarios import Scenario

META_FILE = "meta.json"
FIELDS = ("x", "y", "speed", "heading", "lane", "active")
DTYPES = {"x": np.float32, "y": np.float32, "speed": np.float32, "heading": np.float32,
          "lane": np.int16, "active": np.bool_}


@dataclass
class Traces:
    """Recorded episodes: every array (N, T + 1, I); ``seeds`` (N,)."""

    meta: dict[str, Any]
    seeds: np.ndarray
    arrays: dict[str, np.ndarray]

    @property
    def n_episodes(self) -> int:
        return len(self.seeds)

    @property
    def n_slots(self) -> int:
        return self.arrays["x"].shape[1] - 1

    @property
    def n_cvs(self) -> int:
        return self.arrays["x"].shape[2]

    def rsus(self) -> tuple[RSUConfig, ...]:
        return tuple(RSUConfig(**r) for r in self.meta["rsus"])


def record_episodes(cfg: Config, n_cvs: int, seeds: Sequence[int]) -> dict[str, np.ndarray]:
    """Run one SUMO (libsumo where it can) through an episode per seed; arrays (N, T + 1, I).

    What the replay of episode j gives is exactly what ``SumoMobility(cfg, n_cvs).reset(seeds[j])``
    and ``scenario.episode_slots`` calls of ``advance(scenario.slot_s)`` give, in float32.
    """
    from .sumo_mobility import SumoMobility  # SUMO is only needed to record

    mob = SumoMobility(cfg, n_cvs=n_cvs)
    try:
        episodes = []
        for seed in seeds:
            states = [mob.reset(int(seed))]
            states += [mob.advance(cfg.scenario.slot_s) for _ in range(cfg.scenario.episode_slots)]
            episodes.append(states)
    finally:
        mob.close()
    arrays = {f: np.stack([np.stack([getattr(s, f) for s in ep]) for ep in episodes]).astype(DTYPES[f])
              for f in FIELDS}
    arrays["seeds"] = np.asarray(seeds, dtype=np.int64)
    return arrays


def write_traces(directory: str | Path, arrays: dict[str, np.ndarray], part: int = 0) -> Path:
    """Store ``record_episodes``' arrays as ``traces_<part>.npz`` in ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"traces_{part:04d}.npz"
    np.savez_compressed(path, **arrays)
    return path


def write_meta(directory: str | Path, cfg: Config, n_cvs: int, rsus: Sequence[RSUConfig], map_name: str) -> Path:
    """``meta.json``: what the replay needs (RSUs, slot and episode length, CV slots) and the recording config."""
    from .config import to_dict

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = {"map": map_name, "n_cvs": n_cvs, "slot_s": cfg.scenario.slot_s,
            "episode_slots": cfg.scenario.episode_slots, "rsus": [to_dict(r) for r in rsus],
            "config": to_dict(cfg)}
    (d / META_FILE).write_text(json.dumps(meta, indent=1))
    return d / META_FILE


def trace_dirs(cfg: Config) -> tuple[str, ...]:
    """The folders ``trace.dir`` names: none, one or several."""
    d = cfg.trace.dir
    return () if d is None else (d,) if isinstance(d, str) else tuple(d)


def mixes_folders(cfg: Config) -> bool:
    """Whether ``cfg`` replays several trace folders (which training mixes, one per episode batch)."""
    return cfg.backend == "trace" and len(trace_dirs(cfg)) > 1


def read_traces(directory: str | Path) -> Traces:
    """Every recorded episode in ``directory``, ordered by seed (read once per process while the files
    are unchanged: a mix builds a simulator per episode batch; the arrays are read-only)."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise ConfigError(f"trace.dir: folder not found: {d} (record one with scripts/record_traces.py)")
    files = sorted(d.glob("traces_*.npz"))
    if not (d / META_FILE).is_file() or not files:
        raise ConfigError(f"trace.dir: {d} holds no recorded traces ({META_FILE} and traces_*.npz; "
                          f"record them with scripts/record_traces.py)")
    try:
        signature = tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in (d / META_FILE, *files))
    except OSError as exc:
        raise CosimError(f"trace.dir: cannot read {d} ({exc.strerror or exc})") from None
    return _read_traces(str(d.resolve()), str(d), signature)


# Bounds of a plausible recording: positions within 10,000 km of the map's origin, speeds below 1000 m/s.
MAX_COORD_M = 1e7
MAX_SPEED_MPS = 1e3
KINDS = {"x": "f", "y": "f", "speed": "f", "heading": "f", "lane": "iu", "active": "b", "seeds": "iu"}


def _bad(path: Path, what: str) -> ConfigError:
    return ConfigError(f"trace file {path}: {what} (record the folder anew with scripts/record_traces.py)")


def _number(meta: dict, key: str, path: Path, integer: bool = False, low: float = 0.0) -> None:
    v = meta.get(key)
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if not ok or isinstance(v, bool) or not np.isfinite(v) or not v > low:
        want = "a positive integer" if integer else "a positive finite number"
        raise _bad(path, f"{key} must be {want}, got {v!r}" if key in meta else f"{key} is missing")


def read_meta(path: Path) -> dict[str, Any]:
    """meta.json, checked: an object with slot_s, episode_slots, n_cvs and RSUs this code can build."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _bad(path, "not UTF-8 text") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise _bad(path, f"not JSON ({' '.join(str(exc).split())[:80]})") from None
    if not isinstance(meta, dict):
        raise _bad(path, f"a JSON {type(meta).__name__}, not an object")
    _number(meta, "slot_s", path)
    _number(meta, "episode_slots", path, integer=True)
    _number(meta, "n_cvs", path, integer=True)
    rsus = meta.get("rsus")
    if not isinstance(rsus, list):
        raise _bad(path, "rsus is missing" if "rsus" not in meta else f"rsus must be a list, got {rsus!r}"[:160])
    for k, r in enumerate(rsus):
        try:
            rsu = RSUConfig(**r)
        except TypeError as exc:
            raise _bad(path, f"rsus[{k}] is not an RSU ({' '.join(str(exc).split())[:80]})") from None
        for f in dataclasses.fields(rsu):
            v = getattr(rsu, f.name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v):
                raise _bad(path, f"rsus[{k}].{f.name} must be a finite number, got {v!r}")
    return meta


def _read_part(path: Path) -> dict[str, np.ndarray]:
    """One traces_*.npz, checked field by field: present, readable, of its kind and shape, finite, plausible."""
    import zipfile
    import zlib
    try:
        z = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
        raise _bad(path, f"not a readable .npz archive ({' '.join(str(exc).split())[:80]})") from None
    out: dict[str, np.ndarray] = {}
    with z:
        for f in (*FIELDS, "seeds"):
            if f not in z.files:
                raise _bad(path, f"field {f} is missing")
            try:
                a = z[f]
            except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, KeyError) as exc:
                raise _bad(path, f"field {f} is truncated or damaged ({' '.join(str(exc).split())[:80]})") from None
            if a.dtype.kind not in KINDS[f]:
                raise _bad(path, f"field {f} holds {a.dtype} values")
            out[f] = a
    shape = out["x"].shape
    if len(shape) != 3 or shape[1] < 2 or shape[2] < 1:
        raise _bad(path, f"field x has shape {list(shape)}, not (episodes, slots + 1, CV slots)")
    for f in FIELDS:
        if out[f].shape != shape:
            raise _bad(path, f"field {f} has shape {list(out[f].shape)}, field x {list(shape)}")
    if out["seeds"].shape != shape[:1]:
        raise _bad(path, f"field seeds holds {out['seeds'].size} seeds for {shape[0]} episodes")
    for f, bound in (("x", MAX_COORD_M), ("y", MAX_COORD_M), ("speed", MAX_SPEED_MPS), ("heading", None)):
        a = out[f]
        if not np.isfinite(a).all():
            raise _bad(path, f"field {f} holds NaN or infinite values")
        if bound is not None and a.size and float(np.abs(a).max()) > bound:
            raise _bad(path, f"field {f} holds {float(np.abs(a).max()):.3g}, beyond any map (at most {bound:g})")
    return out


@functools.lru_cache(maxsize=8)
def _read_traces(directory: str, shown: str, signature: tuple) -> Traces:
    d = Path(directory)
    show = Path(shown)
    try:
        meta = read_meta(d / META_FILE)
        parts = [_read_part(d / name) for name, _, _ in signature[1:]]
    except ConfigError as exc:  # name the folder as the user gave it
        raise ConfigError(str(exc).replace(str(d), str(show))) from None
    except OSError as exc:
        raise CosimError(f"trace.dir: {shown} holds a broken trace file ({exc})") from None
    for (name, _, _), p in zip(signature[2:], parts[1:]):
        if p["x"].shape[1:] != parts[0]["x"].shape[1:]:
            raise _bad(show / name, f"field x has {p['x'].shape[1] - 1} slots x {p['x'].shape[2]} CV slots, "
                                    f"{signature[1][0]} {parts[0]['x'].shape[1] - 1} x {parts[0]['x'].shape[2]}")
    seeds = np.concatenate([p["seeds"] for p in parts]).astype(np.int64)
    arrays = {f: np.concatenate([p[f] for p in parts]).astype(DTYPES[f], copy=False) for f in FIELDS}
    order = np.argsort(seeds, kind="stable")
    traces = Traces(meta, seeds[order], {f: a[order] for f, a in arrays.items()})
    for a in (traces.seeds, *traces.arrays.values()):
        a.setflags(write=False)
    return traces


def split_episodes(n: int, eval_share: float, part: str) -> np.ndarray:
    """Indices of the episodes of ``part``: the last round(eval_share * n) (at least one when the
    share is positive and there are two or more) are evaluation's, the rest training's."""
    n_eval = 0 if eval_share == 0 or n < 2 else min(n - 1, max(1, round(eval_share * n)))
    if part == "train":
        return np.arange(n - n_eval)
    if part == "eval":
        return np.arange(n - n_eval, n)
    return np.arange(n)


def check_folder(cfg: Config, directory: str, traces: Traces, n_cvs: int) -> np.ndarray:
    """The episodes of ``trace.part`` that ``cfg`` replays from ``directory``; one-line errors where
    its slot length, episode length or CV slots do not fit ``cfg``."""
    where = f"the traces in {directory}"
    if abs(traces.meta["slot_s"] - cfg.scenario.slot_s) > 1e-9:
        raise ConfigError(f"scenario.slot_s: {cfg.scenario.slot_s:g} s, but {where} were recorded with "
                          f"{traces.meta['slot_s']:g} s slots")
    if traces.n_slots < cfg.scenario.episode_slots:
        raise ConfigError(f"scenario.episode_slots: {cfg.scenario.episode_slots}, but {where} hold "
                          f"{traces.n_slots} slots per episode")
    if traces.n_cvs < n_cvs:
        raise ConfigError(f"n_cvs: {n_cvs} CVs, but {where} hold {traces.n_cvs} CV slots "
                          f"(record with --cvs {n_cvs} or more)")
    episodes = split_episodes(traces.n_episodes, cfg.trace.eval_share, cfg.trace.part)
    if len(episodes) == 0:
        raise ConfigError(f"trace.part: {where} hold {traces.n_episodes} episode(s), none for "
                          f"'{cfg.trace.part}' (record more, or change trace.eval_share)")
    return episodes


class TraceMobility(BatchMobility):
    """E recorded SUMO episodes replayed side by side; the batch interface of AnalyticMobility.

    ``cfg.trace.dir`` names the folder (one: a simulator replays one RSU layout; several are mixed
    by :class:`TraceMix`). The recording's slot length must equal ``scenario.slot_s``, it must hold
    at least ``scenario.episode_slots`` slots, and at least ``n_cvs`` CV slots (the first ``n_cvs``
    are used).
    """

    def __init__(self, cfg: Config, n_envs: int = 1, n_cvs: int | None = None):
        dirs = trace_dirs(cfg)
        if not dirs:
            raise ConfigError("backend trace needs trace.dir: a folder from scripts/record_traces.py (--traces DIR)")
        if len(dirs) > 1:
            raise ConfigError(f"trace.dir names {len(dirs)} folders ({', '.join(dirs)}): a simulator replays one; "
                              f"training (ly-dtmppo, ly-mappo) draws one per episode batch and evaluate.py reports "
                              f"each, elsewhere give one folder")
        if n_envs < 1:
            raise ConfigError(f"n_envs: {n_envs}; at least 1 environment is needed")
        self.cfg = cfg
        self.dir = dirs[0]
        self.n_envs = n_envs
        self.n_cvs = n_cvs if n_cvs is not None else cfg.scenario.n_cvs
        traces = read_traces(self.dir)
        self.episodes = check_folder(cfg, self.dir, traces, self.n_cvs)
        self.traces = traces
        self.seeds = traces.seeds[self.episodes]
        # (T + 1, N, I): one slot's rows of all chosen episodes are a single gather.
        self._data = {f: np.ascontiguousarray(a[self.episodes][:, :, :self.n_cvs].swapaxes(0, 1))
                      for f, a in traces.arrays.items()}
        self._rsus = traces.rsus()
        self._rng = np.random.default_rng(cfg.seed)
        self.index = np.zeros(n_envs, dtype=np.int64)  # replayed episode of each environment
        self.t = 0

    def rsu_configs(self) -> tuple[RSUConfig, ...]:
        """The RSUs the traces were recorded with."""
        return self._rsus

    def _state(self) -> MobilityState:
        d, i, t = self._data, self.index, self.t
        return MobilityState(x=d["x"][t][i].astype(float), y=d["y"][t][i].astype(float),
                             speed=d["speed"][t][i].astype(float), heading=d["heading"][t][i].astype(float),
                             lane=d["lane"][t][i].astype(np.int64), active=d["active"][t][i].copy())

    def reset_batch(self, seed: int | None = None) -> MobilityState:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.index = self._rng.integers(0, len(self.episodes), self.n_envs)
        self.t = 0
        return self._state()

    def advance_batch(self, dt: float) -> MobilityState:
        slot = self.traces.meta["slot_s"]
        if abs(dt - slot) > 1e-9 * max(dt, 1.0):
            raise ConfigError(f"the traces advance in slots of {slot:g} s, not {dt:g} s")
        if self.t >= self.traces.n_slots:
            raise CosimError(f"the traces in {self.dir} end after {self.traces.n_slots} slots")
        self.t += 1
        return self._state()

    def reset(self, seed: int | None = None) -> MobilityState:
        return _row(self.reset_batch(seed))

    def advance(self, dt: float) -> MobilityState:
        return _row(self.advance_batch(dt))

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------
# Several folders: one drawn per episode batch

@dataclass(frozen=True)
class TraceScenario(Scenario):
    """One trace folder as a training scenario: the CVs it replays, its RSUs, its episodes in trace.part."""

    folder: str = ""
    n_episodes: int = 0

    def apply(self, cfg: Config) -> Config:
        """``cfg`` replaying this folder alone, with its CVs and RSUs."""
        return super().apply(cfg.replace(**{"trace.dir": self.folder}))

    @property
    def label(self) -> str:
        return f"{self.folder}: {self.n_cvs} CVs, {len(self.rsus)} RSUs"


def trace_folders(cfg: Config) -> list[TraceScenario]:
    """Every folder ``trace.dir`` names, checked to be mixable: one-line errors name the folders and values.

    A folder replays ``scenario.n_cvs`` CVs, or all its CV slots where it holds fewer.
    """
    dirs = trace_dirs(cfg)
    if not dirs:
        raise ConfigError("backend trace needs trace.dir: a folder from scripts/record_traces.py (--traces DIR)")
    seen: dict[Path, str] = {}
    for d in dirs:
        key = Path(d).expanduser().resolve()
        if key in seen:
            raise ConfigError(f"trace.dir: {d} is named twice" + (f" (also as {seen[key]})" if seen[key] != d else ""))
        seen[key] = d
    traces = [read_traces(d) for d in dirs]
    slot = traces[0].meta["slot_s"]
    for d, t in zip(dirs[1:], traces[1:]):
        if abs(t.meta["slot_s"] - slot) > 1e-9:
            raise ConfigError(f"trace.dir: {dirs[0]} was recorded with {slot:g} s slots, {d} with "
                              f"{t.meta['slot_s']:g} s slots; folders of different slot lengths cannot be mixed")
    out = []
    for d, t in zip(dirs, traces):
        n_cvs = min(cfg.scenario.n_cvs, t.n_cvs)
        episodes = check_folder(cfg, d, t, n_cvs)
        out.append(TraceScenario(n_cvs, t.rsus(), folder=d, n_episodes=len(episodes)))
    return out


class TraceMix:
    """Training on several trace folders: each episode batch replays one folder (``trace.mix`` weights),
    drawn from a generator of its own (the config seed's 'traces' child), so a run retrains
    bit-identically and a resumed run draws what an uninterrupted one does. The interface of
    :class:`cosim.scenarios.ScenarioSampler`: ``draw``, ``episodes_per_batch``, ``state_dict``.
    """

    def __init__(self, cfg: Config, seed: int | None = None):
        self.folders = trace_folders(cfg)
        if cfg.training.arch != "set":
            first = self.folders[0]
            for f in self.folders:
                if f.n_cvs != cfg.scenario.n_cvs:
                    raise ConfigError(f"training.arch={cfg.training.arch}: the MLP is tied to one CV count, "
                                      f"scenario.n_cvs = {cfg.scenario.n_cvs}, but {f.folder} holds {f.n_cvs} CV "
                                      f"slots (mix it with training.arch=set, or lower --cvs)")
                if len(f.rsus) != len(first.rsus):
                    raise ConfigError(f"training.arch={cfg.training.arch}: the MLP is tied to one RSU count, but "
                                      f"{first.folder} has {len(first.rsus)} RSUs and {f.folder} {len(f.rsus)} "
                                      f"(mix them with training.arch=set)")
        weights = np.array([f.n_episodes if cfg.trace.mix == "episodes" else 1.0 for f in self.folders], float)
        self.p = weights / weights.sum()
        self.rng = np.random.default_rng(np.random.SeedSequence([cfg.seed if seed is None else seed, 0x7ACE]))
        self.n_envs = cfg.training.n_envs

    @classmethod
    def of(cls, cfg: Config) -> TraceMix | None:
        """The mix of ``cfg``'s folders, or None where it replays one."""
        return cls(cfg) if mixes_folders(cfg) else None

    def draw(self) -> TraceScenario:
        """The next episode batch's folder, with the seed of its simulator."""
        j = int(self.rng.choice(len(self.folders), p=self.p))
        return dataclasses.replace(self.folders[j], seed=int(self.rng.integers(0, 2**31 - 1)))

    def episodes_per_batch(self, scn: TraceScenario) -> int:
        return self.n_envs

    def state_dict(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state
