"""Set-structured networks (``training.arch: set``): one policy for any number of CVs and RSUs.

An observation is read as entities (``cosim.twin.ObsLayout.split``): the CV's own
features and one token per RSU. The actor encodes its own features, encodes every
RSU token together with them (one shared encoder), pools the tokens (mean and max,
a deep set) into a context, and emits per RSU a split, a bandwidth and a CPU logit,
plus per CV the local split logit and the unused-bandwidth logit. These are put
into the environment's action by name (``cosim.model.ActionLayout``), so any K
works; parameters are shared by all agents and there is no agent one-hot, so any
I works. The actor is equivariant to permutations of the RSUs and of the agents.

The centralised critic encodes every agent the same way, pools over agents (mean
and max) and values agent i from its own code and the pooled ones.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from cosim.model import ActionLayout
from cosim.twin import OBS_BLOCKS, Block, ObsLayout

PER_RSU = ("split", "bandwidth", "cpu")   # per-RSU outputs, in this order
PER_CV = ("local", "bandwidth_unused")    # per-CV outputs, in this order
COUNT_SCALE = 8.0                         # the critic's agent-count input is I / COUNT_SCALE


class _Indices:
    """Cached index tensors of the entity view, per observation blocks and length (K follows from it)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[tuple[Block, ...], int], tuple[ObsLayout, torch.Tensor, torch.Tensor]] = {}

    def __call__(self, blocks: tuple[Block, ...], obs_dim: int) -> tuple[ObsLayout, torch.Tensor, torch.Tensor]:
        key = (blocks, obs_dim)
        if key not in self._cache:
            lay = ObsLayout.for_obs_dim(obs_dim, blocks)
            self._cache[key] = (lay, torch.from_numpy(lay.own_index()), torch.from_numpy(lay.token_index()))
        return self._cache[key]


_INDICES = _Indices()
_INVERSE: dict[int, torch.Tensor] = {}


