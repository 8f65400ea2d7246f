"""Environments: a vectorised batch co-simulation and a PettingZoo ParallelEnv.

One slot, in the order of docs/model.md section 2: mobility gives positions, every
CV draws a task and every link a fade, agents observe and act, the model turns
the projected actions into delays, energies, cost and reward, queues move on,
mobility advances tau seconds.

:class:`BatchCoSim` steps E episodes at once in numpy (all in lockstep, every
episode ``episode_slots`` long); :class:`CoSimParallelEnv` is the same
simulation with E = 1 behind PettingZoo's ParallelEnv API.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from . import fast
from .fast import step as fast_step
from . import model as M
from .config import Config, ConfigError, CosimError, load_config, with_rsus
from .mobility import BatchMobility, MobilityState, make_mobility
from .resources import available_memory_mb
from .twin import DigitalTwin, ObsLayout

ACTION_BOUND = 10.0  # raw actions in [-10, 10] already saturate every softmax and sigmoid


@dataclass
class StepOutput:
    """What one batch step returns."""

    obs: np.ndarray           # (E, I, D) actor observations for the next slot
    state: np.ndarray         # (E, S) critic state for the next slot
    agent_reward: np.ndarray  # (E, I), r_i
    reward: np.ndarray        # (E,), R(t)
    done: bool                # the episode ended (truncation at episode_slots)
    result: M.SlotResult      # everything the model computed this slot
    decision: M.Decision      # the projected decision
    mobility: MobilityState   # where the CVs were during the slot


# Bytes one slot of the batch environment holds per (environment, CV, RSU) and per (environment, CV),
# measured with tracemalloc at 4-16 environments, 50-400 CVs and 5-40 RSUs (330-490 and about 2,500),
# with a margin: the observation and the critic's state grow with the RSUs, the rest with CVs x RSUs.
ENV_BYTES_PER_CV_RSU = 800
ENV_BYTES_PER_CV = 4000


def check_env_memory(n_envs: int, n_cvs: int, n_rsus: int) -> None:
    """Refuse, in one line, a batch environment whose arrays would not fit this machine's free memory."""
    need_mb = n_envs * n_cvs * (ENV_BYTES_PER_CV_RSU * n_rsus + ENV_BYTES_PER_CV) / 2**20
    have = available_memory_mb()
    if have is not None and need_mb > 0.8 * have:
        fits = int(0.8 * have * 2**20 / (n_envs * (ENV_BYTES_PER_CV_RSU * n_rsus + ENV_BYTES_PER_CV)))
        raise ConfigError(f"{n_envs} environment(s) x {n_cvs} CVs x {n_rsus} RSUs need about {need_mb:,.0f} MB per "
                          f"slot, over 80 % of the {have:,.0f} MB available: use at most {max(fits, 0):,} CVs (or "
                          f"fewer environments or RSUs)")


