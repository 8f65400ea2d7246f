"""Stable-Baselines3 on the PettingZoo env through SuperSuit: one shared policy for every CV.

    from cosim.peers.sb3 import sb3_vec_env, SB3Policy
    venv = sb3_vec_env(copies=16, n_cvs=5)           # 16 env copies x 5 CVs = 80 SB3 "envs"
    model = stable_baselines3.PPO("MlpPolicy", venv).learn(54_000 * 5)
    policy = SB3Policy(model)                        # act(obs (E, I, D)) -> (E, I, 3K+2)

Truncation: the env ends every episode by truncation (``episode_slots`` slots), never
in a terminal state. SuperSuit's SB3 wrapper (``concat_vec_envs_v1(...,
base_class="stable_baselines3")``) merges ``terminated`` and ``truncated`` into ``done``
and drops the difference, so SB3 would treat the 30th slot as terminal (value 0) and
learn a wrong horizon. SB3 bootstraps a done step from ``info["terminal_observation"]``
when ``info["TimeLimit.truncated"]`` is true; SuperSuit already stores the terminal
observation, :class:`TruncationAwareSB3VecEnv` adds the flag.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import supersuit as ss
from stable_baselines3.common.base_class import BaseAlgorithm
from supersuit.vector.sb3_vector_wrapper import SB3VecEnvWrapper

from ..config import CosimError
from ..env import make_env


class TruncationAwareSB3VecEnv(SB3VecEnvWrapper):
    """SuperSuit's SB3 wrapper, keeping truncation as ``info["TimeLimit.truncated"]`` for SB3's bootstrap."""

    _pending_seed: int | None = None

    def seed(self, seed: int | None = None) -> list[None]:
        # SuperSuit's ConcatVecEnv has no seed(): keep it for the next reset, which gives copy c seed + c.
        self._pending_seed = seed
        return [None] * self.num_envs

    def reset(self, seed: int | None = None, options: dict | None = None):
        seed = seed if seed is not None else self._pending_seed
        self._pending_seed = None
        observations, self.reset_infos = self.venv.reset(seed=seed, options=options)
        return observations

    def step_wait(self):
        observations, rewards, terminations, truncations, infos = self.venv.step_wait()
        dones = np.logical_or(terminations, truncations)
        for i in np.flatnonzero(dones):
            infos[i]["TimeLimit.truncated"] = bool(truncations[i] and not terminations[i])
        return observations, rewards, dones, infos


def sb3_vec_env(copies: int = 16, **env_kwargs: Any) -> TruncationAwareSB3VecEnv:
    """``copies`` copies of ``make_env(**env_kwargs)`` as one SB3 VecEnv with copies x I entries (one per CV).

    The copies play different episodes (each draws fresh entropy; ``venv.seed(s)`` makes them
    reproducible with seeds s, s+1, ...).
    """
    if copies < 1:
        raise CosimError(f"copies must be at least 1, got {copies}")
    venv = ss.pettingzoo_env_to_vec_env_v1(make_env(**env_kwargs))
    venv = ss.concat_vec_envs_v1(venv, copies, num_cpus=0, base_class="gymnasium")
    return TruncationAwareSB3VecEnv(venv)


class SB3Policy:
    """A trained SB3 model as a project policy: the same network for every CV, deterministic by default."""

    def __init__(self, model: BaseAlgorithm, name: str = "sb3-ppo"):
        self.model = model
        self.name = name

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        E, I, D = obs.shape
        actions, _ = self.model.predict(np.asarray(obs, dtype=np.float32).reshape(E * I, D),
                                        deterministic=deterministic)
        return np.asarray(actions, dtype=float).reshape(E, I, -1)
