"""Networks shared by the learners: one MLP per agent, or one shared MLP with an agent-id one-hot."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

# Small MLPs on 2 cores: one intra-op thread is ~10x faster than two (thread
# hand-off costs more than the matmuls), and a fixed count keeps float results,
# hence resumed runs, bit-identical.
TORCH_THREADS = 1



class AgentLinear(nn.Module):
    """A linear layer applied to (..., I, in): one weight for all agents, or one per agent."""

    def __init__(self, n_agents: int, shared: bool, d_in: int, d_out: int):
        super().__init__()
        self.shared = shared
        g = 1 if shared else n_agents
        self.weight = nn.Parameter(torch.empty(g, d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(g, d_out))
        with torch.no_grad():
            for j in range(g):
                nn.init.kaiming_uniform_(self.weight[j].T, a=math.sqrt(5))  # nn.Linear's default

    def init_orthogonal(self, gain: float) -> None:
        with torch.no_grad():
            for j in range(self.weight.shape[0]):
                nn.init.orthogonal_(self.weight[j].T, gain)
            self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared:
            return x @ self.weight[0] + self.bias[0]
        # Separate agents in one batched matmul: (..., I, in) x (I, in, out) -> (..., I, out).
        return torch.einsum("...ij,ijk->...ik", x, self.weight) + self.bias


class AgentMLP(nn.Module):
    """Two hidden ReLU layers (the paper's actor and critic) over (..., I, d_in) -> (..., I, d_out).

    With ``shared=True`` all agents use one network and an agent-id one-hot is appended to the input.
    """

    def __init__(self, n_agents: int, d_in: int, d_out: int, hidden: int, shared: bool,
                 orthogonal: bool = True, head_gain: float = 1.0):
        super().__init__()
        self.n_agents, self.shared = n_agents, shared
        d0 = d_in + (n_agents if shared else 0)
        self.layers = nn.ModuleList([AgentLinear(n_agents, shared, d0, hidden),
                                     AgentLinear(n_agents, shared, hidden, hidden),
                                     AgentLinear(n_agents, shared, hidden, d_out)])
        if orthogonal:
            for layer, gain in zip(self.layers, (math.sqrt(2), math.sqrt(2), head_gain)):
                layer.init_orthogonal(gain)
        self.register_buffer("eye", torch.eye(n_agents), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared:
            x = torch.cat([x, self.eye.expand(*x.shape[:-1], self.n_agents)], dim=-1)
        h = torch.relu(self.layers[0](x))
        h = torch.relu(self.layers[1](h))
        return self.layers[2](h)


@dataclass(frozen=True)
class ActorSpec:
    """How to rebuild a deployable actor without running any code from the checkpoint."""

    kind: str              # "gaussian": raw = mean (+ std noise); "deterministic": raw = output;
    #                        "squashed": raw = 10 tanh(output / 10)
    n_agents: int
    obs_dim: int
    action_dim: int
    hidden: int
    share_params: bool
    dt_slice: tuple[int, int] | None  # zeroed in the input when the policy was trained without the twin
    arch: str = "mlp"      # "mlp": AgentMLP on the flat vector; "set": agents.entity.SetActor (any CVs and RSUs)
    entity: dict | None = None  # set arch: ObsLayout.signature() of the observation it reads
    twin: bool = True      # set arch: trained with the twin (false: the twin blocks are zeroed, as dt_slice does)


