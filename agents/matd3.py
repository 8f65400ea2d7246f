"""Ly-MATD3: multi-agent TD3 with centralised twin Q critics (paper Sec. VII-B, baseline 2).

MADDPG (``agents/maddpg.py``) with the three changes of Fujimoto et al. (2018),
applied per agent as in MATD3 (Ackermann et al., 2019):

* twin critics: two centralised Q_i^1, Q_i^2 (s, a_1..a_I), each with a target;
  the TD target takes the smaller of the two target values;
* target policy smoothing: the target actions are mu'(o') plus Gaussian noise of
  ``target_noise`` x bound, clipped to ``noise_clip`` x bound;
* delayed updates: the actor and all target networks move once every
  ``policy_delay`` critic updates.

    critic:  a'_j = clip(mu'(o'_j) + clip(eps, -c, c), -1, 1),  eps ~ N(0, target_noise^2)
             y_i = reward_scale * r + gamma * min_k Q^k'_i(s', a')
             L = mean_i sum_k (Q^k_i(s, a) - y_i)^2
    actor (every policy_delay updates):
             L = -mean_i Q^1_i(s, a_1, .., mu(o_i), .., a_I) + bound penalty

Everything else (deterministic actors whose head is clipped to the bound,
parameter sharing with an agent one-hot, replay, reward scale, warm-up,
exploration noise, observation normalisation, the Lyapunov reward R(t) with the
twin's block in the observations) is as in Ly-MADDPG; see ``agents/offpolicy.py``
for the shared settings.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cosim.config import Config, _f
from cosim.env import BatchCoSim

from .nets import ActorSpec
from .offpolicy import (DeterministicActorConfig, DeterministicActorTrainer, QCritic, clip_grad, export_actor,
                        frozen, make_actor, soft_update)


@dataclass(frozen=True)
class MATD3Config(DeterministicActorConfig):
    """The shared off-policy and deterministic-actor settings (agents/offpolicy.py) plus TD3's own."""

    policy_delay: int = _f(2, 1, 1000, doc="critic updates per actor (and target) update")
    target_noise: float = _f(0.2, 0.0, 10.0, doc="std of the target policy smoothing noise, in units of the bound")
    noise_clip: float = _f(0.5, 0.0, 10.0, doc="the smoothing noise is clipped to +-noise_clip (units of the bound)")


class MATD3Trainer(DeterministicActorTrainer):
    """Multi-agent TD3: deterministic decentralised actors, twin centralised Q critics, replay."""

    name = "matd3"
    SECTION = "matd3"
    STATE = {**DeterministicActorTrainer.STATE, "actor": "actor_net", "actor_target": "actor_target",
             "critics": "critics", "critics_target": "critics_target", "actor_opt": "actor_opt",
             "critic_opt": "critic_opt", "actor_updates": "actor_updates"}

    def __init__(self, cfg: Config, sim: BatchCoSim):
        super().__init__(cfg, sim, MATD3Config.from_config(cfg, self.SECTION))
        c, I, D, S, A = self.c, self.I, self.D, self.S, self.A

        # Networks and their targets: one actor, two critics.
        self.actor_net = make_actor(I, D, A, c)
        self.critics = torch.nn.ModuleList([QCritic(I, S, A, c.hidden, c.orthogonal_init)
                                            for _ in range(2)])
        self.actor_target = copy.deepcopy(self.actor_net).requires_grad_(False)
        self.critics_target = copy.deepcopy(self.critics).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor_net.parameters(), lr=c.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critics.parameters(), lr=c.critic_lr)
        self.updates = 0        # critic updates made
        self.actor_updates = 0  # actor (and target) updates made: updates // policy_delay

    def _target_actions(self, obs: torch.Tensor) -> torch.Tensor:
        """Target policy smoothing: mu'(o') plus clipped Gaussian noise, clipped to [-1, 1]."""
        c = self.c
        _, a = self._mu(self.actor_target, obs)
        noise = (c.target_noise * torch.randn(a.shape)).clamp(-c.noise_clip, c.noise_clip)
        return (a + noise).clamp(-1.0, 1.0)

    def extra_losses(self) -> dict[str, float]:
        return {"actor_updates": float(self.actor_updates)}

    # -- one gradient update --------------------------------------------------------------------
    def _update(self) -> dict[str, float]:
        c = self.c
        o, s, a, r, o2, s2 = self._batch()

        # Twin critics: clipped double-Q target with smoothed target actions.
        with torch.no_grad():
            a2 = self._target_actions(o2)
            q2 = torch.min(self.critics_target[0](s2, a2), self.critics_target[1](s2, a2))
            y = r + c.gamma * q2
        qs = [critic(s, a) for critic in self.critics]
        critic_loss = sum(F.mse_loss(q, y) for q in qs)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        clip_grad(self.critics, c.max_grad_norm)
        self.critic_opt.step()
        self.updates += 1
        out = {"critic_loss": critic_loss.item(), "q": qs[0].mean().item()}

        # Delayed actor and target updates: ascend Q^1_i in agent i's own action.
        if self.updates % c.policy_delay == 0:
            head, mu = self._mu(self.actor_net, o)
            with frozen(self.critics):
                q_pi = self.critics[0](s, a, own=mu)
            bound = (head.abs() - 1.0).clamp(min=0.0).pow(2).mean()
            actor_loss = -q_pi.mean() + c.bound_coef * bound
            self.actor_opt.zero_grad()
            actor_loss.backward()
            clip_grad(self.actor_net, c.max_grad_norm)
            self.actor_opt.step()
            soft_update(self.actor_target, self.actor_net, c.tau)
            soft_update(self.critics_target, self.critics, c.tau)
            self.actor_updates += 1
            out.update(actor_loss=actor_loss.item(), bound_penalty=bound.item())
        return out

    # -- state ----------------------------------------------------------------------------------
    def actor(self, state: dict[str, Any]) -> tuple[ActorSpec, dict[str, torch.Tensor]]:
        spec = ActorSpec("deterministic", self.I, self.D, self.A, self.c.hidden, self.c.share_params, self.dt_slice)
        return export_actor(spec, state["actor"], state["obs_norm"] if self.c.obs_norm else None,
                            scale=self.c.action_scale)