def split_entities(obs: torch.Tensor, blocks: tuple[Block, ...] = OBS_BLOCKS) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat observations (..., D) of ``blocks`` -> own features (..., own_dim) and RSU tokens (..., K, token_dim)."""
    _, own_idx, tok_idx = _INDICES(blocks, obs.shape[-1])
    return obs[..., own_idx], obs[..., tok_idx]


def n_rsus_of(obs_dim: int, blocks: tuple[Block, ...] = OBS_BLOCKS) -> int:
    """K of a flat observation of ``blocks`` with ``obs_dim`` entries."""
    return _INDICES(blocks, obs_dim)[0].n_rsus


def _inverse(K: int) -> torch.Tensor:
    """Where each entry of cat([local, unused, split_rsu(K), bandwidth_rsu(K), cpu(K)]) goes in the action."""
    if K not in _INVERSE:
        act = ActionLayout(K)
        rng = lambda s: list(range(s.start, s.stop))  # noqa: E731
        where = [act.local, act.bandwidth_unused, *rng(act.split_rsu), *rng(act.bandwidth_rsu), *rng(act.cpu)]
        assert sorted(where) == list(range(act.dim)) and len(where) == 2 + 3 * K
        _INVERSE[K] = torch.from_numpy(np.argsort(np.asarray(where)))
    return _INVERSE[K]


def to_action(per_cv: torch.Tensor, per_rsu: torch.Tensor) -> torch.Tensor:
    """(..., 2) per-CV and (..., K, 3) per-RSU outputs -> raw actions (..., 3K+2) in ActionLayout order."""
    K = per_rsu.shape[-2]
    flat = torch.cat([per_cv, per_rsu.transpose(-1, -2).reshape(*per_rsu.shape[:-2], 3 * K)], dim=-1)
    return flat[..., _inverse(K)]


def _init(layer: nn.Linear, gain: float, orthogonal: bool) -> nn.Linear:
    if orthogonal:
        nn.init.orthogonal_(layer.weight, gain)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    return layer


class EntityEncoder(nn.Module):
    """Own features and RSU tokens -> token codes z (..., K, H) and the CV's context c (..., H).

    h = relu(W_o own); z_k = relu(W_t token_k + W_h h) (a token is read in the light of the CV's
    own state; W_h h is computed once per CV); c = relu(h + W_p [mean_k z_k, max_k z_k]) (deep-set
    pooling, symmetric in the RSUs). Lean on purpose: the update's cost is these matmuls.
    """

    def __init__(self, own_dim: int, token_dim: int, hidden: int, orthogonal: bool):
        super().__init__()
        g = math.sqrt(2)
        self.own = _init(nn.Linear(own_dim, hidden), g, orthogonal)
        self.tok = _init(nn.Linear(token_dim, hidden), g, orthogonal)
        self.tok_own = _init(nn.Linear(hidden, hidden, bias=False), g, orthogonal)
        self.pool = _init(nn.Linear(2 * hidden, hidden), g, orthogonal)

    def forward(self, own: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.own(own))
        z = torch.relu(self.tok(tokens) + self.tok_own(h).unsqueeze(-2))
        c = torch.relu(h + self.pool(torch.cat([z.mean(-2), z.amax(-2)], dim=-1)))
        return z, c


class SetActor(nn.Module):
    """Flat observations (..., I, D) of ``blocks`` (a twin.view's layout) and any K -> Gaussian means (..., I, 3K+2)."""

    def __init__(self, blocks: tuple[Block, ...], hidden: int, orthogonal: bool = True, head_gain: float = 1.0):
        super().__init__()
        probe = ObsLayout(0, blocks)
        self.blocks, self.own_dim, self.token_dim, self.hidden = blocks, probe.own_dim, probe.token_dim, hidden
        self.enc = EntityEncoder(self.own_dim, self.token_dim, hidden, orthogonal)
        # Per RSU: its code with the pooled context (what the other RSUs offer) -> PER_RSU logits.
        self.rsu_ctx = _init(nn.Linear(hidden, hidden), math.sqrt(2), orthogonal)
        self.rsu_out = _init(nn.Linear(hidden, len(PER_RSU)), head_gain, orthogonal)
        self.cv_out = _init(nn.Linear(hidden, len(PER_CV)), head_gain, orthogonal)

    def heads(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> per-CV outputs (..., 2) (PER_CV) and per-RSU outputs (..., K, 3) (PER_RSU)."""
        z, c = self.enc(*split_entities(obs, self.blocks))
        u = torch.relu(z + self.rsu_ctx(c).unsqueeze(-2))
        return self.cv_out(c), self.rsu_out(u)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return to_action(*self.heads(obs))


def expand_log_std(log_std: torch.Tensor, n_rsus: int) -> torch.Tensor:
    """One learned log std per output kind, (5,) = PER_CV + PER_RSU -> (3K+2,) in action order."""
    return to_action(log_std[: len(PER_CV)], log_std[len(PER_CV):].expand(n_rsus, len(PER_RSU)))


class SetCritic(nn.Module):
    """V_i from the global state (..., I*D): every agent's row encoded, pooled over agents -> (..., I)."""

    def __init__(self, blocks: tuple[Block, ...], hidden: int, orthogonal: bool = True):
        super().__init__()
        probe = ObsLayout(0, blocks)
        self.blocks = blocks
        self.enc = EntityEncoder(probe.own_dim, probe.token_dim, hidden, orthogonal)
        self.agents = _init(nn.Linear(2 * hidden, hidden), math.sqrt(2), orthogonal)
        # Mean and max forget how many agents there are; values scale with it (congestion), so say it.
        self.count = _init(nn.Linear(1, hidden, bias=False), 1.0, orthogonal)
        self.out = _init(nn.Linear(hidden, 1), 1.0, orthogonal)

    def forward(self, state: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """(..., I*D) states and (..., I, D) observations (for I and D) -> (..., I) values."""
        rows = state.reshape(*state.shape[:-1], obs.shape[-2], obs.shape[-1])  # agent i's true observation
        _, c = self.enc(*split_entities(rows, self.blocks))
        # Agent i's code and the fleet's (mean and max over agents: any I, symmetric in the others).
        pooled = self.agents(torch.cat([c.mean(-2, keepdim=True), c.amax(-2, keepdim=True)], -1))
        pooled = pooled + self.count(c.new_full((1,), obs.shape[-2] / COUNT_SCALE))
        return self.out(torch.relu(c + pooled)).squeeze(-1)
