"""``dtcosim``: one command with a subcommand per job.

    dtcosim run --episodes 1                       # SUMO headless, the shipped policy
    dtcosim train --algo ly-dtmppo
    dtcosim evaluate --checkpoint runs/x/policy.safetensors   # or a packaged one: --checkpoint ly-dtmppo_set
    dtcosim reproduce --preset quick && dtcosim plot
    dtcosim bench --sumo
    dtcosim configs; dtcosim policies                 # what --config NAME and --policy NAME take

Each subcommand lives in ``dtcosim/commands/<name>.py`` with a ``main(argv, prog)``;
``python scripts/<name>.py`` runs the same function, so both spellings take the
same options.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module under dtcosim.commands, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", "co-simulate with a policy and report what it did (SUMO headless by default)"),
    "train": ("train", "train a multi-agent policy"),
    "evaluate": ("evaluate", "compare checkpoints and reference policies on the same fresh episodes"),
    "reproduce": ("reproduce", "run the paper's experiment grid (resumable)"),
    "plot": ("plot", "figures and results.md from a reproduction folder"),
    "bench": ("bench", "speed ratios of the environments, the optimiser and training"),
    "maps": ("maps", "list the named SUMO maps, draw one with its RSUs, generate a synthetic city"),
    "survey": ("survey", "run policies on SUMO's shipped maps and fresh netgenerate nets (the map-survey table)"),
    "transfer": ("transfer", "the set-structured policy on other fleets and RSU layouts (the transfer table)"),
    "contention": ("contention", "policies under contention: big fleets, few RSUs, coverage gaps"),
    "city": ("city", "city-scale runs: real and generated maps with hundreds of CVs, timed"),
    "queues": ("queues", "the queues of the default scenario and each preset, policy by policy (a figure)"),
    "convergence": ("convergence", "how well the per-slot optimiser dpp-opt converges (gap between its starts)"),
    "traces": ("traces", "record SUMO mobility traces once, to train and evaluate on them fast"),
    "peers": ("peers", "the project's MAPPO against SB3, BenchMARL and RLlib on the same environments"),
    "warmup": ("warmup", "compile the numba kernels once, ahead of time (otherwise the first run does)"),
    "configs": ("configs", "list the packaged configs --config takes by name (congested, set_policy, ...)"),
    "policies": ("policies", "list the policies and packaged checkpoints --policy takes by name"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: dtcosim COMMAND [options]   (dtcosim COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command '{name}' (choose {', '.join(COMMANDS)})", file=sys.stderr)
        sys.exit(2)
    from cosim.cli import run_main
    module = importlib.import_module(f"dtcosim.commands.{COMMANDS[name][0]}")
    run_main(lambda: module.main(rest, prog=f"dtcosim {name}"))


if __name__ == "__main__":
    main()
