"""Reference policies, with the interface every learned policy has too.

A policy maps actor observations (E, I, D) to raw actions (E, I, 3K+2); the
environment projects them onto C4-C6. Reference policies read only the CV's
own observation (coverage flags and link distances), as a decentralised
actor would.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from .config import CosimError
from .env import ACTION_BOUND
from .model import ActionLayout
from .twin import ObsLayout

HIGH, LOW = ACTION_BOUND, -ACTION_BOUND


@runtime_checkable
class Policy(Protocol):
    name: str

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray: ...


class _Reference:
    name = "reference"

    def __init__(self, n_rsus: int, seed: int | None = None):
        self.K = n_rsus
        self.layout = ObsLayout(n_rsus)
        self.actions = ActionLayout(n_rsus)
        self.rng = np.random.default_rng(seed)

    def _blank(self, obs: np.ndarray) -> np.ndarray:
        """Everything local, no bandwidth, full CPU requests (they only count where offloaded)."""
        lay = self.actions
        a = np.full(obs.shape[:-1] + (lay.dim,), LOW)
        a[..., lay.local] = HIGH
        a[..., lay.bandwidth_unused] = HIGH
        a[..., lay.cpu] = HIGH
        return a

    def _offload(self, a: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        """Split equally over the chosen RSUs (E, I, K bool), bandwidth equally, none local."""
        lay = self.actions
        any_ = chosen.any(axis=-1)
        a[..., lay.local] = np.where(any_, LOW, HIGH)
        a[..., lay.split_rsu] = np.where(chosen, 0.0, LOW)
        a[..., lay.bandwidth_rsu] = np.where(chosen, 0.0, LOW)
        a[..., lay.bandwidth_unused] = np.where(any_, LOW, HIGH)
        return a

    def covered(self, obs: np.ndarray) -> np.ndarray:
        return obs[..., self.layout["covered"]] > 0.5


class LocalPolicy(_Reference):
    """All-local: every task runs on its own CV."""

    name = "local"

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        return self._blank(obs)


class NearestPolicy(_Reference):
    """Full offload to the nearest covering RSU with all bandwidth; local when none covers."""

    name = "nearest"

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        cov = self.covered(obs)
        dist = np.where(cov, obs[..., self.layout["distance"]], np.inf)
        chosen = (np.arange(self.K) == dist.argmin(axis=-1)[..., None]) & cov
        return self._offload(self._blank(obs), chosen)


class EqualPolicy(_Reference):
    """Equal split over all covering RSUs, bandwidth shared equally; local when none covers."""

    name = "equal"

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        return self._offload(self._blank(obs), self.covered(obs))


class RandomPolicy(_Reference):
    """Raw actions uniform in [-10, 10] (its own seeded generator)."""

    name = "random"

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        return self.rng.uniform(LOW, HIGH, obs.shape[:-1] + (self.actions.dim,))


REFERENCE_POLICIES: dict[str, type[_Reference]] = {
    "local": LocalPolicy, "nearest": NearestPolicy, "equal": EqualPolicy, "random": RandomPolicy}


def make_reference_policy(name: str, n_rsus: int, seed: int | None = None) -> _Reference:
    """A reference policy by name (``agents.make_policy`` also knows dpp-opt and checkpoints)."""
    if name not in REFERENCE_POLICIES:
        raise CosimError(f"unknown reference policy '{name}' (choose {', '.join(REFERENCE_POLICIES)})")
    return REFERENCE_POLICIES[name](n_rsus, seed)
