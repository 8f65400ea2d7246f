"""Adapters between the environments and RL libraries users already have (``pip install -e ".[peers]"`` for SB3 and BenchMARL, ``".[peers-rllib]"`` for RLlib).

Each submodule imports its library at the top, so import only the one you use:

- :mod:`cosim.peers.sb3`: Stable-Baselines3 through SuperSuit (parameter-shared PPO), with the
  truncation flag SB3 needs to bootstrap at the end of an episode;
- :mod:`cosim.peers.benchmarl`: a BenchMARL task class (TorchRL's ``PettingZooWrapper`` inside);
- :mod:`cosim.peers.rllib`: RLlib's multi-agent env registration (``pip install "ray[rllib]"``).

Every submodule also turns what its library trained into a policy with the project's
``act(obs (E, I, D), deterministic) -> raw actions (E, I, 3K+2)`` interface, so
:func:`cosim.evaluation.evaluate_policies` scores it on the same seeds as ``scripts/evaluate.py``.
"""
