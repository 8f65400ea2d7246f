"""Ly-MASAC: multi-agent soft actor-critic with centralised twin soft Q critics (paper Sec. VII-B, baseline 3).

SAC (Haarnoja et al., 2018, with automatic temperature) per agent, CTDE: every
CV acts with a stochastic squashed-Gaussian actor on its own observation
(two hidden ReLU layers output the mean and log-std of z; the normalised
action is a = tanh(z), times the bound 10 for the environment); every agent i
has two centralised soft Q critics Q^k_i(s, a_1..a_I) and their targets.
Parameters are shared across agents with an agent-id one-hot; one temperature
alpha for all agents is tuned so that each agent's policy entropy stays near
``target_entropy`` (default -action_dim). The Lyapunov part is the environment's:
the reward is the drift-plus-penalty R(t) (or each agent's r_i), with the
twin's block in the observations.

    critic:  a'_j ~ pi(.|o'_j)
             y_i = reward_scale * r + gamma * (min_k Q^k'_i(s', a') - alpha log pi(a'_i|o'_i))
             L = mean_i sum_k (Q^k_i(s, a) - y_i)^2
    actor:   a~_i ~ pi(.|o_i) (reparameterised)
             L = mean_i (alpha log pi(a~_i|o_i) - min_k Q^k_i(s, a_1, .., a~_i, .., a_I))
    alpha:   L = -mean_i log(alpha) (log pi(a~_i|o_i) + target_entropy)
    targets: theta' <- tau theta + (1 - tau) theta'

Warm-up, replay, reward scale, observation normalisation and the shared
settings are as in the other off-policy baselines (``agents/offpolicy.py``).

The deployed actor is deterministic: 10 tanh(mean(z)), a policy file of kind
"squashed" (``agents/checkpoint.py``), so deployment acts exactly as the trainer's
deterministic action.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cosim.config import Config, ConfigError, _f
from cosim.env import ACTION_BOUND, BatchCoSim

from .nets import ActorSpec
from .offpolicy import (OffPolicyConfig, OffPolicyTrainer, QCritic, clip_grad, export_actor,
                        frozen, make_actor, soft_update)


@dataclass(frozen=True)
class MASACConfig(OffPolicyConfig):
    """OffPolicyConfig (shared settings, see agents/offpolicy.py) plus MASAC's own."""

    alpha_init: float = _f(1e-3, 1e-12, 1e6,
                           doc="initial temperature (rewards are scaled by reward_scale: small)")
    alpha_lr: float = _f(3e-3, 0.0, 1.0, doc="Adam step size of log(alpha)")
    autotune: bool = _f(True, doc="tune alpha (false: keep alpha_init)")
    target_entropy: float | None = _f(None, -1e4, 1e4,
                                      doc="per agent, nats of the normalised action; null: -action_dim")
    log_std_min: float = _f(-5.0, -20.0, 10.0, doc="lower bound of log std(z), z the pre-tanh action")
    log_std_max: float = _f(2.0, -20.0, 10.0, doc="upper bound of log std(z)")

    def check(self) -> None:
        if self.log_std_min >= self.log_std_max:
            raise ConfigError(f"training.extra.masac.log_std_min: {self.log_std_min:g} must be below "
                              f"log_std_max = {self.log_std_max:g}")


