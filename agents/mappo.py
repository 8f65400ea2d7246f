"""Ly-DTMPPO and Ly-MAPPO: multi-agent PPO with a centralised critic (paper Sec. VI, eqs. 45-49).

CTDE: every CV (agent) acts with a decentralised Gaussian actor on its own
observation; one centralised critic values the global state. The two algorithms
are this file with ``cfg.twin.enabled`` true (Ly-DTMPPO: the actor sees the
digital twin's block) or false (Ly-MAPPO: that block is zeros); nothing else
differs. Read top to bottom: config, networks, rollout, GAE, update.

One iteration plays ``n_envs`` whole episodes in lockstep (storage preallocated
as (steps, envs, agents, ...)), computes GAE (46), then runs ``epochs`` passes
of minibatches of ``batch_size`` agent-samples with the clipped surrogate (47),
an entropy bonus and the critic's MSE (49).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from cosim.config import Config, ConfigError, _f, load_settings, settings_dict, with_extra
from cosim.env import BatchCoSim
from cosim.runner import EpisodeSums
from cosim.scenarios import ScenarioSampler
from cosim.trace_mobility import TraceMix

from .common import FlatAdam, Iteration, Normalizer, Trainer, clip_actions
from .entity import PER_CV, PER_RSU, SetActor, SetCritic, expand_log_std, n_rsus_of
from .nets import ActorSpec, AgentMLP

EXTRA_SECTION = "mappo"  # training.extra key with the settings below the paper's


@dataclass(frozen=True)
class MAPPOConfig:
    """Everything the algorithm reads: ``cfg.training`` for the first block (defaults and ranges in
    cosim/config.py and configs/default.yaml), then ``training.extra["mappo"]`` (e.g.
    ``--set training.extra.mappo.obs_norm=true``) for the rest, typed and range-checked like the config."""

    lr: float                      # actor Adam step size (training.lr)
    critic_lr: float               # critic Adam step size (training.critic_lr)
    gamma: float                   # discount
    gae_lambda: float              # GAE trace decay
    clip: float                    # PPO ratio clip epsilon
    epochs: int                    # passes over each rollout
    batch_size: int                # agent-samples per minibatch (paper's "batch 512")
    hidden: int                    # width of both hidden layers, actor and critic
    entropy_coef: float            # entropy bonus weight
    value_coef: float              # critic loss weight
    max_grad_norm: float           # gradient-norm clip, per network
    log_std_init: float            # initial log std of the Gaussian (a learned state-independent vector)
    value_norm: bool               # critic learns normalised returns
    orthogonal_init: bool          # orthogonal weights, gain sqrt(2), policy_head_gain on the policy head
    adv_norm: bool                 # standardise advantages per rollout
    share_params: bool             # one actor for all agents (with agent one-hot) or one per agent
    team_reward: bool              # learn from R(t) (shared) or from each agent's r_i (paper's Algorithm 1)
    arch: str                      # "mlp": the paper's networks; "set": RSU tokens, any CVs and RSUs (training.arch)
    # training.extra["mappo"]:
    mask_actions: bool = _f(True, doc="leave action entries the projection ignored out of the likelihood")
    obs_norm: bool = _f(False, doc="running mean/std normalisation of observations and state")
    policy_head_gain: float = _f(0.01, 0.0, 10.0, doc="orthogonal gain of the policy head: initial actions near 0")
    value_norm_beta: float = _f(0.99, 0.0, 0.9999,
                                doc="per-iteration decay of the return statistics (debiased EMA)")

    @classmethod
    def inherited(cls, cfg: Config) -> dict[str, Any]:
        """The first block's values, from cfg.training."""
        return {f.name: getattr(cfg.training, f.name) for f in fields(cls) if hasattr(cfg.training, f.name)}

    @classmethod
    def from_config(cls, cfg: Config) -> MAPPOConfig:
        return load_settings(cls, cfg.training.extra.get(EXTRA_SECTION), f"training.extra.{EXTRA_SECTION}",
                             inherited=cls.inherited(cfg))

    def resolved(self, cfg: Config) -> Config:
        """``cfg`` with every training.extra.mappo value written out (saved in the run's config.yaml)."""
        return with_extra(cfg, {EXTRA_SECTION: settings_dict(self, self.inherited(cfg))})


