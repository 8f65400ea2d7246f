"""The digital twin and the observations it builds (docs/model.md section 8).

An actor's observation is one vector per CV, every entry scaled to about unit
range, built from named blocks (:class:`ObsLayout`): the CV's own features and,
per RSU, one entry of each per-RSU block. Read flat it is the paper's vector
(the MLP actor's input); read as entities it is the CV's own features plus one
token per RSU (the set-structured actor's input, any number of RSUs). Its twin
blocks, the *DT part*, are what only the twin knows: every RSU's backlog, their
aggregate G_rsu and the twin's one-slot prediction of each link's distance.
Without the twin (Ly-MAPPO) they are zeros of the same length. The critic's
global state always has them, true.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from .config import ConfigError
from .mobility import MobilityState
from .model import ModelParams, QueueState, Tasks, distance_3d, horizontal_distance

SPEC_EFF_SCALE = 25.0  # log2(1+SNR) at 10 m on the default channel is about 23.5


@dataclass(frozen=True)
class Block:
    """One named block of an actor observation.

    ``per_rsu`` blocks hold one entry per RSU (K entries in the flat vector, one
    feature of each RSU token); the others are ``width`` features of the CV itself.
    ``twin`` blocks are the DT part (zeros without the twin).
    """

    name: str
    width: int = 1
    per_rsu: bool = False
    twin: bool = False


# The observation's blocks in the order of the paper's flat vector (the MLP actor's input).
OBS_BLOCKS: tuple[Block, ...] = (
    Block("task", 6),                  # G, G_ins, I_task, I_co, C_i, T_max
    Block("position", 2),              # x, y (relative to the RSU area)
    Block("velocity", 2),              # vx, vy
    Block("covered", per_rsu=True), Block("distance", per_rsu=True), Block("spec_eff", per_rsu=True),
    Block("queues", 2),                # Q_loc / W_ref, Y / E_ref
    Block("rsu_capacity", per_rsu=True),  # (F_max - C_twin) / F_max
    Block("active", 1),
    Block("dt_backlog", per_rsu=True, twin=True), Block("dt_aggregate", 3, twin=True),
    Block("dt_distance_next", per_rsu=True, twin=True),
)

# twin.view = global: what the DT space holds about the *other* CVs this slot, per RSU, so that an
# agent can tell a crowded RSU from a quiet one (for any number of CVs: counts and sums, no one-hot).
GLOBAL_BLOCKS: tuple[Block, ...] = (
    Block("dt_others", per_rsu=True, twin=True),           # other active CVs the RSU covers / OTHERS_SCALE
    Block("dt_others_cycles", per_rsu=True, twin=True),    # their task cycles, sum / (W_ref OTHERS_SCALE)
    Block("dt_others_spec_eff", per_rsu=True, twin=True),  # their mean spectral efficiency to it / 25
)
# CVs per RSU: counts and summed cycles of order 1 for the fleets of the paper and the transfer tests.
# Unscaled, the summed cycles (up to ~5 W_ref on the default road) made the MLP actor 4 % worse there
# (1.0218 against 0.9833 with the block hidden, 3 seeds; README, twin ablation).
OTHERS_SCALE = 10.0
VIEWS = {"paper": OBS_BLOCKS, "global": OBS_BLOCKS + GLOBAL_BLOCKS}
TWIN_BLOCKS = tuple(b.name for b in VIEWS["global"] if b.twin)  # what twin.hide may name


@dataclass(frozen=True)
class ObsLayout:
    """Named blocks of an actor observation for K RSUs (policies read it by name).

    Two views of the same vector: the paper's flat one (blocks concatenated in
    ``OBS_BLOCKS`` order, K entries per per-RSU block) and the entity one used by
    the set-structured actor: the CV's own features plus one token per RSU
    (``split``). The twin builds the vector from the blocks (``assemble``), so a new
    block appears in both views at once; a new per-RSU block (such as the global view's
    per-RSU twin features) becomes one more feature of every RSU token.
    """

    n_rsus: int
    blocks: tuple[Block, ...] = OBS_BLOCKS

    def _blocks(self) -> list[tuple[str, int]]:
        return [(b.name, self.n_rsus if b.per_rsu else b.width) for b in self.blocks]

    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for name, n in self._blocks():
            out[name] = slice(start, start + n)
            start += n
        return out

    def __getitem__(self, name: str) -> slice:
        return self.slices()[name]

    @property
    def dim(self) -> int:
        return sum(n for _, n in self._blocks())

    @property
    def dt_slice(self) -> slice:
        """The DT part: the contiguous tail from the first twin block on."""
        first = next(b.name for b in self.blocks if b.twin)
        return slice(self[first].start, self.dim)

    # -- building the vector from its blocks ----------------------------------------------------
    def assemble(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """Blocks by name, each (..., width) or (..., K) for per-RSU ones -> (..., dim)."""
        missing = [b.name for b in self.blocks if b.name not in values]
        extra = sorted(set(values) - {b.name for b in self.blocks})
        if missing or extra:
            raise ValueError(f"observation blocks: missing {missing}, unknown {extra}")
        parts = []
        for name, n in self._blocks():
            v = values[name]
            if v.shape[-1] != n:
                raise ValueError(f"observation block '{name}' has {v.shape[-1]} entries, layout wants {n}")
            parts.append(v)
        return np.concatenate(parts, axis=-1)

    # -- the entity view: own features + one token per RSU -------------------------------------
    @property
    def own_blocks(self) -> tuple[Block, ...]:
        return tuple(b for b in self.blocks if not b.per_rsu)

    @property
    def token_blocks(self) -> tuple[Block, ...]:
        return tuple(b for b in self.blocks if b.per_rsu)

    @property
    def own_dim(self) -> int:
        return sum(b.width for b in self.own_blocks)

    @property
    def token_dim(self) -> int:
        return len(self.token_blocks)

    def own_index(self) -> np.ndarray:
        """Flat positions of the own features, (own_dim,)."""
        sl = self.slices()
        return np.concatenate([np.arange(sl[b.name].start, sl[b.name].stop) for b in self.own_blocks])

    def token_index(self) -> np.ndarray:
        """Flat positions of the RSU tokens, (K, token_dim): token k, feature j."""
        sl = self.slices()
        return np.stack([np.arange(sl[b.name].start, sl[b.name].stop) for b in self.token_blocks], axis=-1)

    def split(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(..., dim) -> own (..., own_dim), tokens (..., K, token_dim)."""
        return obs[..., self.own_index()], obs[..., self.token_index()]

    def signature(self) -> dict[str, list]:
        """What a set-structured policy file records to check an environment against it."""
        return {"own": [[b.name, b.width] for b in self.own_blocks], "token": [b.name for b in self.token_blocks],
                "twin": [b.name for b in self.blocks if b.twin]}

    @classmethod
    def for_obs_dim(cls, dim: int, blocks: tuple[Block, ...] = OBS_BLOCKS) -> ObsLayout:
        """The layout of ``blocks`` whose flat vector has ``dim`` entries (K follows from it)."""
        probe = cls(0, blocks)
        K, rem = divmod(dim - probe.own_dim, probe.token_dim)
        if rem or K < 1:
            raise ValueError(f"no observation layout has {dim} entries (own {probe.own_dim} + K x {probe.token_dim})")
        return cls(K, blocks)

    @staticmethod
    def blocks_of(signature: dict[str, list]) -> tuple[Block, ...]:
        """The blocks of the view (``VIEWS``) a set-structured policy file's signature was recorded on."""
        for blocks in VIEWS.values():
            sig = ObsLayout(1, blocks).signature()
            if (sig["own"], sig["token"]) == (signature["own"], signature["token"]):
                return blocks
        raise ValueError(f"no twin.view reads RSU tokens {signature['token']} (views: {', '.join(VIEWS)})")


