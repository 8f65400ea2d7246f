"""A Gymnasium single-agent view of the co-simulation, for centralised baselines.

One agent controls every CV: it observes all CVs' observations side by side
(I x D numbers, what the CVs see, twin block included) and acts with all their
raw actions (I x (3K+2) numbers in [-10, 10], projected onto the feasible set
as in the multi-agent env). The reward is the system reward R(t).

    from cosim import make_gym_env
    env = make_gym_env(n_cvs=5)
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

Episodes end by truncation after ``episode_slots`` slots (``terminated`` is
always False): bootstrap from the last observation's value.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from .config import Config, CosimError
from .env import ACTION_BOUND, BatchCoSim, StepOutput

# Info keys, the same at reset and at every step, all floats (zero at reset: no slot has run yet).
GYM_INFO_KEYS = ("system_cost", "mean_delay_s", "mean_energy_j", "deadline_misses", "active_cvs")


class CoSimGymEnv(gymnasium.Env):
    """``gymnasium.Env`` with one agent for all CVs (see the module docstring)."""

    metadata = {"render_modes": []}

    def __init__(self, cfg: Config | None = None, backend: str | None = None, n_cvs: int | None = None,
                 twin: bool | None = None, render_mode: str | None = None, **sumo_kwargs: Any):
        if render_mode is not None:
            raise CosimError(f"render_mode '{render_mode}' is not supported: the environment draws nothing "
                             "itself (watch it in sumo-gui with backend='sumo', gui=True)")
        self.render_mode = None
        self.sim = BatchCoSim(cfg, n_envs=1, n_cvs=n_cvs, backend=backend, twin=twin, **sumo_kwargs)
        self.cfg = self.sim.cfg
        n, d, a = self.sim.n_cvs, self.sim.obs_dim, self.sim.action_dim
        self.observation_space = spaces.Box(-np.inf, np.inf, (n * d,), np.float32)
        self.action_space = spaces.Box(-ACTION_BOUND, ACTION_BOUND, (n * a,), np.float32)
        self._done = True

    def __getstate__(self) -> dict[str, Any]:
        # A copy (deepcopy, pickling into a vector env) must not replay this env's episodes:
        # dropping the generator makes its next unseeded reset draw fresh OS entropy.
        state = self.__dict__.copy()
        state["_np_random"] = None
        return state

    @staticmethod
    def _info(out: StepOutput | None) -> dict[str, float]:
        if out is None:
            return dict.fromkeys(GYM_INFO_KEYS, 0.0)
        r = out.result
        act = r.active[0]
        n = max(int(act.sum()), 1)
        return {"system_cost": float(r.system_cost[0]), "mean_delay_s": float((r.delay[0] * act).sum() / n),
                "mean_energy_j": float((r.energy[0] * act).sum() / n),
                "deadline_misses": float(r.deadline_miss[0].sum()), "active_cvs": float(act.sum())}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)  # seeds self.np_random (from OS entropy on a first unseeded reset)
        # A seed gives the same episode as make_env's reset(seed) (and evaluate.py's seeds); no seed
        # continues this env's generator.
        obs, _ = self.sim.reset(seed if seed is not None else int(self.np_random.integers(2**63 - 1)))
        self._done = False
        return obs.reshape(-1), self._info(None)

    def step(self, action: np.ndarray):
        if self._done:
            raise CosimError("step() called on a finished episode: call reset() first")
        raw = np.clip(np.asarray(action, dtype=float), -ACTION_BOUND, ACTION_BOUND)
        if raw.size != self.action_space.shape[0]:
            raise CosimError(f"action has {raw.size} numbers, the env expects {self.action_space.shape[0]} "
                             f"({self.sim.n_cvs} CVs x {self.sim.action_dim})")
        out = self.sim.step(raw.reshape(1, self.sim.n_cvs, self.sim.action_dim))
        self._done = out.done
        return out.obs.reshape(-1), float(out.reward[0]), False, bool(out.done), self._info(out)

    def render(self) -> None:
        return None

    def close(self) -> None:
        self.sim.close()


def make_gym_env(config: Config | None = None, backend: str | None = None, n_cvs: int | None = None,
                 twin: bool | None = None, **kwargs: Any) -> CoSimGymEnv:
    """A Gymnasium env with one agent controlling all CVs; None arguments take the config's values."""
    return CoSimGymEnv(config, backend=backend, n_cvs=n_cvs, twin=twin, **kwargs)