class BatchCoSim:
    """E co-simulated episodes stepped together; numpy arrays in and out."""

    # The step runs in cosim/fast/step.py's numba kernels when numba is installed (the same numbers as
    # cosim.model within 1e-9); set False on the class or an instance for the numpy reference.
    fused: bool = fast.AVAILABLE

    @functools.cached_property
    def _fused_pv(self) -> fast.Params:
        return fast.params_of(self.params)

    @functools.cached_property
    def _fused_obs(self) -> tuple[fast_step.ObsOffsets, fast_step.ObsScales]:
        """The observation kernel's block offsets (from the twin's layout) and scales."""
        return fast_step.obs_offsets(self.layout), fast_step.obs_scales(self.params, self.twin.speed_scale)

    def __init__(self, cfg: Config | None = None, n_envs: int = 1, n_cvs: int | None = None,
                 backend: str | None = None, twin: bool | None = None, seed: int | None = None,
                 mobility: Any = None, initial_energy_queue: tuple[float, float] | None = None,
                 **sumo_kwargs: Any):
        cfg = cfg if cfg is not None else load_config()
        if n_cvs is not None:
            cfg = cfg.replace(**{"scenario.n_cvs": n_cvs})
        if twin is not None:
            cfg = cfg.replace(**{"twin.enabled": bool(twin)})
        if backend is not None and backend != cfg.backend:
            cfg = cfg.replace(backend=backend)
        self.backend = cfg.backend
        self.n_envs = n_envs
        self.n_cvs = cfg.scenario.n_cvs
        check_env_memory(n_envs, self.n_cvs, len(cfg.scenario.rsus) if cfg.sumo.n_rsus is None else cfg.sumo.n_rsus)
        self.mobility: BatchMobility = mobility if mobility is not None else make_mobility(
            cfg, self.backend, n_envs, self.n_cvs, **sumo_kwargs)
        rsus = tuple(self.mobility.rsu_configs())
        # Placed on or read from a map: the saved config says which were used, and reruns with them.
        self.cfg = cfg = with_rsus(cfg, rsus)
        self.params = M.ModelParams.from_config(cfg, rsus)
        self.n_rsus = self.params.n_rsus
        tw = cfg.twin
        self.twin = DigitalTwin(self.params, tw.enabled, tw.sync_error, tw.staleness,
                                speed_scale=max(cfg.scenario.cv_speed_mps[1], 1.0), view=tw.view, hide=tw.hide,
                                sync_error_kind=tw.sync_error_kind, staleness_carry=tw.staleness_carry,
                                info=tw.info, report_bits=tw.report_bits)
        # twin.info = reported: each CV's report before the decision, (delay, energy) (E, I) of this slot.
        self.report: tuple[np.ndarray, np.ndarray] | None = None
        self._prev_spec_eff: np.ndarray | None = None
        self.layout: ObsLayout = self.twin.layout
        self.obs_dim = self.layout.dim
        self.state_dim = self.n_cvs * self.obs_dim
        self.actions = M.ActionLayout(self.n_rsus)
        self.action_dim = self.actions.dim
        if self.fused:
            self._fused_obs  # noqa: B018 - a view the observation kernel cannot write is refused here, in one line
        self.episode_slots = cfg.scenario.episode_slots
        # Training draws episodes' starting energy queues (training.initial_energy_queue); evaluation starts empty.
        self.initial_energy_queue = initial_energy_queue
        self._seed_seq = np.random.SeedSequence(seed)
        self._rng = np.random.default_rng(self._seed_seq)
        self._closed = False
        self.t = 0
        # Called with (result, decision) after the model and before the vehicles move on: sumo-gui
        # then draws each CV's decision where the CV is at the end of its slot.
        self.before_advance: Callable[[M.SlotResult, M.Decision], None] | None = None

    # -- one slot's random inputs and observation --------------------------------------------
    def _begin_slot(self) -> tuple[np.ndarray, np.ndarray]:
        shape = (self.n_envs, self.n_cvs)
        self.tasks = M.draw_tasks(self._rng, self.params, shape)
        self.fading = M.draw_fading(self._rng, shape + (self.n_rsus,))
        if self.fused:
            fast_step.channel_and_observation(self)
        else:
            mob = self.mob
            hd = M.horizontal_distance(self.params, mob.x, mob.y)
            self.covered = M.coverage(self.params, hd, mob.active)
            self.d3 = M.distance_3d(self.params, hd)
            self.spec_eff = M.spectral_efficiency(self.params, self.d3, self.fading)
            self.obs, self.state = self.twin.observe(mob, self.tasks, self.cv_cpu, self.covered, self.d3,
                                                     self.spec_eff, self.queues)
        if self.twin.charges_reports:  # at the previous slot's rate (an episode's first slot: this one's)
            prev = self._prev_spec_eff if self._prev_spec_eff is not None else self.spec_eff
            self.report = M.report_cost(self.params, self.twin.report_bits, prev, self.covered)
        self._prev_spec_eff = self.spec_eff
        return self.obs, self.state

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Start new episodes; ``seed`` restarts the random streams (None continues them)."""
        if seed is not None:
            self._seed_seq = np.random.SeedSequence(seed)
            self._rng = np.random.default_rng(self._seed_seq)
        mob_seed, twin_seed = (int(s) for s in self._rng.integers(0, 2**31 - 1, 2))
        self._prev_spec_eff = None
        self.mob = self.mobility.reset_batch(mob_seed)
        self.twin.reset(twin_seed)
        self.cv_cpu = M.draw_cv_cpu(self._rng, self.params, (self.n_envs, self.n_cvs))
        self.queues = M.QueueState.zeros(self.n_envs, self.n_cvs, self.n_rsus, self.params.window)
        if self.initial_energy_queue is not None and self.initial_energy_queue[1] > 0:
            # Drawn last, and only when asked for, so that the default streams are unchanged.
            lo, hi = self.initial_energy_queue
            self.queues.energy = self._rng.uniform(lo, hi, (self.n_envs, self.n_cvs))
        self.t = 0
        return self._begin_slot()

    def project(self, raw: np.ndarray) -> M.Decision:
        """Raw actions -> a feasible decision under the config's ``actions.*`` parameterisation."""
        if self.params.paper_actions:
            return M.project(self.params, raw, self.covered, self.mob.active)
        return M.project_actions(self.params, raw, self.covered, self.mob.active, self.tasks, self.spec_eff,
                                 M.start_of_slot_wait(self.params, self.queues))

    def step(self, raw_actions: np.ndarray) -> StepOutput:
        """Apply raw actions (E, I, 3K+2) for the current slot and move to the next."""
        raw = np.asarray(raw_actions, dtype=float).reshape(self.n_envs, self.n_cvs, self.action_dim)
        # The kernels cover actions.bandwidth and actions.split, not actions.cpu: proportional (its CPU couples
        # every CV at an RSU, each pass) nor the report charge of twin.info: reported; those run in numpy.
        if self.fused and self.report is None and fast_step.projection_options(self.params) is not None:
            decision, result, self.queues = fast_step.project_and_slot(
                self.params, self._fused_pv, self.queues, self.tasks, self.cv_cpu, self.spec_eff, raw,
                self.covered, self.mob.active)
        else:
            decision = self.project(raw)
            result, self.queues = M.slot(self.params, self.queues, self.tasks, self.cv_cpu, self.spec_eff,
                                         decision, self.mob.active, signalling=self.report)
        mob_now = self.mob
        if self.before_advance is not None:
            self.before_advance(result, decision)
        self.mob = self.mobility.advance_batch(self.params.tau)
        self.t += 1
        obs, state = self._begin_slot()
        return StepOutput(obs, state, result.agent_reward, result.reward, self.t >= self.episode_slots,
                          result, decision, mob_now)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.mobility.close()

    def __enter__(self) -> BatchCoSim:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# Per-agent info keys of CoSimParallelEnv, the same at reset and at every step, numeric only (fixed
