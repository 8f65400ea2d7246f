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
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .config import Config, ConfigError, CosimError, RSUConfig
from .mobility import BatchMobility, MobilityState, _row

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


def read_traces(directory: str | Path) -> Traces:
    """Every recorded episode in ``directory``, ordered by seed."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise ConfigError(f"trace.dir: folder not found: {d} (record one with scripts/record_traces.py)")
    files = sorted(d.glob("traces_*.npz"))
    if not (d / META_FILE).is_file() or not files:
        raise ConfigError(f"trace.dir: {d} holds no recorded traces ({META_FILE} and traces_*.npz; "
                          f"record them with scripts/record_traces.py)")
    try:
        meta = json.loads((d / META_FILE).read_text())
        parts = [np.load(f) for f in files]
        seeds = np.concatenate([p["seeds"] for p in parts])
        arrays = {f: np.concatenate([p[f] for p in parts]) for f in FIELDS}
    except (OSError, ValueError, KeyError) as exc:
        raise CosimError(f"trace.dir: {d} holds a broken trace file ({exc})") from None
    order = np.argsort(seeds, kind="stable")
    return Traces(meta, seeds[order], {f: a[order] for f, a in arrays.items()})


def split_episodes(n: int, eval_share: float, part: str) -> np.ndarray:
    """Indices of the episodes of ``part``: the last round(eval_share * n) (at least one when the
    share is positive and there are two or more) are evaluation's, the rest training's."""
    n_eval = 0 if eval_share == 0 or n < 2 else min(n - 1, max(1, round(eval_share * n)))
    if part == "train":
        return np.arange(n - n_eval)
    if part == "eval":
        return np.arange(n - n_eval, n)
    return np.arange(n)


class TraceMobility(BatchMobility):
    """E recorded SUMO episodes replayed side by side; the batch interface of AnalyticMobility.

    ``cfg.trace.dir`` names the folder. The recording's slot length must equal
    ``scenario.slot_s``, it must hold at least ``scenario.episode_slots`` slots, and at least
    ``n_cvs`` CV slots (the first ``n_cvs`` are used).
    """

    def __init__(self, cfg: Config, n_envs: int = 1, n_cvs: int | None = None):
        if cfg.trace.dir is None:
            raise ConfigError("backend trace needs trace.dir: a folder from scripts/record_traces.py (--traces DIR)")
        if n_envs < 1:
            raise ConfigError(f"n_envs: {n_envs}; at least 1 environment is needed")
        self.cfg = cfg
        self.n_envs = n_envs
        self.n_cvs = n_cvs if n_cvs is not None else cfg.scenario.n_cvs
        traces = read_traces(cfg.trace.dir)
        where = f"the traces in {cfg.trace.dir}"
        if abs(traces.meta["slot_s"] - cfg.scenario.slot_s) > 1e-9:
            raise ConfigError(f"scenario.slot_s: {cfg.scenario.slot_s:g} s, but {where} were recorded with "
                              f"{traces.meta['slot_s']:g} s slots")
        if traces.n_slots < cfg.scenario.episode_slots:
            raise ConfigError(f"scenario.episode_slots: {cfg.scenario.episode_slots}, but {where} hold "
                              f"{traces.n_slots} slots per episode")
        if traces.n_cvs < self.n_cvs:
            raise ConfigError(f"n_cvs: {self.n_cvs} CVs, but {where} hold {traces.n_cvs} CV slots "
                              f"(record with --cvs {self.n_cvs} or more)")
        self.episodes = split_episodes(traces.n_episodes, cfg.trace.eval_share, cfg.trace.part)
        if len(self.episodes) == 0:
            raise ConfigError(f"trace.part: {where} hold {traces.n_episodes} episode(s), none for "
                              f"'{cfg.trace.part}' (record more, or change trace.eval_share)")
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
            raise CosimError(f"the traces in {self.cfg.trace.dir} end after {self.traces.n_slots} slots")
        self.t += 1
        return self._state()

    def reset(self, seed: int | None = None) -> MobilityState:
        return _row(self.reset_batch(seed))

    def advance(self, dt: float) -> MobilityState:
        return _row(self.advance_batch(dt))

    def close(self) -> None:
        pass
