"""The digital twin and the observations it builds (MODEL.md section 8).

An actor's observation is one fixed-length vector per CV, every entry scaled
to about unit range. Its last block, the *DT part*, is what only the twin
knows: every RSU's backlog, their aggregate G_rsu and the twin's one-slot
prediction of each link's distance. Without the twin (Ly-MAPPO) that block is
zeros of the same length. The critic's global state always has it, true.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from .mobility import MobilityState
from .model import ModelParams, QueueState, Tasks, distance_3d, horizontal_distance

SPEC_EFF_SCALE = 25.0  # log2(1+SNR) at 10 m on the default channel is about 23.5


@dataclass(frozen=True)
class ObsLayout:
    """Named slices of an actor observation for K RSUs (policies read it by name)."""

    n_rsus: int

    def _blocks(self) -> list[tuple[str, int]]:
        K = self.n_rsus
        return [("task", 6),          # G, G_ins, I_task, I_co, C_i, T_max
                ("position", 2),      # x, y (relative to the RSU area)
                ("velocity", 2),      # vx, vy
                ("covered", K), ("distance", K), ("spec_eff", K),
                ("queues", 2),        # Q_loc / W_ref, Y / E_ref
                ("rsu_capacity", K),  # (F_max - C_twin) / F_max
                ("active", 1),
                ("dt_backlog", K), ("dt_aggregate", 3), ("dt_distance_next", K)]

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
        """The DT part: the contiguous tail from dt_backlog on."""
        return slice(self["dt_backlog"].start, self.dim)


def area_frame(p: ModelParams) -> tuple[np.ndarray, float]:
    """Centre and half-width of the area the RSUs cover, to scale positions."""
    lo = (p.rsu_xy - p.rsu_radius[:, None]).min(axis=0)
    hi = (p.rsu_xy + p.rsu_radius[:, None]).max(axis=0)
    return 0.5 * (lo + hi), float(0.5 * (hi - lo).max())


def dt_part(p: ModelParams, mob: MobilityState, queues: QueueState) -> np.ndarray:
    """The twin's view (E, I, 2K+3): RSU backlogs, G_rsu, predicted distance at t+1."""
    E, I = mob.x.shape
    q = queues.q_rsu / p.W_ref                                      # (E, K)
    agg = np.stack([q.sum(-1), q.mean(-1), q.max(-1)], axis=-1)      # (E, 3)
    # Constant-velocity prediction of where each CV is one slot ahead.
    x_next = mob.x + mob.speed * np.cos(mob.heading) * p.tau
    y_next = mob.y + mob.speed * np.sin(mob.heading) * p.tau
    d_next = distance_3d(p, horizontal_distance(p, x_next, y_next)) / p.rsu_radius
    d_next = d_next * mob.active[..., None]
    return np.concatenate([np.broadcast_to(q[:, None, :], (E, I, q.shape[-1])),
                           np.broadcast_to(agg[:, None, :], (E, I, 3)), d_next], axis=-1)


class DigitalTwin:
    """Builds actor observations and the critic's state; models twin fidelity.

    ``staleness`` delays the DT part by that many slots; ``sync_error`` adds
    relative Gaussian noise to it (drawn from the twin's own generator, so it
    never shifts the task or fading streams).
    """

    def __init__(self, p: ModelParams, enabled: bool = True, sync_error: float = 0.0, staleness: int = 0,
                 speed_scale: float = 16.0):
        self.p = p
        self.enabled = enabled
        self.sync_error = sync_error
        self.staleness = staleness
        self.layout = ObsLayout(p.n_rsus)
        self.centre, self.half_width = area_frame(p)
        self.speed_scale = speed_scale
        self._history: deque[np.ndarray] = deque(maxlen=staleness + 1)
        self._rng = np.random.default_rng()

    def reset(self, seed: int | None) -> None:
        self._history.clear()
        self._rng = np.random.default_rng(seed)

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
        base = np.concatenate([
            task * act[..., None], pos * act[..., None], vel * act[..., None],
            covered.astype(float), (d3 / p.rsu_radius) * act[..., None], (spec_eff / SPEC_EFF_SCALE) * act[..., None],
            np.stack([queues.q_loc / p.W_ref, queues.energy / p.E_ref], axis=-1),
            np.full((E, I, K), p.rsu_capacity / p.rsu_cpu), act[..., None],
        ], axis=-1)
        true_dt = dt_part(p, mob, queues)
        self._history.append(true_dt)
        if self.enabled:
            seen = self._history[0]
            if self.sync_error > 0:
                seen = seen * (1.0 + self.sync_error * self._rng.standard_normal(seen.shape))
        else:
            seen = np.zeros_like(true_dt)
        obs = np.concatenate([base, seen], axis=-1).astype(np.float32)
        state = np.concatenate([base, true_dt], axis=-1).astype(np.float32).reshape(E, -1)
        return obs, state