# shapes, so that spec-inferring libraries such as TorchRL work). K = number of RSUs.
INFO_SCALARS = ("active", "delay_s", "energy_j", "cost", "deadline_miss", "reward", "q_loc", "energy_queue",
                "system_cost", "system_reward")
INFO_VECTORS = ("split", "bandwidth", "cpu_hz", "instr_mode")  # (K+1,), (K,), (K,), (K,)


def slot_infos(out: StepOutput | None, queues: M.QueueState, active: np.ndarray, n_rsus: int,
               e: int = 0) -> dict[str, np.ndarray]:
    """Per-CV info columns of environment ``e``, built once for all CVs: name -> (I,) or (I, K[+1]) array.

    ``out`` None gives the reset columns: no slot has run yet, so its metrics are zero.
    """
    n = active.shape[-1]
    if out is None:
        z = np.zeros(n)  # scalar columns become python floats, so sharing this one is harmless
        cols = {"active": active[e].copy(), "delay_s": z, "energy_j": z, "cost": z,
                "deadline_miss": np.zeros(n, bool), "reward": z, "system_cost": z, "system_reward": z,
                "split": np.zeros((n, n_rsus + 1)), "bandwidth": np.zeros((n, n_rsus)),
                "cpu_hz": np.zeros((n, n_rsus)),
                "instr_mode": np.zeros((n, n_rsus), bool)}
    else:
        r, d = out.result, out.decision
        cols = {"active": r.active[e], "delay_s": r.delay[e], "energy_j": r.energy[e], "cost": r.cost[e],
                "deadline_miss": r.deadline_miss[e], "reward": r.agent_reward[e],
                "system_cost": np.full(n, r.system_cost[e]), "system_reward": np.full(n, r.reward[e]),
                "split": d.split[e].copy(), "bandwidth": d.bandwidth[e].copy(), "cpu_hz": d.cpu[e].copy(),
                "instr_mode": r.instr_mode[e] & r.offloaded[e]}
    cols["q_loc"] = queues.q_loc[e]
    cols["energy_queue"] = queues.energy[e]
    return cols


