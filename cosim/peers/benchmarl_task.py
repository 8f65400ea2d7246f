"""A BenchMARL task for the co-simulation (TorchRL's ``PettingZooWrapper`` around ``make_env``).

    from benchmarl.algorithms import MappoConfig
    from benchmarl.experiment import Experiment, ExperimentConfig
    from benchmarl.models.mlp import MlpConfig
    from cosim.peers.benchmarl_task import CoSimTask, TorchRLPolicy

    task = CoSimTask.COSIM.get_task(config={"n_cvs": 5})     # keys: make_env's keyword arguments
    exp = Experiment(task=task, algorithm_config=MappoConfig.get_from_yaml(), model_config=MlpConfig.get_from_yaml(),
                     critic_model_config=MlpConfig.get_from_yaml(), seed=0, config=ExperimentConfig.get_from_yaml())
    exp.run()
    policy = TorchRLPolicy(exp.policy)                       # act(obs (E, I, D)) -> (E, I, 3K+2)

All CVs form one group, ``"agents"``; the global state is the centralised critic's input
(``return_state``). BenchMARL builds every copy of a vectorised env with the experiment's
seed; the task gives the k-th env it builds seed + k instead, so the copies play different
episodes and the run stays reproducible.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

import numpy as np
import torch
from benchmarl.environments.common import Task, TaskClass
from tensordict import TensorDict
from torchrl.data import Composite
from torchrl.envs import EnvBase, PettingZooWrapper
from torchrl.envs.utils import ExplorationType, set_exploration_type

from ..env import make_env

GROUP = "agents"


class CoSimTaskClass(TaskClass):
    """BenchMARL's view of ``make_env(**config)``: continuous actions, one group, a global state."""

    def get_env_fun(self, num_envs: int, continuous_actions: bool, seed: int | None,
                    device: Any) -> Callable[[], EnvBase]:
        config = dict(self.config)
        counter = itertools.count()

        def build() -> EnvBase:
            env = make_env(**config)
            k = next(counter)
            return PettingZooWrapper(env, return_state=True, group_map={GROUP: list(env.possible_agents)},
                                     categorical_actions=False, use_mask=False, device=device,
                                     seed=None if seed is None else seed + k)
        return build

    def supports_continuous_actions(self) -> bool:
        return True

    def supports_discrete_actions(self) -> bool:
        return False

    def has_render(self, env: EnvBase) -> bool:
        return False

    def max_steps(self, env: EnvBase) -> int:
        return env._env.sim.episode_slots

    def group_map(self, env: EnvBase) -> dict[str, list[str]]:
        return env.group_map

    def _only(self, env: EnvBase, key: str) -> Composite:
        spec = env.observation_spec.clone()
        for group in self.group_map(env):
            for k in list(spec[group].keys()):
                if k != key:
                    del spec[group][k]
        if "state" in spec.keys():
            del spec["state"]
        return spec

    def observation_spec(self, env: EnvBase) -> Composite:
        return self._only(env, "observation")

    def info_spec(self, env: EnvBase) -> Composite | None:
        return self._only(env, "info")

    def state_spec(self, env: EnvBase) -> Composite | None:
        return Composite({"state": env.observation_spec["state"].clone()})

    def action_spec(self, env: EnvBase) -> Composite:
        return env.full_action_spec

    def action_mask_spec(self, env: EnvBase) -> Composite | None:
        return None

    @staticmethod
    def env_name() -> str:
        return "dtcosim"


class CoSimTask(Task):
    """The co-simulation's BenchMARL tasks; ``get_task(config={...})`` takes make_env's keyword arguments."""

    COSIM = None

    @staticmethod
    def associated_class():
        return CoSimTaskClass

    def get_task(self, config: dict[str, Any] | None = None) -> TaskClass:
        return self.associated_class()(name=self.name, config=dict(config or {}))  # no YAML needed


class TorchRLPolicy:
    """A TorchRL/BenchMARL policy module as a project policy (deterministic: the distribution's mode)."""

    def __init__(self, policy: Any, group: str = GROUP, name: str = "benchmarl-mappo"):
        self.policy = policy
        self.group = group
        self.name = name

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32))
        E, I = x.shape[:2]
        td = TensorDict({self.group: TensorDict({"observation": x}, batch_size=[E, I])}, batch_size=[E])
        mode = ExplorationType.DETERMINISTIC if deterministic else ExplorationType.RANDOM
        with torch.no_grad(), set_exploration_type(mode):
            out = self.policy(td)
        return out.get((self.group, "action")).numpy().astype(float)
