#!/usr/bin/env python
"""Stable-Baselines3 PPO on the PettingZoo env through SuperSuit: one policy shared by every CV.

    pip install -e ".[peers]"
    python examples/sb3_ppo.py --slots 9000

Each of the 16 env copies contributes one SB3 "env" per CV (16 x 5 = 80); every
copy plays its own episodes (seeds seed, seed+1, ...). The wrapper keeps SB3's
truncation flag, so the 30th slot is bootstrapped, not treated as terminal.
"""

from __future__ import annotations

from _common import evaluate, parse

from cosim.cli import run_main

COPIES = 16


def train(slots: int, seed: int = 0, n_cvs: int = 5):
    """A trained SB3 PPO model as a project policy (budget: ``slots`` slots of all CVs)."""
    import torch
    from stable_baselines3 import PPO

    from cosim.peers.sb3 import SB3Policy, sb3_vec_env

    torch.set_num_threads(1)  # small networks: threads only add overhead (the project's trainers do the same)
    venv = sb3_vec_env(copies=COPIES, n_cvs=n_cvs)
    # Sizes as the project's MAPPO: 16 episodes of 30 slots per update, 10 epochs, minibatches of 512 samples.
    model = PPO("MlpPolicy", venv, n_steps=30, batch_size=512, n_epochs=10, learning_rate=3e-4, gamma=0.99,
                gae_lambda=0.95, clip_range=0.2, ent_coef=0.0, max_grad_norm=10.0, seed=seed, device="cpu",
                policy_kwargs={"net_arch": [128, 128], "log_std_init": -0.5}, verbose=0)
    model.learn(total_timesteps=slots * n_cvs)  # SB3 counts one step per CV
    venv.close()
    return SB3Policy(model)


def main() -> int:
    args = parse(__doc__.splitlines()[0], slots=9000)
    evaluate(train(args.slots, args.seed, args.cvs), args.cvs, args.episodes)
    return 0


if __name__ == "__main__":
    run_main(main)
