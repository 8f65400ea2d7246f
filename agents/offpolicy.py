"""What the off-policy baselines (Ly-MADDPG, Ly-MATD3, Ly-MASAC) share.

Each algorithm reads top to bottom in its own module (config, networks,
rollout, update, state); this module holds only the parts that are identical
in all three:

* :class:`OffPolicyConfig`, the settings they all read: ``cfg.training`` (lr,
  critic_lr, gamma, batch_size, hidden, max_grad_norm, orthogonal_init,
  share_params, team_reward), then ``training.extra.offpolicy`` and
  ``training.extra.<algo>`` (``maddpg``, ``matd3``, ``masac``) for the rest; a key
  the algorithm does not know fails, so algorithm-specific keys (policy_delay,
  alpha_init, ...) go in the algorithm's own section;
* :class:`ReplayBuffer`, joint transitions of all agents in preallocated
  tensors, saved whole in the checkpoint so that a resumed run is exact;
* :class:`QCritic`, the centralised Q_i(s, a_1..a_I) of every agent i;
* :class:`Normalizer` (running mean/std of observations, as MAPPO's),
  :func:`soft_update`, :func:`frozen`, :func:`export_actor`.

Actions. Actors act in normalised units a in [-1, 1]^A and the environment
gets ``raw = 10 a`` ([-10, 10], the PettingZoo action space). The actor's head
is in raw units (``action_scale`` = 1 raw unit per unit of output, as MAPPO's
Gaussian mean): with its head in units of the bound instead, the same Adam
steps move raw actions ten times faster and the deterministic actors outran
their critics into exploding queues. The replay buffer holds normalised
actions, raw observations (normalised when sampled, with the current
statistics) and rewards.

Rewards. R(t) is about -5 per slot for a good policy, -20 to -50 for a poor
one and down to -10^4 when queues explode; Q-values sum about 1/(1 - gamma)
= 100 slots of it. Critics learn ``reward_scale * R`` with a fixed
``reward_scale = 0.002 = (1 - gamma) / 5``, so a good policy's Q is about -1 and
a poor one's -5: a scale the critic's output reaches in a few hundred Adam
steps, where raw returns (-500 and below) would take tens of thousands. A
fixed scale (rather than running statistics) keeps the targets of old and new
transitions comparable and leaves the objective unchanged. With per-agent
rewards (``team_reward: false``) the critics learn I r_i, which has R(t)'s
scale (the r_i add up to R(t)).

Warm-up. The first ``warmup_slots`` env-slots take actions uniform in
``warmup_range`` times the bound (default +-3 raw): the full box is the random
reference policy, whose queues explode (cost ~250), and its data says little
about the policies worth learning.

Measured at the default config (analytic road, 5 CVs, seed 0, 1800 episodes,
batch 512 joint transitions, 2 updates per vector step, one torch thread, a
shared 2-core machine): Ly-MADDPG 174 s, Ly-MATD3 183 s, Ly-MASAC 255 s
(Ly-DTMPPO: about 50 s). Deterministic evaluation on 20 unseen episodes, mean
system cost: MASAC 1.43, MATD3 1.43, MADDPG 1.62 (equal 1.13, nearest 1.37,
local 11.8, random ~300). All three dip right after the warm-up (episodes
150-500) before they settle; identical settings with other random draws moved
MATD3's result between 1.43 and 1.55.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from dataclasses import dataclass, fields, replace
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from cosim.config import Config, ConfigError, _f, load_settings, settings_dict, with_extra
from cosim.env import ACTION_BOUND
from cosim.runner import EpisodeSums

from .common import Iteration, Normalizer, Trainer
from .nets import ActorSpec, AgentMLP

EXTRA_SECTION = "offpolicy"  # training.extra key shared by the three off-policy baselines


@dataclass(frozen=True)
class OffPolicyConfig:
    """Settings every off-policy baseline reads. First block: ``cfg.training`` (defaults and ranges in
    cosim/config.py and configs/default.yaml); the rest: ``training.extra``, typed and range-checked."""

    lr: float                      # Adam step size (training.lr); the actors' unless actor_lr is set
    critic_lr: float               # critic Adam step size (training.critic_lr)
    gamma: float                   # discount
    batch_size: int                # joint transitions (each with all I agents) per gradient update
    hidden: int                    # width of both hidden layers, actors and critics
    max_grad_norm: float           # global gradient-norm clip, per network (0: off)
    orthogonal_init: bool          # orthogonal weights, gain sqrt(2); policy_head_gain on the actor head
    share_params: bool             # one actor for all agents (with agent one-hot) or one per agent
    team_reward: bool              # learn from R(t) (shared) or from each agent's r_i
    # training.extra["offpolicy"] (or extra["<algo>"]):
    actor_lr: float | None = _f(None, 1e-7, 1.0, doc="the actors' Adam step size; null: lr")
    buffer_size: int = _f(100_000, 1, 100_000_000,
                          doc="joint transitions kept (1800 episodes x 30 slots = 54,000 in all)")
    tau: float = _f(0.005, 1e-6, 1.0, doc="target networks: theta' <- tau theta + (1 - tau) theta'")
    warmup_slots: int = _f(4_800, 0, 1_000_000_000,
                           doc="env-slots (all envs) of uniform random actions first (default: <= 10% of training)")
    warmup_range: float = _f(0.3, 1e-6, 1.0,
                             doc="warm-up actions are uniform in [-warmup_range, warmup_range] x bound")
    updates_per_step: int = _f(2, 1, 1000,
                               doc="gradient updates per vector step (n_envs env-slots), once warm-up is over")
    reward_scale: float = _f(0.002, 1e-9, 1e6, doc="critics learn reward_scale * reward (see the module docstring)")
    action_scale: float = _f(1.0, 1e-6, 1e3,
                             doc="raw action = clip(action_scale * actor head, -10, 10): the head acts in raw units")
    obs_norm: bool = _f(True, doc="running mean/std normalisation of observations and state")
    policy_head_gain: float = _f(0.01, 0.0, 10.0, doc="orthogonal gain of the actor's head: initial actions near 0")

    @classmethod
    def inherited(cls, cfg: Config) -> dict[str, Any]:
        """The first block's values, from cfg.training."""
        return {f.name: getattr(cfg.training, f.name) for f in fields(cls) if hasattr(cfg.training, f.name)}

    @classmethod
    def from_config(cls, cfg: Config, section: str) -> OffPolicyConfig:
        """``cfg.training`` fields, then ``training.extra["offpolicy"]``, then ``training.extra[section]``
        (those two hold only the keys below the first block; an unknown key fails)."""
        t = cfg.training
        inherited = cls.inherited(cfg)
        given: dict[str, Any] = {}
        for key in (EXTRA_SECTION, section):  # each section checked on its own, so errors name it
            load_settings(cls, t.extra.get(key), f"training.extra.{key}", inherited)
            given.update(t.extra.get(key) or {})
        c = load_settings(cls, given, f"training.extra.{section}", inherited)
        if c.actor_lr is None:
            c = replace(c, actor_lr=c.lr)
        if "warmup_slots" not in given:
            # Short budgets (quick reproductions) still learn: the default warm-up is at most a tenth of training.
            c = replace(c, warmup_slots=min(c.warmup_slots, t.episodes * cfg.scenario.episode_slots // 10))
        if c.buffer_size < c.batch_size:
            raise ConfigError(f"training.extra.{section}.buffer_size: {c.buffer_size} is below "
                              f"training.batch_size = {c.batch_size}")
        c.check()
        return c

    def check(self) -> None:
        """Constraints between fields of a subclass (one ConfigError naming the key)."""

    def resolved(self, cfg: Config, section: str) -> Config:
        """``cfg`` with every setting of ``section`` written out (saved in the run's config.yaml); the
        shared ``offpolicy`` section is folded into it."""
        return with_extra(cfg, {section: settings_dict(self, self.inherited(cfg))}, drop=(EXTRA_SECTION,))


# ---------------------------------------------------------------------------
# Replay buffer

class ReplayBuffer:
    """A ring of joint transitions in preallocated ``(capacity, ...)`` float32 tensors.

    ``add`` takes one vector step (the E environments' transitions at once);
    ``sample`` draws uniformly with torch's generator (saved by ``fit``).
    """

    def __init__(self, capacity: int, shapes: dict[str, tuple[int, ...]]):
        self.capacity = capacity
        self.data = {k: torch.zeros(capacity, *shape) for k, shape in shapes.items()}
        self.ptr = 0     # next slot to write
        self.size = 0    # filled slots

    def add(self, **batch: np.ndarray | torch.Tensor) -> None:
        n = len(next(iter(batch.values())))
        idx = (self.ptr + torch.arange(n)) % self.capacity
        for k, v in batch.items():
            self.data[k][idx] = torch.as_tensor(np.asarray(v), dtype=torch.float32)
        self.ptr = (self.ptr + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, self.size, (n,))
        return {k: v[idx] for k, v in self.data.items()}

    def state_dict(self) -> dict[str, Any]:
        """Copies of the filled part (it is all of the checkpoint's size, so nothing else)."""
        return {"ptr": self.ptr, "size": self.size, "data": {k: v[: self.size].clone() for k, v in self.data.items()}}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        size = int(d["size"])
        if size > self.capacity:
            raise ConfigError(f"checkpoint's replay buffer holds {size} transitions, more than buffer_size "
                              f"{self.capacity}")
        for k, v in self.data.items():
            v.zero_()
            v[:size] = torch.as_tensor(d["data"][k])
        self.ptr, self.size = int(d["ptr"]), size


# ---------------------------------------------------------------------------
# Networks

class QCritic(nn.Module):
    """Centralised critics Q_i(s, a_1..a_I) of every agent i: one MLP (two hidden ReLU layers) on
    [s, a_1..a_I, one-hot(i)], shared by the agents.

    ``forward(state (B, S), actions (B, I, A), own=None)`` -> (B, I). With ``own`` (B, I, A), agent
    i's critic sees its own action from ``own`` and the other agents' from ``actions``: MADDPG's
    policy gradient of agent i holds the others' actions fixed.

    The first layer is linear, so it is computed once per transition, then completed per agent by
    the one-hot's column and (with ``own``) agent i's change of its own action: the same function
    as feeding I concatenated inputs, with I times fewer multiplications.
    """

    def __init__(self, n_agents: int, state_dim: int, action_dim: int, hidden: int, orthogonal: bool,
                 head_gain: float = 1.0):
        super().__init__()
        self.I, self.S, self.A = n_agents, state_dim, action_dim
        d_in = state_dim + n_agents * action_dim
        self.inp = nn.Linear(d_in, hidden)
        self.agent = nn.Parameter(torch.empty(n_agents, hidden))  # the first layer's one-hot columns
        self.hid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)
        with torch.no_grad():
            w = torch.empty(hidden, d_in + n_agents)
            if orthogonal:
                nn.init.orthogonal_(w, math.sqrt(2))
                nn.init.orthogonal_(self.hid.weight, math.sqrt(2))
                nn.init.orthogonal_(self.out.weight, head_gain)
                for layer in (self.inp, self.hid, self.out):
                    layer.bias.zero_()
            else:
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # nn.Linear's default over the whole input
            self.inp.weight.copy_(w[:, :d_in])
            self.agent.copy_(w[:, d_in:].T)

    def forward(self, state: torch.Tensor, actions: torch.Tensor, own: torch.Tensor | None = None) -> torch.Tensor:
        B, I, A = actions.shape
        z = self.inp(torch.cat([state, actions.reshape(B, I * A)], dim=-1)).unsqueeze(1) + self.agent  # (B, I, H)
        if own is not None:
            w_own = self.inp.weight[:, self.S:].T.reshape(I, A, -1)  # agent j's block of the joint action
            z = z + torch.einsum("bia,iah->bih", own - actions, w_own)
        h = torch.relu(self.hid(torch.relu(z)))
        return self.out(h).squeeze(-1)


def make_actor(n_agents: int, obs_dim: int, out_dim: int, c: OffPolicyConfig) -> AgentMLP:
    """Two hidden ReLU layers, shared across agents (agent one-hot) or one per agent."""
    return AgentMLP(n_agents, obs_dim, out_dim, c.hidden, c.share_params, c.orthogonal_init, c.policy_head_gain)


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging of the target network's parameters."""
    with torch.no_grad():
        for tp, p in zip(target.parameters(), source.parameters()):
            tp.lerp_(p, tau)


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """No parameter gradients for ``modules`` inside (the actor's loss goes through the critics)."""
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def clip_grad(module_or_params: Any, max_norm: float) -> None:
    if max_norm > 0:
        params = module_or_params.parameters() if isinstance(module_or_params, nn.Module) else module_or_params
        nn.utils.clip_grad_norm_(params, max_norm)


def export_actor(spec: ActorSpec, actor_state: dict[str, torch.Tensor], obs_norm: dict[str, Any] | None,
                 scale: float, head_rows: int | None = None) -> tuple[ActorSpec, dict[str, torch.Tensor]]:
    """The deployable tensors of a deterministic actor whose raw action is clip(scale * head, -10, 10).

    The head is multiplied by ``scale`` (the trainer's action_scale), so the deployed net outputs raw
    actions and the loader's clip to the bound is the actor's own clip. ``head_rows`` keeps only the
    first outputs of the head (MASAC's actor also outputs log-stds). ``obs_norm`` is a Normalizer's
    state (None: normalisation disabled, the loader then only clips).
    """
    tensors = {f"net.{k}": v.clone() for k, v in actor_state.items()}
    for k in ("net.layers.2.weight", "net.layers.2.bias"):
        if head_rows is not None:
            tensors[k] = tensors[k][..., :head_rows].contiguous()
        tensors[k] = tensors[k] * scale
    tensors.update(Normalizer.policy_tensors(obs_norm, spec.obs_dim))
    return spec, tensors


def team_or_agent_reward(out: Any, team: bool) -> np.ndarray:
    """(E, I) rewards of a StepOutput: R(t) for every agent, or each agent's r_i times I (the r_i
    add up to R(t), so I r_i has R(t)'s scale and one reward_scale suits both)."""
    if team:
        r = np.broadcast_to(out.reward[:, None], out.agent_reward.shape)
    else:
        r = out.agent_reward * out.agent_reward.shape[-1]
    return np.ascontiguousarray(r, dtype=np.float32)


class OffPolicyTrainer(Trainer):
    """What the three off-policy trainers share: sizes, normalisers, the replay buffer and the
    play-and-learn loop. Each subclass builds its networks and writes ``_explore`` (actions to
    play, in units of the bound) and ``_update`` (one gradient step of its algorithm), and adds its
    networks and optimisers to ``STATE``."""

    SECTION = EXTRA_SECTION  # the subclass's own training.extra section ("maddpg", "matd3", "masac")
    STATE = {"obs_norm": "obs_norm", "state_norm": "state_norm", "buffer": "buffer", "slots": "slots",
             "updates": "updates"}

    def __init__(self, cfg: Config, sim: Any, c: OffPolicyConfig):
        super().__init__(cfg, sim)
        self.c = c
        I, D, S, A = sim.n_cvs, sim.obs_dim, sim.state_dim, sim.action_dim
        self.I, self.D, self.S, self.A, self.T, self.E = I, D, S, A, sim.episode_slots, sim.n_envs
        self.obs_norm = Normalizer((D,), c.obs_norm)
        self.state_norm = Normalizer((S,), c.obs_norm)
        self.buffer = ReplayBuffer(c.buffer_size, {"obs": (I, D), "state": (S,), "action": (I, A), "reward": (I,),
                                                   "next_obs": (I, D), "next_state": (S,)})
        # Trained without the twin: remember which input block to zero at deployment.
        self.dt_slice = None if cfg.twin.enabled else (sim.layout.dt_slice.start, sim.layout.dt_slice.stop)
        self.slots = 0    # env-slots collected (all envs)
        self.updates = 0  # gradient updates made

    def extra_losses(self) -> dict[str, float]:
        """Algorithm-specific statistics logged with the losses."""
        return {}

    def _batch(self) -> tuple[torch.Tensor, ...]:
        """A replay minibatch: normalised (obs, state), action, scaled reward, normalised next (obs, state)."""
        b = self.buffer.sample(self.c.batch_size)
        o, s, a = self.obs_norm(b["obs"]), self.state_norm(b["state"]), b["action"]
        o2, s2 = self.obs_norm(b["next_obs"]), self.state_norm(b["next_state"])
        return o, s, a, self.c.reward_scale * b["reward"], o2, s2

    def resolved_config(self) -> Config:
        return self.c.resolved(self.cfg, self.SECTION)

    def iterate(self, first_episode: int) -> Iteration:
        """``n_envs`` whole episodes of exploring actions, each vector step stored in the replay
        buffer and, once warm-up is over, followed by ``updates_per_step`` calls of ``_update``."""
        c, sim = self.c, self.sim
        tracker = EpisodeSums(sim)
        stats: dict[str, list[float]] = defaultdict(list)
        obs, state = sim.reset()
        for _ in range(self.T):
            self.obs_norm.update(obs.reshape(-1, self.D))
            self.state_norm.update(state)
            action = self._explore(obs)
            out = sim.step(ACTION_BOUND * action.numpy())
            tracker.add(out)
            self.buffer.add(obs=obs, state=state, action=action, reward=team_or_agent_reward(out, c.team_reward),
                            next_obs=out.obs, next_state=out.state)
            self.slots += self.E
            obs, state = out.obs, out.state
            if self.slots >= c.warmup_slots and self.buffer.size >= c.batch_size:
                for _ in range(c.updates_per_step):
                    for k, v in self._update().items():
                        stats[k].append(v)
        losses = {k: float(np.mean(v)) for k, v in stats.items()}
        losses["updates"] = float(self.updates)
        losses.update(self.extra_losses())
        return Iteration(tracker.finish(first_episode), losses)


@dataclass(frozen=True)
class DeterministicActorConfig(OffPolicyConfig):
    """OffPolicyConfig plus the settings of Ly-MADDPG's and Ly-MATD3's deterministic actors."""

    exploration_noise: float = _f(0.1, 0.0, 10.0, doc="std of the Gaussian added to actions, in units of the bound")
    bound_coef: float = _f(1.0, 0.0, 1e6, doc="weight of the penalty on the actor's head beyond [-1, 1]")


class DeterministicActorTrainer(OffPolicyTrainer):
    """Ly-MADDPG's and Ly-MATD3's actors: a deterministic head, clipped, plus Gaussian exploration."""

    def _mu(self, net: torch.nn.Module, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(head / bound, normalised action = that clipped to [-1, 1]) for normalised observations."""
        head = net(obs) * (self.c.action_scale / ACTION_BOUND)
        return head, head.clamp(-1.0, 1.0)

    def _explore(self, obs: np.ndarray) -> torch.Tensor:
        """Normalised actions (E, I, A) to play: uniform during the warm-up, then mu(o) + noise."""
        c = self.c
        if self.slots < c.warmup_slots:
            return c.warmup_range * (2 * torch.rand(self.E, self.I, self.A) - 1)
        with torch.no_grad():
            _, a = self._mu(self.actor_net, self.obs_norm(obs))
        return (a + c.exploration_noise * torch.randn(a.shape)).clamp(-1.0, 1.0)
