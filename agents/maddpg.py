"""Ly-MADDPG: multi-agent DDPG with centralised Q critics (paper Sec. VII-B, baseline 1).

CTDE as in Lowe et al. (2017): every CV acts with a deterministic actor on its
own observation (two hidden ReLU layers; raw action = its head clipped to the
bound [-10, 10]); every agent i has a centralised critic Q_i(s, a_1..a_I) over
the global state and the joint action. Parameters are shared across agents with
an agent-id one-hot (``training.share_params``). The Lyapunov part is the
environment's: the reward is the drift-plus-penalty R(t) or each agent's r_i
(``training.team_reward``), and the observations carry the twin's block.

One iteration plays ``n_envs`` whole episodes in lockstep. Every vector step
stores the E joint transitions in the replay buffer and, after the warm-up,
makes ``updates_per_step`` updates on ``batch_size`` sampled transitions
(a in [-1, 1] is the normalised action, raw / 10):

    critic:  y_i = reward_scale * r_i + gamma * Q'_i(s', mu'(o'_1), .., mu'(o'_I))
             L = mean_i (Q_i(s, a) - y_i)^2
    actor:   L = -mean_i Q_i(s, a_1, .., mu(o_i), .., a_I) + bound penalty
    targets: theta' <- tau theta + (1 - tau) theta'

Episodes end by the time limit, not in a terminal state, so every target
bootstraps. Exploration adds Gaussian noise of ``exploration_noise`` x bound.
Reward scale, warm-up and action units: see ``agents/offpolicy.py``.

Why a clipped head and not tanh: a deployed deterministic actor
(``agents/checkpoint.py``) outputs its network's head clipped to the bound, so
clip(head) is exactly what runs after training, where a tanh would not survive
the export. A penalty on the head beyond the bound keeps it where the critic's
gradient reaches it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cosim.config import Config
from cosim.env import BatchCoSim

from .nets import ActorSpec
from .offpolicy import (DeterministicActorConfig, DeterministicActorTrainer, QCritic, clip_grad, export_actor,
                        frozen, make_actor, soft_update)


@dataclass(frozen=True)
class MADDPGConfig(DeterministicActorConfig):
    """The shared off-policy settings and the deterministic actor's (agents/offpolicy.py); nothing more."""


class MADDPGTrainer(DeterministicActorTrainer):
    """Multi-agent DDPG: deterministic decentralised actors, centralised Q critics, replay."""

    name = "maddpg"
    SECTION = "maddpg"
    STATE = {**DeterministicActorTrainer.STATE, "actor": "actor_net", "actor_target": "actor_target",
             "critic": "critic", "critic_target": "critic_target", "actor_opt": "actor_opt",
             "critic_opt": "critic_opt"}

    def __init__(self, cfg: Config, sim: BatchCoSim):
        super().__init__(cfg, sim, MADDPGConfig.from_config(cfg, self.SECTION))
        c, I, D, S, A = self.c, self.I, self.D, self.S, self.A

        # Networks and their targets.
        self.actor_net = make_actor(I, D, A, c)
        self.critic = QCritic(I, S, A, c.hidden, c.orthogonal_init)
        self.actor_target = copy.deepcopy(self.actor_net).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor_net.parameters(), lr=c.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=c.critic_lr)

    # -- one gradient update --------------------------------------------------------------------
    def _update(self) -> dict[str, float]:
        c = self.c
        o, s, a, r, o2, s2 = self._batch()

        # Critics: one-step TD target from the target actors and critics.
        with torch.no_grad():
            _, a2 = self._mu(self.actor_target, o2)
            y = r + c.gamma * self.critic_target(s2, a2)
        q = self.critic(s, a)
        critic_loss = F.mse_loss(q, y)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        clip_grad(self.critic, c.max_grad_norm)
        self.critic_opt.step()

        # Actors: ascend Q_i in agent i's own action, the others' from the buffer.
        head, mu = self._mu(self.actor_net, o)
        with frozen(self.critic):
            q_pi = self.critic(s, a, own=mu)
        bound = (head.abs() - 1.0).clamp(min=0.0).pow(2).mean()
        actor_loss = -q_pi.mean() + c.bound_coef * bound
        self.actor_opt.zero_grad()
        actor_loss.backward()
        clip_grad(self.actor_net, c.max_grad_norm)
        self.actor_opt.step()

        soft_update(self.actor_target, self.actor_net, c.tau)
        soft_update(self.critic_target, self.critic, c.tau)
        self.updates += 1
        return {"critic_loss": critic_loss.item(), "actor_loss": actor_loss.item(), "q": q.mean().item(),
                "bound_penalty": bound.item()}

    # -- state ----------------------------------------------------------------------------------
    def actor(self, state: dict[str, Any]) -> tuple[ActorSpec, dict[str, torch.Tensor]]:
        spec = ActorSpec("deterministic", self.I, self.D, self.A, self.c.hidden, self.c.share_params, self.dt_slice)
        return export_actor(spec, state["actor"], state["obs_norm"] if self.c.obs_norm else None,
                            scale=self.c.action_scale)