def area_frame(p: ModelParams) -> tuple[np.ndarray, float]:
    """Centre and half-width of the area the RSUs cover, to scale positions."""
    lo = (p.rsu_xy - p.rsu_radius[:, None]).min(axis=0)
    hi = (p.rsu_xy + p.rsu_radius[:, None]).max(axis=0)
    return 0.5 * (lo + hi), float(0.5 * (hi - lo).max())


def others_per_rsu(p: ModelParams, tasks: Tasks, covered: np.ndarray, spec_eff: np.ndarray,
                   active: np.ndarray) -> dict[str, np.ndarray]:
    """The global view's blocks (E, I, K): per RSU, the other active CVs it covers and their summed task
    cycles (W_ref units), both / OTHERS_SCALE, and their mean spectral efficiency to it (0 where it
    covers no other CV)."""
    cov = (covered & active[..., None]).astype(float)                 # (E, I, K)
    cycles = (tasks.size * tasks.intensity * active)[..., None] / p.W_ref  # (E, I, 1)
    se = spec_eff / SPEC_EFF_SCALE
    count = cov.sum(axis=-2, keepdims=True) - cov                       # all covered CVs but i
    load = (cov * cycles).sum(axis=-2, keepdims=True) - cov * cycles
    se_sum = (cov * se).sum(axis=-2, keepdims=True) - cov * se
    a = active[..., None]
    return {"dt_others": count / OTHERS_SCALE * a, "dt_others_cycles": load / OTHERS_SCALE * a,
            "dt_others_spec_eff": np.where(count > 0, se_sum / np.maximum(count, 1.0), 0.0) * a}