def mode_labels(out: StepOutput, e: int = 0) -> np.ndarray:
    """(I, K) strings: '-' (no part at that RSU), 'InstrT' or 'DataT'."""
    r = out.result
    return np.where(~r.offloaded[e], "-", np.where(r.instr_mode[e], "InstrT", "DataT"))


class CoSimParallelEnv(ParallelEnv):
    """PettingZoo ParallelEnv over one co-simulated episode at a time.

    Agents ``cv_0`` ... ``cv_{I-1}`` are present for the whole episode; each
    acts with 3K+2 raw numbers in [-10, 10] that the environment projects onto
    the feasible set. Rewards are the per-agent r_i (``reward='agent'``, they add
    up to R(t)) or R(t) for every agent (``reward='team'``).

    Infos hold the same numeric keys at reset and at every step (``INFO_SCALARS``
    and ``INFO_VECTORS``; zeros at reset, before any slot). The transmission
    modes as strings are in :attr:`modes`, not in the infos. Episodes end by
    truncation only (``episode_slots`` slots, never a terminal state): learners
    should bootstrap from the value of the last observation.

    Seeding: ``reset(seed=s)`` restarts every random stream from ``s``;
    ``reset()`` continues the stream, except in a copy (``copy.deepcopy``,
    pickling: what vectorising wrappers do), whose first unseeded reset draws
    fresh OS entropy, so that copies play different episodes.
    """

    metadata = {"name": "dtcosim_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(self, cfg: Config | None = None, backend: str | None = None, n_cvs: int | None = None,
                 seed: int | None = None, twin: bool | None = None, reward: str = "agent",
                 render_mode: str | None = None, **sumo_kwargs: Any):
        if reward not in ("agent", "team"):
            raise CosimError(f"reward '{reward}' is not one of agent, team")
        if render_mode is not None:
            raise CosimError(f"render_mode '{render_mode}' is not supported: the environment draws nothing "
                             "itself (watch it in sumo-gui with backend='sumo', gui=True)")
        self.render_mode = None
        self.sim = BatchCoSim(cfg, n_envs=1, n_cvs=n_cvs, backend=backend, twin=twin, seed=seed, **sumo_kwargs)
        self.cfg = self.sim.cfg
        self.reward_mode = reward
        self.possible_agents = [f"cv_{i}" for i in range(self.sim.n_cvs)]
        self.agents: list[str] = []
        self._obs_space = spaces.Box(-np.inf, np.inf, (self.sim.obs_dim,), np.float32)
        self._act_space = spaces.Box(-ACTION_BOUND, ACTION_BOUND, (self.sim.action_dim,), np.float32)
        self.state_space = spaces.Box(-np.inf, np.inf, (self.sim.state_dim,), np.float32)
        self.last: StepOutput | None = None
        self._fresh_entropy = False

    def __getstate__(self) -> dict[str, Any]:
        # Copies (deepcopy, cloudpickle in SuperSuit's concat_vec_envs, worker processes) carry this
        # env's random stream; without fresh entropy they would all replay the same episodes.
        state = self.__dict__.copy()
        state["_fresh_entropy"] = True
        return state

    def observation_space(self, agent: str) -> spaces.Box:  # the same object every call, as PettingZoo asks
        return self._obs_space

    def action_space(self, agent: str) -> spaces.Box:
        return self._act_space

    def _obs_dict(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        return {a: obs[0, i] for i, a in enumerate(self.possible_agents)}

    def _infos(self, out: StepOutput | None) -> dict[str, dict[str, Any]]:
        cols = slot_infos(out, self.sim.queues, self.sim.mob.active, self.sim.n_rsus)
        scal = {k: cols[k].tolist() for k in INFO_SCALARS}  # python floats/bools, one conversion per key
        vec = {k: cols[k] for k in INFO_VECTORS}
        return {a: {**{k: v[i] for k, v in scal.items()}, **{k: v[i] for k, v in vec.items()}}
                for i, a in enumerate(self.possible_agents)}

    @property
    def modes(self) -> dict[str, list[str]]:
        """Each agent's transmission mode per RSU in the last slot: '-', 'InstrT' or 'DataT' (all '-' at reset)."""
        if self.last is None:
            return {a: ["-"] * self.sim.n_rsus for a in self.possible_agents}
        labels = mode_labels(self.last).tolist()
        return dict(zip(self.possible_agents, labels))

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is None and self._fresh_entropy:
            seed = int(np.random.SeedSequence().entropy)  # fresh OS entropy, as a Gymnasium env's first reset
        self._fresh_entropy = False
        obs, _ = self.sim.reset(seed)
        self.agents = list(self.possible_agents)
        self.last = None
        return self._obs_dict(obs), self._infos(None)

    def state(self) -> np.ndarray:
        return self.sim.state[0]

    def step(self, actions: dict[str, np.ndarray]):
        if not self.agents:
            raise CosimError("step() called on a finished episode: call reset() first")
        raw = np.zeros((1, self.sim.n_cvs, self.sim.action_dim))
        for i, a in enumerate(self.possible_agents):
            if a in actions:
                raw[0, i] = actions[a]
        np.clip(raw, -ACTION_BOUND, ACTION_BOUND, out=raw)
        out = self.sim.step(raw)
        self.last = out
        per_agent = out.reward[0] if self.reward_mode == "team" else None
        rew = out.agent_reward[0].tolist()
        rewards = {a: float(per_agent) if per_agent is not None else rew[i]
                   for i, a in enumerate(self.possible_agents)}
        infos = self._infos(out)
        terms = dict.fromkeys(self.possible_agents, False)
        truncs = dict.fromkeys(self.possible_agents, out.done)
        obs = self._obs_dict(out.obs)
        if out.done:
            self.agents = []
        return obs, rewards, terms, truncs, infos

    def render(self) -> None:
        return None

    def close(self) -> None:
        self.sim.close()


def make_env(config: Config | None = None, backend: str | None = None, n_cvs: int | None = None,
             seed: int | None = None, twin: bool | None = None, **kwargs: Any) -> CoSimParallelEnv:
    """A PettingZoo ParallelEnv; None arguments take the config's values (5 CVs, twin on, analytic)."""
    return CoSimParallelEnv(config, backend=backend, n_cvs=n_cvs, seed=seed, twin=twin, **kwargs)


def make_batch_env(config: Config | None = None, n_envs: int = 16, backend: str | None = None,
                   n_cvs: int | None = None, seed: int | None = None, twin: bool | None = None,
                   **kwargs: Any) -> BatchCoSim:
    """A vectorised simulator stepping ``n_envs`` episodes at once (for training)."""
    return BatchCoSim(config, n_envs=n_envs, n_cvs=n_cvs, backend=backend, twin=twin, seed=seed, **kwargs)
