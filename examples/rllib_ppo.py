#!/usr/bin/env python
"""RLlib multi-agent PPO (new API stack) on the co-simulation, one module shared by every CV.

    pip install -e ".[peers-rllib]"   # in an environment of its own: ray[rllib] pins gymnasium 1.2.2
    python examples/rllib_ppo.py --slots 9000

Starts a local Ray instance with one CPU; sampling and learning run in this
process (no env-runner workers), so its CPU time is what the run costs.
"""

from __future__ import annotations

from _common import evaluate, parse

from cosim.cli import run_main


def train(slots: int, seed: int = 0, n_cvs: int = 5):
    import ray
    import torch

    from cosim.peers.rllib_env import RLlibPolicy, ppo_config

    torch.set_num_threads(1)
    if not ray.is_initialized():
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    config = (ppo_config(n_cvs=n_cvs)
              .training(train_batch_size_per_learner=480, minibatch_size=480, num_epochs=10, lr=3e-4, gamma=0.99,
                        lambda_=0.95, clip_param=0.2, entropy_coeff=0.0, grad_clip=10.0)
              .rl_module(model_config={"fcnet_hiddens": [128, 128], "fcnet_activation": "tanh"})
              .debugging(seed=seed))
    algo = config.build_algo()
    done = 0
    while done < slots:  # train_batch_size_per_learner counts env steps: one slot of all CVs
        result = algo.train()
        done = int(result.get("num_env_steps_sampled_lifetime",
                              result.get("env_runners", {}).get("num_env_steps_sampled_lifetime", done + 480)))
    policy = RLlibPolicy(algo)
    return policy


def main() -> int:
    args = parse(__doc__.splitlines()[0], slots=9000)
    evaluate(train(args.slots, args.seed, args.cvs), args.cvs, args.episodes)
    return 0


if __name__ == "__main__":
    run_main(main)