def dt_part(p: ModelParams, mob: MobilityState, queues: QueueState) -> dict[str, np.ndarray]:
    """The twin's view by block: RSU backlogs (E, I, K), G_rsu (E, I, 3), predicted distance at t+1 (E, I, K)."""
    E, I = mob.x.shape
    q = queues.q_rsu / p.W_ref                                      # (E, K)
    agg = np.stack([q.sum(-1), q.mean(-1), q.max(-1)], axis=-1)      # (E, 3)
    # Constant-velocity prediction of where each CV is one slot ahead.
    x_next = mob.x + mob.speed * np.cos(mob.heading) * p.tau
    y_next = mob.y + mob.speed * np.sin(mob.heading) * p.tau
    d_next = distance_3d(p, horizontal_distance(p, x_next, y_next)) / p.rsu_radius
    d_next = d_next * mob.active[..., None]
    return {"dt_backlog": np.broadcast_to(q[:, None, :], (E, I, q.shape[-1])),
            "dt_aggregate": np.broadcast_to(agg[:, None, :], (E, I, 3)), "dt_distance_next": d_next}


INFO_MODELS = ("oracle", "reported", "previous")  # twin.info: what the global view knows before the decision
GLOBAL_NAMES = tuple(b.name for b in GLOBAL_BLOCKS)


