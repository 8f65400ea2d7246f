"""Side-by-side evaluation: every policy on the same fresh episodes (evaluate.py, the transfer tables)."""

from __future__ import annotations

from typing import Any

from .config import Config
from .env import BatchCoSim
from .runner import format_table, run_episodes

EVAL_SEED = 10_000  # evaluation episode i is reset with seed EVAL_SEED + i; training streams start from cfg.seed

EVAL_COLUMNS = [("policy", "policy", "{}"), ("cost_pm", "cost ± 95% CI", "{}"), ("mean_reward", "reward", "{:.3f}"),
                ("mean_delay_s", "delay s", "{:.4f}"), ("mean_energy_j", "energy J", "{:.2f}"),
                ("instr_share", "InstrT", "{:.1%}"), ("deadline_miss_rate", "misses", "{:.1%}")]


def evaluate_policies(cfg: Config, policies: dict[str, Any], episodes: int, seed: int = EVAL_SEED,
                      progress: bool = False, **sim_kwargs: Any) -> dict[str, dict[str, Any]]:
    """Run every policy deterministically on the same ``episodes`` (episode i reset with seed + i).

    Policies are objects with ``act`` or factories ``f(sim) -> policy`` (for those that need the
    simulator, e.g. checkpoints checked against it). Returns run_cosim's summary per policy name.
    """
    out: dict[str, dict[str, Any]] = {}
    with BatchCoSim(cfg, n_envs=1, seed=seed, **sim_kwargs) as sim:
        for name, pol in policies.items():
            policy = pol if hasattr(pol, "act") else pol(sim)
            out[name] = run_episodes(sim, policy, episodes, seed=seed, progress=progress, policy_name=name).summary
    return out


def comparison_table(summaries: dict[str, dict[str, Any]]) -> str:
    rows = [dict(s, policy=name, cost_pm=f"{s['mean_cost']:.4f} ± {s['cost_ci95']:.4f}")
            for name, s in summaries.items()]
    return format_table(rows, EVAL_COLUMNS)