class ValueNorm:
    """Running mean/std of returns as a debiased EMA (MAPPO's ValueNorm), so the critic's
    targets stay near unit scale while the return scale moves by orders of magnitude."""

    def __init__(self, beta: float):
        self.beta = beta
        self.mean = self.mean_sq = self.debias = 0.0

    def update(self, x: np.ndarray) -> None:
        b = self.beta
        self.mean = b * self.mean + (1 - b) * float(x.mean())
        self.mean_sq = b * self.mean_sq + (1 - b) * float((x**2).mean())
        self.debias = b * self.debias + (1 - b)

    @property
    def stats(self) -> tuple[float, float]:
        if self.debias == 0.0:
            return 0.0, 1.0
        m = self.mean / self.debias
        var = max(self.mean_sq / self.debias - m * m, 1e-4)
        return m, math.sqrt(var)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        m, s = self.stats
        return (x - m) / s

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        m, s = self.stats
        return x * s + m

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "mean_sq": self.mean_sq, "debias": self.debias}

    def load_state_dict(self, d: dict[str, float]) -> None:
        self.mean, self.mean_sq, self.debias = d["mean"], d["mean_sq"], d["debias"]


class CentralCritic(nn.Module):
    """V_i(s, o_i): two hidden ReLU layers over [global state, agent i's observation, agent one-hot].

    The first layer is split by input block so the state's product is computed once per slot and
    shared by the I agents (the state is ~I times longer than an observation), the same function as
    one linear layer over the concatenation at a fraction of the cost.
    """

    def __init__(self, n_agents: int, d_state: int, d_obs: int, hidden: int, orthogonal: bool):
        super().__init__()
        self.state_in = nn.Linear(d_state, hidden)
        self.obs_in = nn.Linear(d_obs, hidden, bias=False)
        self.agent_in = nn.Parameter(torch.zeros(n_agents, hidden))  # one-hot @ W: a per-agent bias
        self.hidden = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)
        if orthogonal:
            w = torch.empty(hidden, d_state + d_obs + n_agents)
            nn.init.orthogonal_(w, math.sqrt(2))
            with torch.no_grad():
                self.state_in.weight.copy_(w[:, :d_state])
                self.obs_in.weight.copy_(w[:, d_state:d_state + d_obs])
                self.agent_in.copy_(w[:, d_state + d_obs:].T)
                self.state_in.bias.zero_()
            for layer in (self.hidden, self.out):
                nn.init.orthogonal_(layer.weight, math.sqrt(2) if layer is self.hidden else 1.0)
                nn.init.zeros_(layer.bias)

    def forward(self, state: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """(..., S), (..., I, D) -> (..., I)."""
        h = torch.relu(self.state_in(state).unsqueeze(-2) + self.obs_in(obs) + self.agent_in)
        return self.out(torch.relu(self.hidden(h))).squeeze(-1)


def gaussian_logprob(a: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """log N(a; mean, exp(log_std)^2), summed over the (unmasked) action entries."""
    lp = -0.5 * ((a - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    return (lp * mask if mask is not None else lp).sum(-1)


class MAPPOTrainer(Trainer):
    """Multi-agent PPO with decentralised Gaussian actors and a centralised critic."""

    name = "mappo"
    STATE = {"actor": "actor_net", "log_std": "log_std", "critic": "critic", "actor_opt": "actor_opt",
             "critic_opt": "critic_opt", "obs_rms": "obs_rms", "state_rms": "state_rms", "value_norm": "value_norm",
             "iterations": "iterations", "sampler": "sampler"}  # None unless training.scenarios or a trace mix

    def __init__(self, cfg: Config, sim: BatchCoSim):
        super().__init__(cfg, sim)
        self.c = c = MAPPOConfig.from_config(cfg)
        I, D, S, A = sim.n_cvs, sim.obs_dim, sim.state_dim, sim.action_dim
        T, E = sim.episode_slots, sim.n_envs
        self.I, self.D, self.S, self.A, self.T, self.E = I, D, S, A, T, E

        # Networks: the actor (I agents, shared or not) and a critic giving each agent a value.
        if c.arch == "set":
            if c.obs_norm:
                raise ConfigError("training.extra.mappo.obs_norm: not available with training.arch=set "
                                  "(the input length changes with K)")
            # The view's per-RSU twin blocks are more features of every RSU token (agents/entity.py).
            blocks = sim.layout.blocks
            self.actor_net: nn.Module = SetActor(blocks, c.hidden, c.orthogonal_init, c.policy_head_gain)
            # One log std per output kind (PER_CV + PER_RSU), so it fits any K.
            self.log_std = nn.Parameter(torch.full((len(PER_CV) + len(PER_RSU),), c.log_std_init))
            self.critic: nn.Module = SetCritic(blocks, c.hidden, c.orthogonal_init)
        else:
            self.actor_net = AgentMLP(I, D, A, c.hidden, c.share_params, c.orthogonal_init, c.policy_head_gain)
            self.log_std = nn.Parameter(torch.full((1 if c.share_params else I, A), c.log_std_init))
            # The critic's input for agent i is the global state and agent i's own observation (MAPPO's
            # agent-specific global state): per-agent values need not find agent i's slice of s.
            self.critic = CentralCritic(I, S, D, c.hidden, c.orthogonal_init)
        # Training across scenarios: a fleet and RSU layout drawn per iteration (training.scenarios), or
        # one of several trace folders (maps) drawn per iteration (trace.dir a list, trace.mix).
        self.sampler = ScenarioSampler(cfg) if cfg.training.scenarios.enabled else TraceMix.of(cfg)
        self.base_sim = sim
        # Adam(foreach=True) on one flat buffer per network: bit-identical to it, ~10 ops a step in all
        # (fused=True is not identical: its results differ from the 2nd update on, ~1e-9 relative)
        self.actor_opt = FlatAdam([*self.actor_net.parameters(), self.log_std], lr=c.lr, eps=1e-5)
        self.critic_opt = FlatAdam(list(self.critic.parameters()), lr=c.critic_lr, eps=1e-5)
        self.obs_rms = Normalizer((D,), c.obs_norm)
        self.state_rms = Normalizer((S,), c.obs_norm)
        self.value_norm = ValueNorm(c.value_norm_beta)
        # Trained without the twin: remember which input block to zero at deployment.
        self.dt_slice = None if cfg.twin.enabled else (sim.layout.dt_slice.start, sim.layout.dt_slice.stop)

        self._allocate()
        self.iterations = 0

    def _allocate(self) -> None:
        """Rollout storage, (steps, envs, agents, ...), for the current simulator's sizes."""
        T, E, I, D, S, A = self.T, self.E, self.I, self.D, self.S, self.A
        self.obs = torch.zeros(T, E, I, D)
        self.state = torch.zeros(T, E, S)
        self.actions = torch.zeros(T, E, I, A)
        self.logprobs = torch.zeros(T, E, I)
        self.rewards = torch.zeros(T, E, I)
        self.values = torch.zeros(T, E, I)
        self.masks = torch.ones(T, E, I, A)

    def _next_scenario(self) -> None:
        """Play this iteration on a freshly drawn scenario (its own simulator, seeded by the draw)."""
        scn = self.sampler.draw()
        if self.sim is not self.base_sim:
            self.sim.close()
        self.sim = sim = BatchCoSim(scn.apply(self.cfg), n_envs=self.sampler.episodes_per_batch(scn), seed=scn.seed,
                                    initial_energy_queue=self.base_sim.initial_energy_queue)
        self.I, self.D, self.S, self.A, self.E = sim.n_cvs, sim.obs_dim, sim.state_dim, sim.action_dim, sim.n_envs
        self._allocate()

    # -- helpers --------------------------------------------------------------------------------
    def _value(self, state: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Normalised per-agent values (..., I) of global states (..., S) and observations (..., I, D)."""
        return self.critic(state, obs)

    def _action_mask(self, covered: np.ndarray, used: np.ndarray) -> torch.Tensor:
        """1 where an action entry influenced the slot, 0 where the projection ignored it.

        Split logits count where an RSU covers the CV (the local one if any does); bandwidth and
        CPU entries only for RSUs that got a part (the 'unused' bandwidth logit if any did). The
        reward does not depend on the others, so leaving them out of the likelihood removes pure
        noise from the policy gradient without biasing it.
        """
        if not self.c.mask_actions:
            return torch.ones(self.E, self.I, self.A)
        any_cov, any_used = covered.any(-1, keepdims=True), used.any(-1, keepdims=True)
        p, lay = self.sim.params, self.sim.actions
        m = lay.assemble(np.concatenate([any_cov, covered], axis=-1),
                         np.concatenate([used, any_used & (p.bandwidth_mode == "paper")], axis=-1),
                         used & (p.cpu_mode == "paper"))  # actions.bandwidth=full / cpu=proportional ignore these
        return torch.from_numpy(m.astype(np.float32))

    def _policy(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian mean and log std for observations (..., I, D)."""
        mean = self.actor_net(obs)
        if self.c.arch == "set":
            return mean, expand_log_std(self.log_std, n_rsus_of(obs.shape[-1], self.actor_net.blocks)).expand_as(mean)
        return mean, self.log_std.expand(self.I, self.A).expand_as(mean)

    # -- one iteration: rollout, GAE, update ----------------------------------------------------
    def iterate(self, first_episode: int) -> Iteration:
        if self.sampler is not None:
            self._next_scenario()
        c, sim, T = self.c, self.sim, self.T
        tracker = EpisodeSums(sim)
        raw_obs, raw_state = [], []
        obs, state = sim.reset()
        with torch.no_grad():
            for t in range(T):
                raw_obs.append(obs)
                raw_state.append(state)
                o, s = self.obs_rms(obs), self.state_rms(state)
                mean, log_std = self._policy(o)
                action = mean + log_std.exp() * torch.randn(mean.shape)
                self.obs[t], self.state[t], self.actions[t] = o, s, action
                self.values[t] = self._denorm(self._value(s, o))
                covered = obs[..., sim.layout["covered"]] > 0.5
                out = sim.step(clip_actions(action.numpy()))
                self.masks[t] = self._action_mask(covered, out.decision.split[..., 1:] > 0)
                self.logprobs[t] = gaussian_logprob(action, mean, log_std, self.masks[t])
                tracker.add(out)
                r = np.broadcast_to(out.reward[:, None], (self.E, self.I)) if c.team_reward else out.agent_reward
                self.rewards[t] = torch.from_numpy(np.ascontiguousarray(r, dtype=np.float32))
                obs, state = out.obs, out.state
            # Episodes end by the time limit, not by a terminal state: bootstrap from the next slot's value.
            next_value = self._denorm(self._value(self.state_rms(state), self.obs_rms(obs)))

            # GAE (46), a short reversed loop.
            advantages = torch.zeros_like(self.rewards)
            last = torch.zeros(self.E, self.I)
            for t in reversed(range(T)):
                nv = next_value if t == T - 1 else self.values[t + 1]
                delta = self.rewards[t] + c.gamma * nv - self.values[t]
                last = delta + c.gamma * c.gae_lambda * last
                advantages[t] = last
            returns = advantages + self.values

        if c.obs_norm:  # statistics move between rollouts only, so old and new log-probs see the same inputs
            self.obs_rms.update(np.stack(raw_obs).reshape(-1, self.D))
            self.state_rms.update(np.stack(raw_state).reshape(-1, self.S))
        if c.value_norm:
            self.value_norm.update(returns.numpy())
        losses = self._update(advantages, returns)
        self.iterations += 1
        return Iteration(tracker.finish(first_episode), losses)

    def _denorm(self, v: torch.Tensor) -> torch.Tensor:
        return self.value_norm.denormalize(v) if self.c.value_norm else v

    def _update(self, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
        c, I = self.c, self.I
        n = self.T * self.E
        b_obs, b_state = self.obs.reshape(n, I, self.D), self.state.reshape(n, self.S)
        b_act, b_logp = self.actions.reshape(n, I, self.A), self.logprobs.reshape(n, I)
        b_adv, b_ret = advantages.reshape(n, I), returns.reshape(n, I)
        b_mask = self.masks.reshape(n, I, self.A)
        if c.adv_norm:
            b_adv = (b_adv - b_adv.mean()) / (b_adv.std() + 1e-8)
        b_target = self.value_norm.normalize(b_ret) if c.value_norm else b_ret
        # A minibatch row is one (slot, env) with all I agents; equal-sized minibatches of about
        # batch_size agent-samples (no ragged last one).
        n_mb = max(1, round(n * I / c.batch_size))
        keys = ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac")
        stats: list[torch.Tensor] = []  # one row of the five per minibatch, read once at the end
        data = (b_obs, b_state, b_act, b_logp, b_adv, b_target, b_mask)
        for _ in range(c.epochs):
            # One gather per epoch, then contiguous slices: the minibatches of tensor_split(randperm(n), n_mb),
            # the same samples in the same order.
            perm = torch.randperm(n)
            shuffled = [x[perm] for x in data]
            for obs, state, act, old_logp, adv, target, mask in zip(*(torch.tensor_split(x, n_mb) for x in shuffled)):
                mean, log_std = self._policy(obs)
                logp = gaussian_logprob(act, mean, log_std, mask)
                log_ratio = logp - old_logp
                ratio = log_ratio.exp()
                # Clipped surrogate (47).
                policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - c.clip, 1 + c.clip)).mean()
                entropy = (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1).mean()
                # Critic MSE (49) on (normalised) returns.
                value_loss = ((self._value(state, obs) - target) ** 2).mean()
                loss = policy_loss - c.entropy_coef * entropy + c.value_coef * value_loss
                self.actor_opt.zero_grad()
                self.critic_opt.zero_grad()
                loss.backward()
                self.actor_opt.clip_and_step(c.max_grad_norm)
                self.critic_opt.clip_and_step(c.max_grad_norm)
                with torch.no_grad():
                    stats.append(torch.stack([policy_loss, value_loss, entropy, ((ratio - 1) - log_ratio).mean(),
                                              ((ratio - 1).abs() > c.clip).float().mean()]))
        # The same float32 values .item() gave, averaged in float64 as before.
        out = {k: float(np.mean(v)) for k, v in zip(keys, torch.stack(stats).T.tolist())}
        with torch.no_grad():
            v = self._denorm(self._value(b_state, b_obs))
            out["explained_variance"] = float(1 - (b_ret - v).var() / (b_ret.var() + 1e-8))
            out["action_std"] = float(self.log_std.exp().mean())
        return out

    # -- state --------------------------------------------------------------------------------
    def resolved_config(self) -> Config:
        return self.c.resolved(self.cfg)

    def actor(self, state: dict[str, Any]) -> tuple[ActorSpec, dict[str, torch.Tensor]]:
        if self.c.arch == "set":
            return self._set_actor(state)
        spec = ActorSpec("gaussian", self.I, self.D, self.A, self.c.hidden, self.c.share_params, self.dt_slice)
        tensors = {f"net.{k}": v for k, v in state["actor"].items()}
        tensors.update(Normalizer.policy_tensors(state["obs_rms"] if self.c.obs_norm else None, self.D))
        tensors["log_std"] = state["log_std"].expand(self.I, self.A).clone()
        return spec, tensors

    def _set_actor(self, state: dict[str, Any]) -> tuple[ActorSpec, dict[str, torch.Tensor]]:
        """The set actor for any I and K: sizes of the base scenario, the entity layout in the spec."""
        lay, sim = self.base_sim.layout, self.base_sim
        spec = ActorSpec("gaussian", sim.n_cvs, sim.obs_dim, sim.action_dim, self.c.hidden, True, None, arch="set",
                         entity=lay.signature(), twin=self.cfg.twin.enabled)
        tensors = {f"net.{k}": v for k, v in state["actor"].items()}
        tensors["log_std"] = state["log_std"].clone()
        return spec, tensors