class MASACTrainer(OffPolicyTrainer):
    """Multi-agent SAC: squashed-Gaussian decentralised actors, twin centralised soft Q critics, replay."""

    name = "masac"
    SECTION = "masac"
    STATE = {**OffPolicyTrainer.STATE, "actor": "actor_net", "critics": "critics",
             "critics_target": "critics_target", "log_alpha": "log_alpha", "actor_opt": "actor_opt",
             "critic_opt": "critic_opt", "alpha_opt": "alpha_opt"}

    def __init__(self, cfg: Config, sim: BatchCoSim):
        super().__init__(cfg, sim, MASACConfig.from_config(cfg, self.SECTION))
        c, I, D, S, A = self.c, self.I, self.D, self.S, self.A

        # Networks: one actor (mean and log-std of z), two critics and their targets, the temperature.
        self.actor_net = make_actor(I, D, 2 * A, c)
        self.critics = torch.nn.ModuleList([QCritic(I, S, A, c.hidden, c.orthogonal_init)
                                            for _ in range(2)])
        self.critics_target = copy.deepcopy(self.critics).requires_grad_(False)
        self.log_alpha = torch.nn.Parameter(torch.tensor(math.log(c.alpha_init)))
        self.target_entropy = float(-A if c.target_entropy is None else c.target_entropy)
        self.actor_opt = torch.optim.Adam(self.actor_net.parameters(), lr=c.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critics.parameters(), lr=c.critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=c.alpha_lr)

    # -- the squashed Gaussian ------------------------------------------------------------------
    def _dist(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log std of z (..., I, A) for normalised observations; the mean's unit is
        action_scale raw units, as the deterministic actors' head."""
        c = self.c
        out = self.actor_net(obs)
        mean = out[..., : self.A] * (c.action_scale / ACTION_BOUND)
        log_std = c.log_std_min + 0.5 * (c.log_std_max - c.log_std_min) * (torch.tanh(out[..., self.A:]) + 1)
        return mean, log_std

    def _sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised a = tanh(mean + std eps) and log pi(a|o) summed over the action (..., I)."""
        mean, log_std = self._dist(obs)
        z = mean + log_std.exp() * torch.randn(mean.shape)
        a = torch.tanh(z)
        logp = (-0.5 * ((z - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log |da/dz| = log(1 - tanh(z)^2), in a form that stays finite in saturation.
        logp = logp - (2 * (math.log(2) - z - F.softplus(-2 * z))).sum(-1)
        return a, logp

    def _explore(self, obs: np.ndarray) -> torch.Tensor:
        """Normalised actions (E, I, A) to play: uniform during the warm-up, then samples of pi."""
        c = self.c
        if self.slots < c.warmup_slots:
            return c.warmup_range * (2 * torch.rand(self.E, self.I, self.A) - 1)
        with torch.no_grad():
            a, _ = self._sample(self.obs_norm(obs))
        return a

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    def extra_losses(self) -> dict[str, float]:
        return {"alpha": float(self.alpha)}

    # -- one gradient update --------------------------------------------------------------------
    def _update(self) -> dict[str, float]:
        c = self.c
        o, s, a, r, o2, s2 = self._batch()
        alpha = self.log_alpha.exp().detach()

        # Twin soft critics: clipped double-Q target with the entropy bonus of the next action.
        with torch.no_grad():
            a2, logp2 = self._sample(o2)
            q2 = torch.min(self.critics_target[0](s2, a2), self.critics_target[1](s2, a2))
            y = r + c.gamma * (q2 - alpha * logp2)
        qs = [critic(s, a) for critic in self.critics]
        critic_loss = sum(F.mse_loss(q, y) for q in qs)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        clip_grad(self.critics, c.max_grad_norm)
        self.critic_opt.step()

        # Actor: agent i's reparameterised action into its critics, the others' from the buffer.
        a_pi, logp = self._sample(o)
        with frozen(self.critics):
            q_pi = torch.min(self.critics[0](s, a, own=a_pi), self.critics[1](s, a, own=a_pi))
        actor_loss = (alpha * logp - q_pi).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        clip_grad(self.actor_net, c.max_grad_norm)
        self.actor_opt.step()

        # Temperature: raise alpha when the entropy -log pi falls below the target, lower it above.
        if c.autotune:
            alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
            self.alpha_opt.zero_grad()
            alpha_loss.backward()
            self.alpha_opt.step()

        soft_update(self.critics_target, self.critics, c.tau)
        self.updates += 1
        return {"critic_loss": critic_loss.item(), "actor_loss": actor_loss.item(), "q": qs[0].mean().item(),
                "entropy": -logp.mean().item()}

    # -- state ----------------------------------------------------------------------------------
    def actor(self, state: dict[str, Any]) -> tuple[ActorSpec, dict[str, torch.Tensor]]:
        """The deterministic actor 10 tanh(mean(z)), from the mean's half of the head."""
        spec = ActorSpec("squashed", self.I, self.D, self.A, self.c.hidden, self.c.share_params, self.dt_slice)
        return export_actor(spec, state["actor"], state["obs_norm"] if self.c.obs_norm else None,
                            scale=self.c.action_scale, head_rows=self.A)
