"""RLlib (new API stack) on the co-simulation: env registration and the trained module as a project policy.

    from cosim.peers.rllib_env import register, RLlibPolicy, ppo_config
    register()                                   # the env name "dtcosim" for RLlib, backed by make_env
    algo = ppo_config(n_cvs=5).build_algo()      # multi-agent PPO, one module shared by every CV
    algo.train()
    policy = RLlibPolicy(algo)                   # act(obs (E, I, D)) -> (E, I, 3K+2), the Gaussian mean

RLlib's ``ParallelPettingZooEnv`` wraps the ParallelEnv; each env runner builds its own
env (fresh entropy, or ``seed + worker index`` through ``config.debugging(seed=...)``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv
from ray.tune.registry import register_env

from ..env import make_env

ENV_NAME = "dtcosim"
MODULE = "shared_cv"  # one RLModule for every CV: parameter sharing, as the project's MAPPO


def register(name: str = ENV_NAME) -> str:
    """Register ``make_env(**env_config)`` with RLlib under ``name``."""
    register_env(name, lambda env_config: ParallelPettingZooEnv(make_env(**dict(env_config))))
    return name


def ppo_config(env_config: dict[str, Any] | None = None, **env_kwargs: Any) -> PPOConfig:
    """Multi-agent PPO with one module shared by all CVs, sampling in the driver process (no env runners)."""
    env_config = dict(env_config or {}, **env_kwargs)
    probe = make_env(**env_config)
    obs_space, act_space = probe.observation_space("cv_0"), probe.action_space("cv_0")
    probe.close()
    return (PPOConfig()
            .environment(register(), env_config=env_config)
            .framework("torch")
            .env_runners(num_env_runners=0, num_envs_per_env_runner=1)
            .multi_agent(policies={MODULE}, policy_mapping_fn=lambda agent_id, episode, **kw: MODULE)
            .rl_module(rl_module_spec=MultiRLModuleSpec(rl_module_specs={
                MODULE: RLModuleSpec(observation_space=obs_space, action_space=act_space)})))


class RLlibPolicy:
    """The shared RLModule of a trained RLlib algorithm as a project policy."""

    def __init__(self, algo: Any, module_id: str = MODULE, name: str = "rllib-ppo"):
        self.module = algo.get_module(module_id)
        self.name = name

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        E, I, D = obs.shape
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32).reshape(E * I, D))
        with torch.no_grad():
            out = self.module.forward_inference({"obs": x})
        logits = out["action_dist_inputs"]
        dist_cls = self.module.get_inference_action_dist_cls()
        dist = dist_cls.from_logits(logits)
        a = dist.to_deterministic().sample() if deterministic else dist.sample()
        return np.clip(a.numpy().astype(float), -10.0, 10.0).reshape(E, I, -1)
