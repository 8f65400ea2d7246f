"""Learning from the per-slot optimiser: DAgger into a set-structured actor (``ly-dagger``).

The per-slot optimiser (``dpp-opt``, :class:`cosim.optimizer.DppOptimizer`) knows everything
about a slot and maximises its drift-plus-penalty reward R(t); it is far better than any learned
policy where CVs contend for RSUs, but costs 5-70 ms a slot and needs the whole slot. This trainer
distils it into the set-structured actor of ``agents/entity.py`` (any number of CVs and RSUs, the
twin's global view), which decides in about a millisecond from the observations alone.

Each iteration (Ross et al.'s DAgger):

1. Draw the iteration's scenario (``training.scenarios``: fleet, RSU layout, RSU CPU) and play
   its episodes. In every slot the optimiser labels the state with its raw action; the optimiser's
   action is played with probability beta = ``beta0 * beta_decay^iteration`` per episode and slot,
   the actor's mean otherwise, so that the data covers the states the actor itself reaches.
2. Keep the slots in a buffer (the latest ``buffer_slots`` env-slots, all agents of each).
3. Fit the actor's means to the labels for ``epochs`` passes of minibatch regression: squared
   error over the entries that influence the slot (the split logits of local and every covered
   RSU, the bandwidth and CPU entries of the RSUs the optimiser used), labels clipped to
   ``+-clip`` (the projection drops parts below ``model.min_split_share`` long before that).

The policy file is a set-architecture actor like MAPPO's (``load_policy`` runs it); its log std
is ``log_std`` (deployment takes the mean). The optimiser optimises the paper's action
parameterisation, so the actor is trained and deployed with the paper's ``actions.*``. Every
decision the deployed actor takes is its own: no optimiser runs at deployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cosim import model as M
from cosim.config import Config, ConfigError, _f, load_settings, settings_dict, with_extra
from cosim.env import BatchCoSim
from cosim.optimizer import DppOptimizer
from cosim.runner import EpisodeSums
from cosim.scenarios import ScenarioSampler

from .common import Iteration, Trainer, clip_actions
from .entity import PER_CV, PER_RSU, SetActor
from .nets import ActorSpec

EXTRA_SECTION = "dagger"


@dataclass(frozen=True)
class DaggerConfig:
    """``training.extra.dagger`` (hidden width and learning rate come from ``training.hidden`` / ``training.lr``)."""

    epochs: int = _f(4, 1, 1000, doc="passes over the buffer after each iteration's episodes")
    minibatch_slots: int = _f(32, 1, 100_000, doc="env-slots (all their agents) per regression step")
    buffer_slots: int = _f(12_000, 1, 10_000_000, doc="the latest env-slots kept for regression")
    beta0: float = _f(1.0, 0.0, 1.0, doc="probability that the optimiser's action is played, first iteration")
    beta_decay: float = _f(0.93, 0.0, 1.0, doc="beta shrinks by this factor per iteration (DAgger's schedule)")
    clip: float = _f(10.0, 0.1, 50.0, doc="labels (raw logits) are clipped to +-clip")
    log_std: float = _f(-2.0, -20.0, 2.0, doc="the policy file's log std (deployment takes the mean)")
    expert_iterations: int = _f(40, 1, 100_000, doc="dpp-opt's BFGS iterations per label (its default is 80)")

    @classmethod
    def from_config(cls, cfg: Config) -> DaggerConfig:
        return load_settings(cls, cfg.training.extra.get(EXTRA_SECTION), f"training.extra.{EXTRA_SECTION}")

    def resolved(self, cfg: Config) -> Config:
        return with_extra(cfg, {EXTRA_SECTION: settings_dict(self)})


class SlotBuffer:
    """The latest env-slots, in chunks of one scenario each (their CV and RSU counts differ)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (obs, label, mask), (n, I, .)

    def add(self, obs: torch.Tensor, label: torch.Tensor, mask: torch.Tensor) -> None:
        self.chunks.append((obs, label, mask))
        while sum(len(c[0]) for c in self.chunks) > self.capacity and len(self.chunks) > 1:
            self.chunks.pop(0)

    def __len__(self) -> int:
        return sum(len(c[0]) for c in self.chunks)

    def state_dict(self) -> dict[str, Any]:
        return {"chunks": [tuple(t.clone() for t in c) for c in self.chunks]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.chunks = [tuple(t.clone() for t in c) for c in state["chunks"]]


class _Randomness:
    """The trainer's own generators (DAgger's coin and the optimiser's random starts), checkpointed."""

    def __init__(self, seed: int, expert: DppOptimizer):
        self.coin = np.random.default_rng(np.random.SeedSequence([seed, 0xDA66]))
        self.expert = expert

    def state_dict(self) -> dict[str, Any]:
        return {"coin": self.coin.bit_generator.state, "expert": self.expert.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.coin.bit_generator.state = state["coin"]
        self.expert.rng.bit_generator.state = state["expert"]


class DaggerTrainer(Trainer):
    """DAgger from dpp-opt into a set-structured actor (see the module docstring)."""

    name = "dagger"
    STATE = {"actor": "actor_net", "actor_opt": "actor_opt", "buffer": "buffer", "random": "random",
             "iterations": "iterations", "sampler": "sampler"}

    def __init__(self, cfg: Config, sim: BatchCoSim):
        super().__init__(cfg, sim)
        if cfg.training.arch != "set":
            raise ConfigError("ly-dagger trains the set-structured actor: set training.arch=set")
        if not sim.params.paper_actions:
            raise ConfigError("ly-dagger imitates dpp-opt, which optimises the paper's action parameterisation: "
                              "use actions.bandwidth/split/cpu = paper")
        self.c = DaggerConfig.from_config(cfg)
        self.actor_net = SetActor(sim.layout.blocks, cfg.training.hidden)
        self.actor_opt = torch.optim.Adam(self.actor_net.parameters(), lr=cfg.training.lr, foreach=True)
        self.expert = DppOptimizer(sim, seed=cfg.seed, iterations=self.c.expert_iterations)
        self.random = _Randomness(cfg.seed, self.expert)
        self.buffer = SlotBuffer(self.c.buffer_slots)
        self.sampler = ScenarioSampler(cfg) if cfg.training.scenarios.enabled else None
        self.base_sim = sim
        self.iterations = 0

    def _next_scenario(self) -> None:
        scn = self.sampler.draw()
        if self.sim is not self.base_sim:
            self.sim.close()
        self.sim = BatchCoSim(scn.apply(self.cfg), n_envs=self.sampler.episodes_per_batch(scn), seed=scn.seed,
                              initial_energy_queue=self.base_sim.initial_energy_queue)

    def _mask(self, covered: np.ndarray, label_used: np.ndarray) -> np.ndarray:
        """1 where an action entry influences the slot under the optimiser's decision."""
        any_cov = covered.any(-1, keepdims=True)
        lay = self.sim.actions
        return lay.assemble(np.concatenate([any_cov, covered], axis=-1),
                            np.concatenate([label_used, label_used.any(-1, keepdims=True)], axis=-1),
                            label_used).astype(np.float32)

    def iterate(self, first_episode: int) -> Iteration:
        if self.sampler is not None:
            self._next_scenario()
        sim, c = self.sim, self.c
        beta = c.beta0 * c.beta_decay ** self.iterations
        tracker = EpisodeSums(sim)
        obs_rows, labels, masks = [], [], []
        obs, _ = sim.reset()
        self.expert.reset()
        played_expert = 0
        for _ in range(sim.episode_slots):
            label = self.expert.act_sim(sim)                       # (E, I, A): the optimiser's raw action
            covered = obs[..., sim.layout["covered"]] > 0.5
            with torch.no_grad():
                mine = self.actor_net(torch.from_numpy(obs.astype(np.float32))).numpy()
            use_expert = self.random.coin.random(sim.n_envs) < beta
            played_expert += int(use_expert.sum())
            action = np.where(use_expert[:, None, None], label, mine)
            # The RSUs the optimiser's own decision uses (whoever plays): its bandwidth and CPU entries count.
            used = M.project(sim.params, clip_actions(label), sim.covered, sim.mob.active).split[..., 1:] > 0
            out = sim.step(clip_actions(action))
            obs_rows.append(obs.astype(np.float32))
            labels.append(np.clip(label, -c.clip, c.clip).astype(np.float32))
            masks.append(self._mask(covered, used))
            tracker.add(out)
            obs = out.obs
        I, D, A = sim.n_cvs, sim.obs_dim, sim.action_dim
        self.buffer.add(torch.from_numpy(np.stack(obs_rows).reshape(-1, I, D)),
                        torch.from_numpy(np.stack(labels).reshape(-1, I, A)),
                        torch.from_numpy(np.stack(masks).reshape(-1, I, A)))
        losses = self._fit()
        losses["beta"] = beta
        losses["expert_share"] = played_expert / (sim.n_envs * sim.episode_slots)
        self.iterations += 1
        return Iteration(tracker.finish(first_episode), losses)

    def _fit(self) -> dict[str, float]:
        c = self.c
        total, steps = 0.0, 0
        for _ in range(c.epochs):
            order = torch.randperm(len(self.buffer.chunks))
            for j in order.tolist():
                obs, label, mask = self.buffer.chunks[j]
                perm = torch.randperm(len(obs))
                for start in range(0, len(obs), c.minibatch_slots):
                    idx = perm[start:start + c.minibatch_slots]
                    m = mask[idx]
                    err = (self.actor_net(obs[idx]) - label[idx]) ** 2 * m
                    loss = err.sum() / m.sum().clamp_min(1.0)
                    self.actor_opt.zero_grad(set_to_none=True)
                    loss.backward()
                    self.actor_opt.step()
                    total += float(loss.detach())
                    steps += 1
        return {"imitation_loss": total / max(steps, 1), "buffer_slots": float(len(self.buffer))}

    def resolved_config(self) -> Config:
        return self.c.resolved(self.cfg)

    def actor(self, state: dict[str, Any]) -> tuple[ActorSpec, dict[str, torch.Tensor]]:
        sim = self.base_sim
        spec = ActorSpec("gaussian", sim.n_cvs, sim.obs_dim, sim.action_dim, self.cfg.training.hidden, True, None,
                         arch="set", entity=sim.layout.signature(), twin=self.cfg.twin.enabled)
        tensors = {f"net.{k}": v for k, v in state["actor"].items()}
        tensors["log_std"] = torch.full((len(PER_CV) + len(PER_RSU),), self.c.log_std)
        return spec, tensors
