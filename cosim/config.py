"""Typed, frozen configuration loaded from YAML.

Every parameter of the model lives in ``configs/default.yaml``; this module
turns that file (plus user files and ``section.key=value`` overrides) into
frozen dataclasses. Each field carries its allowed range or choices in its
metadata, so validation and error messages come from one place. Any bad key,
type or value raises :class:`ConfigError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .backends import get_backend
from .errors import ConfigError, CosimError  # noqa: F401 - CosimError: callers import it from here
from .extra_sections import check_sections
from .resources import config_dir

DEFAULT_CONFIG_PATH = config_dir() / "default.yaml"
# Sanity bounds, not capacity limits: what fits is a question of memory, which building an
# environment checks (cosim.env.check_env_memory) and refuses in one line.
MAX_AGENTS = 100_000
MAX_RSUS = 10_000


def _f(default: Any, lo: float | None = None, hi: float | None = None, choices: Iterable[Any] | None = None,
       doc: str = "") -> Any:
    """A dataclass field with its allowed range (inclusive) or choices."""
    meta = {"lo": lo, "hi": hi, "choices": tuple(choices) if choices is not None else None, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


Range = tuple[float, float]


@dataclass(frozen=True)
class RSUConfig:
    x: float = _f(0.0, doc="x in network coordinates, m")
    y: float = _f(0.0, doc="y in network coordinates (road: lateral offset l_k), m")
    height: float = _f(10.0, 0.0, 500.0, doc="antenna height H_k, m")
    radius: float = _f(200.0, 1.0, 10_000.0, doc="coverage radius (horizontal distance), m")


@dataclass(frozen=True)
class ScenarioConfig:
    n_cvs: int = _f(5, 1, MAX_AGENTS, doc="client vehicles I (the agents); the real limit is memory, checked "
                                           "when an environment is built (cosim.env.check_env_memory)")
    road_length_m: float = _f(700.0, 10.0, 100_000.0)
    lanes_per_direction: int = _f(2, 1, 8)
    lane_width_m: float = _f(3.75, 1.0, 10.0)
    rsus: tuple[RSUConfig, ...] = _f(
        (RSUConfig(200.0, 9.375), RSUConfig(350.0, 9.375), RSUConfig(500.0, 9.375)),
        doc="RSUs K: list of {x, y, height, radius}")
    slot_s: float = _f(1.0, 1e-3, 60.0, doc="slot length tau, s")
    episode_slots: int = _f(30, 1, 100_000)
    cv_speed_mps: Range = _f((12.0, 16.0), 0.0, 70.0, doc="CV speed U[lo, hi], drawn per episode")
    boundary: str = _f("wrap", choices=("wrap", "uturn"),
                       doc="analytic road ends: re-enter at the other end, or U-turn into the mirror lane")


@dataclass(frozen=True)
class ChannelConfig:
    bandwidth_hz: float = _f(20e6, 1e3, 1e11)
    noise_w: float = _f(1e-13, 1e-20, 1.0)
    tx_power_w: float = _f(1.0, 1e-6, 100.0)
    sensing_gain: float = _f(1.5, 0.1, 100.0, doc="ISAC enhancement factor Theta")
    pathloss_db_1m: float = _f(-38.4, -200.0, 0.0, doc="path loss g = pathloss_db_1m - slope_db * log10(d)")
    pathloss_slope_db: float = _f(21.0, 0.0, 100.0)


@dataclass(frozen=True)
class ComputeConfig:
    cv_cpu_hz: Range = _f((2e9, 3e9), 1e6, 1e12, doc="CV CPU U[lo, hi], drawn per episode")
    rsu_cpu_hz: float = _f(20e9, 1e6, 1e13, doc="F_max per RSU")
    twin_reserve_hz: float = _f(1e9, 0.0, 1e13, doc="C_twin reserved per RSU for the digital twin")
    kappa_cv: float = _f(1e-26, 0.0, 1e-20)
    kappa_rsu: float = _f(1e-28, 0.0, 1e-20)
    min_rsu_share_hz: float = _f(1e6, 0.0, 1e10, doc="floor on F_ik where a part is offloaded")


@dataclass(frozen=True)
class TaskConfig:
    size_bits: Range = _f((1e6, 3e6), 1.0, 1e12)
    instr_bits: Range = _f((1e4, 5e4), 0.0, 1e12)
    intensity_cycles_per_bit: Range = _f((1500.0, 2000.0), 1e-3, 1e7)
    co_intensity_cycles_per_bit: Range = _f((100.0, 500.0), 0.0, 1e7)
    deadline_s: Range = _f((0.5, 1.0), 1e-4, 1e4)


@dataclass(frozen=True)
class LyapunovConfig:
    V: float = _f(5.0, 0.0, 1e6, doc="drift-plus-penalty weight")
    alpha: float = _f(0.6, 0.0, 1.0, doc="delay weight in the cost")
    energy_budget_j: float = _f(10.0, 0.0, 1e9, doc="E_max / I: per-CV energy budget per slot, J")
    little_window: int = _f(10, 1, 10_000, doc="Little's-law window m, slots")
    deadline_penalty: float = _f(0.0, 0.0, 1e6, doc="cost added per deadline miss (0: reported only)")


@dataclass(frozen=True)
class ActionConfig:
    min_bandwidth_share: float = _f(1e-3, 0.0, 0.3, doc="b_min on a link that carries a part")
    min_split_share: float = _f(0.01, 0.0, 0.3,
                                doc="parts below this share are dropped and the rest renormalised")
    bandwidth: str = _f("paper", choices=("paper", "full"),
                        doc="paper: first K of a softmax over K+1 (an 'unused' entry); full: a softmax over "
                            "the links that carry a part, so the CV's whole bandwidth is used")
    split: str = _f("paper", choices=("paper", "balanced"),
                    doc="paper: softmax split; balanced: the agent picks the RSUs and its local share, the "
                        "environment splits the offloaded part so that the RSU parts finish together")
    cpu: str = _f("paper", choices=("paper", "proportional"),
                  doc="paper: sigmoid requests scaled down per RSU; proportional: each RSU's capacity in "
                      "proportion to the cycles sent to it (the CPU logits are ignored)")


@dataclass(frozen=True)
class TwinConfig:
    enabled: bool = _f(True, doc="Ly-DTMPPO (true) or Ly-MAPPO (false): DT part of the actor's observation")
    sync_error: float = _f(0.0, 0.0, 10.0, doc="Gaussian noise on the DT part: relative, or in the observation's "
                                                "scaled units (sync_error_kind)")
    sync_error_kind: str = _f("multiplicative", choices=("multiplicative", "additive"),
                              doc="multiplicative: x (1 + s n), so an empty queue always shows exactly 0; "
                                  "additive: x + s n, in the observation's scaled units (W_ref, radius, ...)")
    staleness: int = _f(0, 0, 1000, doc="slots by which the DT part lags")
    staleness_carry: bool = _f(False, doc="false: every episode's first slots are fresh (the lag restarts); "
                                          "true: the lag carries across episodes, as in one continuous run")
    view: str = _f("paper", choices=("paper", "global"),
                   doc="paper: the DT part of eq. 40; global: also what the twin holds about the other CVs "
                       "this slot, per RSU (how many it covers, their task cycles, their spectral efficiency)")
    hide: tuple[str, ...] = _f((), choices=("dt_backlog", "dt_aggregate", "dt_distance_next", "dt_others",
                                            "dt_others_cycles", "dt_others_spec_eff"),
                               doc="twin blocks the actor sees as zeros (an ablation; the critic still sees "
                                   "them): any of the view's twin blocks, cosim.twin.TWIN_BLOCKS")
    info: str = _f("oracle", choices=("oracle", "reported", "previous"),
                   doc="what twin.view: global knows about the other CVs before the decision. oracle: their "
                       "current-slot task cycles and spectral efficiencies, exact and free; reported: the same, "
                       "after every CV has sent its task descriptor (report_bits over its best V2I link at the "
                       "previous slot's rate), whose delay and energy each CV pays; previous: the last slot's")
    report_bits: float = _f(8000.0, 1.0, 1e9, doc="task-descriptor report of twin.info: reported, bit")


@dataclass(frozen=True)
class ScenarioRangeConfig:
    """Training across scenarios: each iteration (episode batch) draws its fleet and RSU layout."""

    enabled: bool = _f(False, doc="draw a scenario per episode batch (false: train on scenario.* only)")
    n_cvs: tuple[int, int] = _f((2, 12), 1, MAX_AGENTS, doc="number of CVs, uniform integer in [lo, hi]")
    n_rsus: tuple[int, int] = _f((2, 6), 1, MAX_RSUS, doc="number of RSUs, uniform integer in [lo, hi]")
    rsu_x_m: Range = _f((100.0, 600.0), 0.0, 100_000.0,
                        doc="RSU positions along the road, uniform in [lo, hi] (m, within scenario.road_length_m)")
    min_gap_m: float = _f(60.0, 0.0, 10_000.0, doc="least distance between two drawn RSUs, m")
    rsu_radius_m: Range = _f((130.0, 260.0), 1.0, 10_000.0, doc="RSU coverage radius, uniform in [lo, hi], m")
    cover_road: bool = _f(True, doc="redraw a layout until its RSUs cover the whole road, as the paper's do "
                                    "(false: gaps allowed, where CVs can only compute locally)")
    both_sides: bool = _f(False, doc="each drawn RSU stands on either side of the road (false: where the config's "
                                     "first RSU does)")
    rsu_cpu_hz: tuple[float, float] | None = _f(None, 1e6, 1e12,
                                                doc="every RSU's CPU F_max, uniform in [lo, hi] per batch "
                                                    "(null: compute.rsu_cpu_hz)")
    base_share: float = _f(0.0, 0.0, 1.0, doc="share of episode batches played on scenario.* itself")
    agents_per_batch: int = _f(0, 0, 1_000_000,
                               doc="episodes per batch = round(this / drawn CVs), so every batch has about as "
                                   "many agent-episodes (0: training.n_envs episodes per batch)")


@dataclass(frozen=True)
class TrainingConfig:
    lr: float = _f(8e-5, 1e-7, 1.0)
    critic_lr: float = _f(5e-4, 1e-7, 1.0)
    gamma: float = _f(0.99, 0.0, 1.0)
    gae_lambda: float = _f(0.95, 0.0, 1.0)
    clip: float = _f(0.2, 0.0, 10.0)
    epochs: int = _f(10, 1, 1000)
    batch_size: int = _f(512, 1, 1_000_000, doc="minibatch size, samples")
    episodes: int = _f(1800, 1, 10_000_000)
    n_envs: int = _f(16, 1, 4096, doc="episodes collected in parallel per update")
    hidden: int = _f(128, 4, 4096, doc="width of the two hidden layers")
    entropy_coef: float = _f(0.0, 0.0, 10.0)
    value_coef: float = _f(0.5, 0.0, 100.0)
    max_grad_norm: float = _f(10.0, 0.0, 1e6)
    log_std_init: float = _f(-0.5, -10.0, 5.0)
    value_norm: bool = _f(True)
    orthogonal_init: bool = _f(True)
    adv_norm: bool = _f(True)
    share_params: bool = _f(True, doc="one actor for all agents with an agent-id one-hot")
    team_reward: bool = _f(False, doc="train on R(t) (true) or on each agent's r_i (false)")
    checkpoint_every: int = _f(100, 1, 10_000_000, doc="episodes between checkpoints")
    initial_energy_queue: Range = _f((0.0, 0.0), 0.0, 1e9,
                                     doc="training episodes start from Y_i ~ U[lo, hi] J per CV, so the "
                                         "policy sees the large energy queues of long runs; [0, 0]: empty")
    arch: str = _f("mlp", choices=("mlp", "set"),
                   doc="MAPPO actor/critic: the paper's MLP on the flat vector (fixed CVs and RSUs) or the "
                       "set-structured one on RSU tokens (any CVs and RSUs)")
    scenarios: ScenarioRangeConfig = field(default_factory=ScenarioRangeConfig)
    extra: dict = _f({}, doc="algorithm settings, one section per algorithm (cosim.extra_sections), "
                             "each read by load_settings into its own dataclass")


@dataclass(frozen=True)
class SumoConfig:
    map: str | None = _f(None, doc="a named map, e.g. resco/ingolstadt21 (dtcosim maps lists them); "
                                    "null: sumo.sumocfg, sumo.net or the paper's road")
    sumocfg: str | None = _f(None, doc=".sumocfg of the map; null: the paper's road in sumo_net/road")
    net: str | None = _f(None, doc=".net.xml of another map (with routes, or random trips)")
    routes: str | None = _f(None)
    step_length_s: float | None = _f(None, 1e-3, 60.0, doc="SUMO step length; null: the map's own (or 1 s)")
    cv_vtype: str | None = _f(None, doc="CVs are vehicles of this vType; null: the first I vehicles to depart")
    background_vehicles: int = _f(0, 0, 100_000, doc="non-CV vehicles on the paper's road")
    rsu_spacing_m: float = _f(300.0, 10.0, 100_000.0,
                              doc="automatic RSU placement: least distance between RSUs (shrinks on small maps, "
                                  "never below the larger of the RSU radius and half the spacing an even "
                                  "spread over the roads would give)")
    rsu_placement: str = _f("fit", choices=("fit", "config", "auto"),
                            doc="fit: scenario.rsus where they lie on the map, else auto; config: scenario.rsus "
                                "or fail; auto: maximum coverage of the map's vehicle-seconds, each RSU's load "
                                "capped (sumo.rsu_load_cap)")
    rsu_sites: str = _f("both", choices=("both", "roads", "junctions"),
                        doc="automatic placement: candidate RSU sites along the roads, at junctions, or both")
    rsu_load_cap: float = _f(0.0, 0.0, 1000.0,
                             doc="automatic placement: an RSU counts at most this many times its fair share "
                                 "(surveyed vehicle-seconds / RSUs) as its gain, so that the busiest places get "
                                 "several RSUs and the rest are covered too; 0: no cap (plain greedy coverage)")
    rsu_balance: bool = _f(True, doc="automatic placement: then move RSUs near the busiest one while that lowers "
                                     "its share of the covered vehicle-seconds and costs at most 1 % of coverage")
    n_rsus: int | None = _f(None, 1, MAX_RSUS, doc="RSUs placed automatically (null: as many as scenario.rsus)")
    cv_pool: str = _f("coverage", choices=("coverage", "departure", "penetration"),
                      doc="other maps: coverage: CV slots go to vehicles inside (or entering) RSU coverage, "
                          "handed over when they leave, the RSU with the fewest CVs first; departure: the first "
                          "vehicles to depart, kept until they arrive; penetration: each vehicle is a CV with "
                          "probability sumo.penetration, anywhere on the map, and CVs without a slot wait for one")
    penetration: float = _f(0.2, 1e-6, 1.0, doc="cv_pool penetration: the share of vehicles that are CVs")
    random_trips_period_s: float = _f(2.0, 0.01, 1000.0)
    warmup_s: float | None = _f(None, 0.0, 86_400.0,
                                doc="other maps: SUMO runs this long before the first slot (null: until the "
                                    "number of vehicles has levelled off, at most sumo.warmup_max_s; the "
                                    "paper's road: always 0)")
    warmup_max_s: float = _f(1800.0, 0.0, 86_400.0, doc="the longest automatic warm-up")
    warmup_tolerance: float = _f(0.05, 0.0, 10.0,
                                 doc="automatic warm-up: traffic has levelled off when the mean number of "
                                     "vehicles over 120 s rises by at most this share over the 120 s before")
    use_libsumo: bool = _f(True, doc="libsumo headless; TraCI when false (always TraCI with the GUI)")
    restart_on_crash: bool = _f(False)
    traci_timeout_s: float = _f(60.0, 0.1, 86_400.0,
                                doc="TraCI: the longest wait for SUMO's answer to one exchange (a slot, a load) "
                                    "before that SUMO counts as frozen, is ended and reported (not with the GUI, "
                                    "which may be paused)")
    extra_args: tuple[str, ...] = _f((), doc="further SUMO command-line arguments")


@dataclass(frozen=True)
class TraceConfig:
    dir: str | tuple[str, ...] | None = _f(
        None, doc="folder of recorded SUMO traces (scripts/record_traces.py) for backend trace, or a list of "
                  "folders (maps, RSU layouts, fleets) that training mixes, one folder per episode batch")
    part: str = _f("train", choices=("train", "eval", "all"),
                   doc="which recorded episodes to replay: training's, the held-out ones, or all (per folder)")
    eval_share: float = _f(0.2, 0.0, 0.9, doc="share of recorded episodes held out for evaluation (per folder)")
    mix: str = _f("episodes", choices=("episodes", "equal"),
                  doc="several folders: each episode batch's folder is drawn with weights proportional to its "
                      "episodes in trace.part (every recorded episode equally likely) or equal (every folder)")

    def __post_init__(self) -> None:
        if isinstance(self.dir, tuple) and not self.dir:
            raise ConfigError("trace.dir: an empty list names no folder (give one folder or several)")


@dataclass(frozen=True)
class Config:
    backend: str = _f("analytic", doc="mobility backend, a name in cosim.backends.BACKENDS")
    seed: int = _f(0, 0, 2**31 - 1)
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    tasks: TaskConfig = field(default_factory=TaskConfig)
    lyapunov: LyapunovConfig = field(default_factory=LyapunovConfig)
    actions: ActionConfig = field(default_factory=ActionConfig)
    twin: TwinConfig = field(default_factory=TwinConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sumo: SumoConfig = field(default_factory=SumoConfig)
    trace: TraceConfig = field(default_factory=TraceConfig)

    def replace(self, **changes: Any) -> Config:
        """Dotted-key replacement with validation: cfg.replace(**{"lyapunov.V": 10})."""
        return from_dict(deep_merge(to_dict(self), _nest(changes)))

    @property
    def n_rsus(self) -> int:
        return len(self.scenario.rsus)


def with_rsus(cfg: Config, rsus: Iterable[RSUConfig]) -> Config:
    """``cfg`` whose ``scenario.rsus`` are ``rsus`` (e.g. placed on a map), so that it reruns with exactly them."""
    rsus = tuple(rsus)
    if rsus == cfg.scenario.rsus:
        return cfg
    return cfg.replace(**{"scenario.rsus": [to_dict(r) for r in rsus], "sumo.n_rsus": None,
                          "sumo.rsu_placement": "fit"})


# ---------------------------------------------------------------------------
# dict <-> dataclass

def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) and k != "extra":
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{key}': '{p}' is not a section")
        node[parts[-1]] = value
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if isinstance(value, (list, tuple)):  # str | tuple[str, ...]: a list takes the list alternative
            inner = [a for a in inner if typing.get_origin(a) is tuple] or inner
        return _convert(value, inner[0], key, meta)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(tp))},"
                              f" got {value!r}")
        return _build(tp, value, key + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]", meta) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} numbers [lo, hi], got {value!r}")
        out = tuple(_convert(v, a, key, meta) for v, a in zip(value, args))
        if len(out) == 2 and all(isinstance(v, (int, float)) for v in out) and out[0] > out[1]:
            raise ConfigError(f"{key}: lower bound {out[0]} exceeds upper bound {out[1]}")
        return out
    if tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        value = int(value)
    elif tp is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads '1e9' as a string
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
    else:  # pragma: no cover - a field type this loader does not know is a programming error
        raise TypeError(f"{key}: unsupported field type {_type_name(tp)}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{key}: {value!r} is out of range [{lo:g}, {hi:g}]")
    return value


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (allowed in "
                          f"{prefix.rstrip('.') or 'the top level'}: {', '.join(fields)})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(value, hints[name], prefix + name, fields[name].metadata)
    return cls(**kwargs)


def load_settings(cls: type, given: Any, where: str, inherited: Mapping[str, Any] | None = None) -> Any:
    """An algorithm's typed, frozen settings ``cls`` from the mapping ``given`` (e.g. ``training.extra.mappo``).

    ``where`` names the mapping in messages (``training.extra.mappo``). ``inherited`` holds the fields
    taken from elsewhere (e.g. ``cfg.training``, already validated); ``given`` may set only the other
    fields. Values go through the same conversion and range checks as the rest of the config, so an
    unknown key, a wrong type, a non-finite number or an out-of-range value is one ConfigError naming it.
    """
    inherited = dict(inherited or {})
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise ConfigError(f"{where}: expected a mapping of settings, got {given!r}")
    own = [f.name for f in dataclasses.fields(cls) if f.name not in inherited]
    unknown = [k for k in given if k not in own]
    if unknown:
        raise ConfigError(f"unknown {where} key '{unknown[0]}' (allowed: {', '.join(own)})")
    return _build(cls, {**inherited, **given}, where + ".")


def settings_dict(settings: Any, inherited: Iterable[str] = ()) -> dict[str, Any]:
    """The fields of a settings dataclass not taken from elsewhere, as plain YAML-able values."""
    skip = set(inherited)
    return {f.name: to_dict(getattr(settings, f.name)) for f in dataclasses.fields(settings) if f.name not in skip}


def with_extra(cfg: Config, sections: Mapping[str, Mapping[str, Any]], drop: Iterable[str] = ()) -> Config:
    """``cfg`` with ``training.extra`` sections replaced (resolved settings, saved with a run) and ``drop`` removed."""
    extra = {k: v for k, v in cfg.training.extra.items() if k not in set(drop)}
    extra.update({k: dict(v) for k, v in sections.items()})
    return dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, extra=extra))


def from_dict(data: Mapping[str, Any]) -> Config:
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    cfg = _build(Config, data)
    get_backend(cfg.backend)
    if len(cfg.scenario.rsus) < 1:
        raise ConfigError("scenario.rsus: at least one RSU is needed")
    if cfg.compute.twin_reserve_hz >= cfg.compute.rsu_cpu_hz:
        raise ConfigError(f"compute.twin_reserve_hz: {cfg.compute.twin_reserve_hz:g} leaves no RSU capacity "
                          f"(must be below compute.rsu_cpu_hz = {cfg.compute.rsu_cpu_hz:g})")
    check_sections(cfg.training.extra)
    _check_references(cfg)
    _check_sumo(cfg.sumo)
    return cfg


@dataclass(frozen=True)
class References:
    """One average task done locally (the paper's section 7): what costs and drifts are divided by."""

    T_ref: float  # its delay, s
    E_ref: float  # its energy, J
    W_ref: float  # its work, cycles


def reference_scales(cfg: Config) -> References:
    """The normalising references of ``cfg`` (model.ModelParams carries them)."""
    t, c = cfg.tasks, cfg.compute
    mean = lambda r: 0.5 * (r[0] + r[1])  # noqa: E731
    work_ref = mean(t.size_bits) * mean(t.intensity_cycles_per_bit)
    cpu_ref = mean(c.cv_cpu_hz)
    return References(T_ref=work_ref / cpu_ref, E_ref=c.kappa_cv * work_ref * cpu_ref**2, W_ref=work_ref)


# A parameter that makes one of the references zero or non-finite would make every result inf or NaN.
_REFERENCE_KEYS = {"T_ref": "tasks.size_bits, tasks.intensity_cycles_per_bit and compute.cv_cpu_hz",
                   "E_ref": "compute.kappa_cv, tasks.size_bits, tasks.intensity_cycles_per_bit and compute.cv_cpu_hz",
                   "W_ref": "tasks.size_bits and tasks.intensity_cycles_per_bit"}


def _check_references(cfg: Config) -> None:
    p = reference_scales(cfg)
    for name, keys in _REFERENCE_KEYS.items():
        v = getattr(p, name)
        if name == "E_ref" and cfg.compute.kappa_cv == 0:
            raise ConfigError("compute.kappa_cv: 0 makes the energy reference E_ref zero: costs are normalised by "
                              "it, so every result would be inf or NaN; use a value above 0")
        if not (math.isfinite(v) and v > 0):
            raise ConfigError(f"{keys} give the reference {name} = {v:g}: costs are normalised by it, so every "
                              f"result would be inf or NaN (e.g. compute.kappa_cv must be above 0)")


# SUMO options that make it wait for a TraCI client: libsumo would block forever.
_WAITING_SUMO_OPTIONS = ("--remote-port", "--num-clients")


def _check_sumo(s: SumoConfig) -> None:
    given = [f"sumo.{k} ({getattr(s, k)})" for k in ("map", "sumocfg", "net") if getattr(s, k) is not None]
    if s.map is not None and len(given) > 1:
        raise ConfigError(f"{' and '.join(given)} are all set: give one map, a name, a .sumocfg or a .net.xml")
    if s.net is not None and s.sumocfg is not None:
        raise ConfigError(f"sumo.net ({s.net}) and sumo.sumocfg ({s.sumocfg}) are both set: give one map, "
                          f"a .sumocfg or a .net.xml (with routes)")
    if s.routes is not None and s.net is None:
        raise ConfigError(f"sumo.routes ({s.routes}) needs sumo.net: routes belong to a network "
                          f"(a .sumocfg names its own routes)")
    for arg in s.extra_args:
        if arg.split("=", 1)[0] in _WAITING_SUMO_OPTIONS:
            raise ConfigError(f"sumo.extra_args: {arg.split('=', 1)[0]} makes SUMO wait for a TraCI client and "
                              f"would hang the run; the co-simulation connects to SUMO itself")


# ---------------------------------------------------------------------------
# Reading YAML safely: every file the tools read (configs, experiment files, saved runs) and --set values

MAX_YAML_BYTES = 1_000_000    # a config is a few KB; anything near this is not one
MAX_YAML_DEPTH = 32           # nesting levels (the config has 3)
MAX_YAML_NODES = 100_000      # values after expanding aliases: a small file must not expand to gigabytes


class _SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys, deep nesting and alias bombs, in one line naming the file."""

    where = "YAML"
    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            mark = self.peek_event().start_mark
            raise ConfigError(f"{self.where}: nested deeper than {MAX_YAML_DEPTH} levels (line {mark.line + 1})")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if dup:
                raise ConfigError(f"{self.where}: duplicate key '{key}' (line {key_node.start_mark.line + 1}); "
                                  f"each key may appear once")
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: Any, memo: dict[int, int]) -> int:
    """Values a YAML node stands for once every alias is expanded (memoised: aliases share nodes)."""
    if id(node) in memo:
        return memo[id(node)]
    n = 1
    if isinstance(node, yaml.SequenceNode):
        n += sum(_expanded_size(v, memo) for v in node.value)
    elif isinstance(node, yaml.MappingNode):
        n += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[id(node)] = min(n, 10 * MAX_YAML_NODES)
    return memo[id(node)]


def parse_yaml(text: str, where: str) -> Any:
    """YAML text -> Python values, safely; any problem is one ConfigError naming ``where``."""
    if "\x00" in text:
        raise ConfigError(f"{where} is a binary file, not YAML text")
    loader = _SafeLoader(text)
    loader.where = where
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            raise ConfigError(f"{where}: expands to more than {MAX_YAML_NODES:,} values (YAML aliases); "
                              f"write the values out instead")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1}: {exc.problem})" if mark is not None else ""
        raise ConfigError(f"{where} is not valid YAML{line}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file holding a mapping; missing, unreadable, binary, non-UTF-8, oversized or hostile
    files are one ConfigError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}")
    try:
        if p.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{what} {p} is {p.stat().st_size:,} bytes; a config is at most "
                              f"{MAX_YAML_BYTES:,}")
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    if b"\x00" in raw:
        raise ConfigError(f"{what} {p} is a binary file, not YAML text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {p} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    data = parse_yaml(text, f"{what} {p}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {p} must hold a mapping of sections")
    return data


def read_json(path: str | Path, what: str = "file") -> Any:
    """A JSON file the tools wrote earlier (done.json, manifest.json); a damaged one is one ConfigError."""
    p = Path(path)
    try:
        if p.stat().st_size > 100 * MAX_YAML_BYTES:
            raise ConfigError(f"{what} {p} is {p.stat().st_size:,} bytes, too large to be one")
        return json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ConfigError(f"{what} {p} is damaged ({' '.join(str(exc).split())[:80]}); delete it to "
                          f"redo what it records") from None


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["lyapunov.V=10", "twin.enabled=false"]`` -> nested dict; values parsed as YAML."""
    flat: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        key, raw = item.split("=", 1)
        try:
            flat[key.strip()] = parse_yaml(raw, f"--set {key.strip()}") if raw.strip() else None
        except ConfigError:
            if any(c in raw for c in "[]{}&*"):  # a value meant as YAML structure must parse
                raise
            flat[key.strip()] = raw
    return _nest(flat)


def flat_overrides(files: Iterable[str | Path] = (), overrides: Iterable[str] = ()) -> dict[str, Any]:
    """``--config`` files and ``--set`` values as one flat dict of dotted keys (``training.extra`` kept whole)."""
    data: dict[str, Any] = {}
    for f in files:
        data = deep_merge(data, read_yaml(f))
    data = deep_merge(data, parse_overrides(overrides))
    return flatten(data)


def flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections to dotted keys (``{twin: {view: global}}`` -> ``twin.view``); ``training.extra``
    stays whole (also when written as one dotted key)."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        if isinstance(v, Mapping) and v and str(k).split(".")[-1] != "extra":
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_config(files: Iterable[str | Path] = (), overrides: Iterable[str] = (),
                defaults: Mapping[str, Any] | None = None) -> Config:
    """configs/default.yaml, then ``defaults`` (a script's own), then each file, then overrides."""
    data = read_yaml(DEFAULT_CONFIG_PATH) if DEFAULT_CONFIG_PATH.is_file() else {}
    if defaults:
        data = deep_merge(data, _nest(defaults))
    for f in files:
        data = deep_merge(data, read_yaml(f))
    data = deep_merge(data, parse_overrides(overrides))
    return from_dict(data)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