class DigitalTwin:
    """Builds actor observations and the critic's state; models twin fidelity.

    ``staleness`` delays the DT part by that many slots (``staleness_carry``: across episode
    boundaries too, else every episode's first slots are fresh); ``sync_error`` adds Gaussian
    noise to it, relative (``sync_error_kind = multiplicative``: an empty queue always shows
    exactly 0) or in the observation's scaled units (``additive``), drawn from the twin's own
    generator, so it never shifts the task or fading streams. ``hide`` shows named twin blocks
    as zeros. The numpy and the fused (cosim/fast/step.py) observation share :meth:`seen_dt`, which
    applies all of these to the true DT part in layout order.

    ``info`` (``twin.view = global`` only) is what the twin knows about the other CVs when the
    actor decides: ``oracle``, their current-slot task cycles and spectral efficiencies, exact and
    free (what a twin that knows every task before it is reported would show); ``reported``, the
    same values, available only after every CV has sent its task descriptor (``report_bits``) over
    its V2I link, whose delay and energy each CV pays in the slot (:func:`cosim.model.report_cost`,
    charged by the environment); ``previous``, the last slot's values (zeros in an episode's first
    slot, or with ``staleness_carry`` the previous episode's last). The critic's state always holds
    the current, true values.
    """

    def __init__(self, p: ModelParams, enabled: bool = True, sync_error: float = 0.0, staleness: int = 0,
                 speed_scale: float = 16.0, view: str = "paper", hide: tuple[str, ...] = (),
                 sync_error_kind: str = "multiplicative", staleness_carry: bool = False, info: str = "oracle",
                 report_bits: float = 8000.0):
        self.p = p
        self.enabled = enabled
        self.sync_error = sync_error
        if sync_error_kind not in ("multiplicative", "additive"):
            raise ConfigError(f"twin.sync_error_kind: '{sync_error_kind}' is not one of multiplicative, additive")
        self.sync_error_kind = sync_error_kind
        self.staleness = staleness
        self.staleness_carry = bool(staleness_carry)
        self.view = view
        if info not in INFO_MODELS:
            raise ConfigError(f"twin.info: '{info}' is not one of {', '.join(INFO_MODELS)}")
        if info != "oracle" and view != "global":
            raise ConfigError(f"twin.info: {info} is about the global view's blocks; it needs twin.view: global "
                              f"(twin.view is {view})")
        self.info = info
        self.report_bits = float(report_bits)
        self.layout = ObsLayout(p.n_rsus, VIEWS[view])
        shown = [b.name for b in self.layout.blocks if b.twin]
        for name in hide:
            if name not in shown:
                raise ConfigError(f"twin.hide: '{name}' is not a twin block of twin.view={view} "
                                  f"(choose from {', '.join(shown)})")
        self.hide = tuple(hide)
        sl, off = self.layout.slices(), self.layout.dt_slice.start
        self._hide_idx = np.array([j - off for name in self.hide for j in range(sl[name].start, sl[name].stop)],
                                  dtype=np.intp)
        self.centre, self.half_width = area_frame(p)
        self.speed_scale = speed_scale
        self._history: deque[np.ndarray] = deque(maxlen=staleness + 1)
        self._previous: dict[str, np.ndarray] | None = None  # info = previous: the last slot's global blocks
        self._rng = np.random.default_rng()

    @property
    def charges_reports(self) -> bool:
        """True when every CV pays its task-descriptor report before the decision (info = reported)."""
        return self.enabled and self.info == "reported"

    def reset(self, seed: int | None) -> None:
        if not self.staleness_carry:
            self._history.clear()
            self._previous = None
        self._rng = np.random.default_rng(seed)

    def seen_dt(self, true_dt: np.ndarray) -> np.ndarray:
        """The DT part the actor sees (E, I, n) from the true one, both in layout order: the lag
        (staleness), the sync error, the hidden blocks; zeros without the twin. Records ``true_dt``."""
        if self._history and self._history[-1].shape != true_dt.shape:  # a fleet of another size
            self._history.clear()
        self._history.append(true_dt)
        if not self.enabled:
            return np.zeros_like(true_dt)
        seen = self._history[0]
        if self.sync_error > 0:  # one draw over the whole DT part, in layout order
            noise = self._rng.standard_normal(seen.shape)
            seen = seen + self.sync_error * noise if self.sync_error_kind == "additive" \
                else seen * (1.0 + self.sync_error * noise)
        if self._hide_idx.size:  # an ablation: the actor sees these blocks as zeros
            seen = seen.copy()
            seen[..., self._hide_idx] = 0.0
        return seen

    def _known_global(self, now: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The global blocks the twin knows at decision time under ``info`` (``now``: this slot's)."""
        if self.info != "previous":
            return now
        prev = self._previous
        if prev is None or any(prev[k].shape != v.shape for k, v in now.items()):
            prev = {k: np.zeros_like(v) for k, v in now.items()}
        self._previous = now
        return prev

    def observe(self, mob: MobilityState, tasks: Tasks, cv_cpu: np.ndarray, covered: np.ndarray,
                d3: np.ndarray, spec_eff: np.ndarray, queues: QueueState) -> tuple[np.ndarray, np.ndarray]:
        """-> (actor observations (E, I, D) float32, critic state (E, I*D) float32)."""
        p = self.p
        hi = lambda r: r[1] if r[1] > 0 else 1.0  # noqa: E731
        act = mob.active.astype(float)
        task = np.stack([tasks.size / hi(p.size_range), tasks.instr / hi(p.instr_range),
                         tasks.intensity / hi(p.intensity_range), tasks.co_intensity / hi(p.co_intensity_range),
                         cv_cpu / p.cv_cpu_range[1], tasks.deadline / hi(p.deadline_range)], axis=-1)
        pos = np.stack([(mob.x - self.centre[0]) / self.half_width,
                        (mob.y - self.centre[1]) / self.half_width], axis=-1)
        vel = np.stack([mob.speed * np.cos(mob.heading), mob.speed * np.sin(mob.heading)], axis=-1) / self.speed_scale
        E, I = mob.x.shape
        K = p.n_rsus
        a = act[..., None]
        base = {"task": task * a, "position": pos * a, "velocity": vel * a,
                "covered": covered.astype(float), "distance": (d3 / p.rsu_radius) * a,
                "spec_eff": (spec_eff / SPEC_EFF_SCALE) * a,
                "queues": np.stack([queues.q_loc / p.W_ref, queues.energy / p.E_ref], axis=-1),
                "rsu_capacity": np.broadcast_to(p.rsu_capacity / p.rsu_cpu, (E, I, K)), "active": a}
        true_dt = dt_part(p, mob, queues)
        known = dict(true_dt)
        if self.view == "global":
            now = others_per_rsu(p, tasks, covered, spec_eff, mob.active)
            true_dt.update(now)
            known.update(self._known_global(now))
        dt_names = [b.name for b in self.layout.blocks if b.twin]
        seen = self.seen_dt(np.concatenate([np.broadcast_to(known[k], (E, I, known[k].shape[-1]))
                                            for k in dt_names], axis=-1))
        sl, off = self.layout.slices(), self.layout.dt_slice.start
        seen_blocks = {k: seen[..., sl[k].start - off:sl[k].stop - off] for k in dt_names}
        obs = self.layout.assemble({**base, **seen_blocks}).astype(np.float32)
        state = self.layout.assemble({**base, **true_dt}).astype(np.float32).reshape(E, -1)
        return obs, state
