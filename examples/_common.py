"""What the examples share: argument parsing and the evaluation with the project's evaluator."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cosim.config import CosimError, load_config  # noqa: E402
from cosim.evaluation import EVAL_SEED, comparison_table, evaluate_policies  # noqa: E402

EPISODE_SLOTS = 30  # the default config's episode length; budgets below are in slots (one step of all CVs)


def parse(description: str, slots: int) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--slots", type=int, default=slots, help=f"training budget in slots (default {slots})")
    ap.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    ap.add_argument("--cvs", type=int, default=5, help="number of CVs (default 5)")
    ap.add_argument("--episodes", type=int, default=20,
                    help=f"evaluation episodes, seeds {EVAL_SEED}+i as in scripts/evaluate.py (default 20)")
    args = ap.parse_args()
    if args.slots < EPISODE_SLOTS or args.episodes < 1 or args.cvs < 1:
        raise CosimError(f"--slots must be at least {EPISODE_SLOTS}, --episodes and --cvs at least 1")
    return args


def evaluate(policy: Any, n_cvs: int, episodes: int) -> dict[str, Any]:
    """Score ``policy`` beside the equal-split rule on evaluate.py's seeds; print and return its summary."""
    cfg = load_config().replace(**{"scenario.n_cvs": n_cvs})
    from cosim.policies import make_reference_policy
    rows = evaluate_policies(cfg, {policy.name: policy, "equal": make_reference_policy("equal", cfg.n_rsus)},
                             episodes)
    print(f"{episodes} episodes, seeds {EVAL_SEED}..{EVAL_SEED + episodes - 1}, {n_cvs} CVs")
    print(comparison_table(rows))
    return rows[policy.name]
