"""Side-by-side evaluation: every policy on the same fresh episodes (evaluate.py, the transfer tables)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .config import Config, CosimError, to_dict
from .env import BatchCoSim
from .model import part_spread
from .runner import format_table, run_episodes

EVAL_SEED = 10_000  # evaluation episode i is reset with seed EVAL_SEED + i; training streams start from cfg.seed

EVAL_COLUMNS = [("policy", "policy", "{}"), ("cost_pm", "cost ± 95% CI", "{}"), ("mean_reward", "reward", "{:.3f}"),
                ("mean_delay_s", "delay s", "{:.4f}"), ("mean_energy_j", "energy J", "{:.2f}"),
                ("instr_share", "InstrT", "{:.1%}"), ("deadline_miss_rate", "misses", "{:.1%}"),
                ("part_spread_mean", "part spread", "{:.3f}")]


class TimedPolicy:
    """A policy whose decisions are timed (wall time per call to ``act`` or ``act_sim``); everything
    else passes through. Timing stays out of the deterministic summaries: read ``decision_ms``."""

    def __init__(self, policy: Any):
        self.policy, self.seconds, self.calls = policy, 0.0, 0
        if hasattr(policy, "act_sim"):
            self.act_sim = self._act_sim

    def __getattr__(self, name: str) -> Any:
        return getattr(self.policy, name)

    @property
    def decision_ms(self) -> float:
        return 1e3 * self.seconds / max(self.calls, 1)

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        t = time.perf_counter()
        a = self.policy.act(obs, deterministic=deterministic)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return a

    def _act_sim(self, sim: Any) -> np.ndarray:
        t = time.perf_counter()
        a = self.policy.act_sim(sim)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return a


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
            spreads: list[np.ndarray] = []

            def on_slot(o: Any, ep: int, t: int, spreads: list[np.ndarray] = spreads) -> None:
                s = part_spread(o.result.rsu_delay[0], o.result.offloaded[0])
                spreads.append(s[np.isfinite(s)])

            out[name] = run_episodes(sim, policy, episodes, seed=seed, progress=progress, policy_name=name,
                                     on_slot=on_slot).summary
            _add_spread(out[name], spreads)
            _add_diagnostics(out[name], policy)
    return out


def options_key(cfg: Config) -> str:
    """What a policy may bring to its config (``actions``, ``twin``) as one string: policies whose configs
    share it can share one simulator."""
    return json.dumps({k: to_dict(getattr(cfg, k)) for k in ("actions", "twin")}, sort_keys=True)


def evaluate_each(policies: dict[str, tuple[Config, Any]], episodes: int, seed: int = EVAL_SEED,
                  slots: int | None = None, progress: bool = False, **sim_kwargs: Any
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, LongHorizonSummary] | None]:
    """Policies that each run under a config of their own (a checkpoint under the action and observation
    options it was trained with: ``agents.config_for``), on the same episodes. Policies whose configs
    share ``actions`` and ``twin`` share one simulator. With ``slots``, long-horizon episodes and their
    summaries (:func:`evaluate_long_horizon`). Returns (summaries, long-horizon summaries or None), in the
    order given."""
    groups: dict[str, tuple[Config, dict[str, Any]]] = {}
    for name, (cfg, pol) in policies.items():
        groups.setdefault(options_key(cfg), (cfg, {}))[1][name] = pol
    summaries: dict[str, dict[str, Any]] = {}
    long: dict[str, LongHorizonSummary] | None = {} if slots is not None else None
    for cfg, group in groups.values():
        if slots is not None:
            s, lh = evaluate_long_horizon(cfg, group, episodes, slots, seed=seed, progress=progress, **sim_kwargs)
            long.update(lh)
        else:
            s = evaluate_policies(cfg, group, episodes, seed=seed, progress=progress, **sim_kwargs)
        summaries.update(s)
    order = list(policies)
    return ({n: summaries[n] for n in order}, None if long is None else {n: long[n] for n in order})


def _add_spread(summary: dict[str, Any], spreads: list[np.ndarray]) -> None:
    """How far apart a task's RSU parts finish: (max - min) / max over tasks with two or more parts."""
    sp = np.concatenate(spreads) if spreads else np.zeros(0)
    summary["part_spread_median"] = float(np.median(sp)) if sp.size else float("nan")
    summary["part_spread_mean"] = float(np.mean(sp)) if sp.size else float("nan")


def _add_diagnostics(summary: dict[str, Any], policy: Any) -> None:
    """Policies that report on themselves (dpp-opt: how converged its solutions are) add it to the summary."""
    if hasattr(policy, "summary_text"):
        summary["diagnostics"] = policy.summary()
        summary["diagnostics_text"] = policy.summary_text()


def comparison_table(summaries: dict[str, dict[str, Any]]) -> str:
    rows = [dict(s, policy=name, cost_pm=f"{s['mean_cost']:.4f} ± {s['cost_ci95']:.4f}",
                 part_spread_mean=s.get("part_spread_mean", float("nan")))
            for name, s in summaries.items()]
    return format_table(rows, EVAL_COLUMNS)


# ---------------------------------------------------------------------------
# Long-horizon evaluation: does a policy keep the energy queues stable (the Lyapunov promise)?

@dataclass
class LongHorizonSummary:
    """One policy over long episodes (every number a mean over episodes; "last half": slots T/2..T)."""

    policy: str
    episodes: int
    slots: int
    energy_budget_j: float        # E_max / I, per CV per slot
    energy_last_half_j: float     # time-average energy per active CV per slot over the last half
    energy_vs_budget: float       # energy_last_half_j / budget - 1 (0: on budget)
    y_final_j: float              # energy queue Y per CV at the end
    y_growth_j_per_slot: float    # least-squares slope of the mean Y over the last half (0: stable)
    y_levelled: bool              # the slope is at most LEVELLED_SHARE of the budget per slot
    cost_last_half: float         # system cost per slot over the last half (the long-run cost)
    cost_all: float               # system cost per slot over the whole episode
    delay_last_half_s: float
    deadline_miss_last_half: float
    q_rsu_final: float            # RSU backlog at the end, summed over RSUs, W_ref units
    y_trace_j: list[float] = field(default_factory=list)  # mean Y per CV after every slot, mean over episodes
    q_rsu_trace: list[float] = field(default_factory=list)  # RSU backlog summed over RSUs after every slot, W_ref
    q_loc_trace: list[float] = field(default_factory=list)  # local backlog per CV after every slot, W_ref
    energy_trace_j: list[float] = field(default_factory=list)  # energy per active CV in every slot, J


# Y has levelled off when over the last half it grows by at most this share of the per-CV budget per slot
# (the slope is the energy over budget where Y > 0: 2 % of the budget is 0.2 J per slot at 10 J). A
# heuristic on a finite horizon: a queue that grows more slowly may still not be stable.
LEVELLED_SHARE = 0.02


def _long_horizon_summary(name: str, slots: int, budget: float, tr: dict[str, np.ndarray],
                          q_rsu_final: list[float]) -> LongHorizonSummary:
    """``tr``: per-episode traces (episodes, slots) of energy and active CVs, system cost, delay sum,
    misses and mean Y."""
    half = slice(slots // 2, slots)
    n_act = tr["active"][:, half].sum()
    e_half = float(tr["energy"][:, half].sum() / max(n_act, 1))
    y = tr["y"].mean(0)
    t = np.arange(slots)[half]
    slope = float(np.polyfit(t, y[half], 1)[0]) if t.size >= 2 else 0.0
    return LongHorizonSummary(
        policy=name, episodes=tr["cost"].shape[0], slots=slots, energy_budget_j=budget,
        energy_last_half_j=e_half, energy_vs_budget=e_half / budget - 1.0 if budget > 0 else float("inf"),
        y_final_j=float(y[-1]), y_growth_j_per_slot=slope, y_levelled=bool(slope <= LEVELLED_SHARE * budget),
        cost_last_half=float(tr["cost"][:, half].mean()), cost_all=float(tr["cost"].mean()),
        delay_last_half_s=float(tr["delay"][:, half].sum() / max(n_act, 1)),
        deadline_miss_last_half=float(tr["misses"][:, half].sum() / max(n_act, 1)),
        q_rsu_final=float(np.mean(q_rsu_final)), y_trace_j=[float(v) for v in y],
        q_rsu_trace=[float(v) for v in tr["q_rsu"].mean(0)], q_loc_trace=[float(v) for v in tr["q_loc"].mean(0)],
        energy_trace_j=[float(v) for v in tr["energy"].sum(0) / np.maximum(tr["active"].sum(0), 1)])


def evaluate_long_horizon(cfg: Config, policies: dict[str, Any], episodes: int, slots: int,
                          seed: int = EVAL_SEED, progress: bool = False,
                          **sim_kwargs: Any) -> tuple[dict[str, dict[str, Any]], dict[str, LongHorizonSummary]]:
    """Like :func:`evaluate_policies` with episodes ``slots`` long (scenario.episode_slots overridden);
    also returns each policy's :class:`LongHorizonSummary`. Episode i is reset with seed + i."""
    if slots < 2:
        raise CosimError(f"--slots {slots}: a long-horizon evaluation needs at least 2 slots")
    cfg = cfg.replace(**{"scenario.episode_slots": int(slots)})
    summaries: dict[str, dict[str, Any]] = {}
    long: dict[str, LongHorizonSummary] = {}
    with BatchCoSim(cfg, n_envs=1, seed=seed, **sim_kwargs) as sim:
        for name, pol in policies.items():
            policy = pol if hasattr(pol, "act") else pol(sim)
            tr = {k: np.zeros((episodes, slots)) for k in ("energy", "active", "cost", "delay", "misses", "y",
                                                                  "q_rsu", "q_loc")}
            q_final: list[float] = []

            def on_slot(out: Any, ep: int, t: int, tr: dict[str, np.ndarray] = tr,
                        q_final: list[float] = q_final) -> None:
                r = out.result
                tr["energy"][ep, t] = float((r.energy[0] * r.active[0]).sum())
                tr["active"][ep, t] = float(r.active[0].sum())
                tr["cost"][ep, t] = float(r.system_cost[0])
                tr["delay"][ep, t] = float((r.delay[0] * r.active[0]).sum())
                tr["misses"][ep, t] = float(r.deadline_miss[0].sum())
                q, W = sim.queues, sim.params.W_ref  # after the slot
                tr["y"][ep, t] = float(q.energy[0].mean())
                tr["q_rsu"][ep, t] = float(q.q_rsu[0].sum() / W)
                tr["q_loc"][ep, t] = float(q.q_loc[0].mean() / W)
                if t == slots - 1:
                    q_final.append(float(sim.queues.q_rsu[0].sum() / sim.params.W_ref))

            spreads: list[np.ndarray] = []

            def on_slot_all(out: Any, ep: int, t: int, spreads: list[np.ndarray] = spreads) -> None:
                on_slot(out, ep, t)
                s = part_spread(out.result.rsu_delay[0], out.result.offloaded[0])
                spreads.append(s[np.isfinite(s)])

            res = run_episodes(sim, policy, episodes, seed=seed, progress=progress, policy_name=name,
                               on_slot=on_slot_all)
            summaries[name] = res.summary
            _add_spread(summaries[name], spreads)
            _add_diagnostics(summaries[name], policy)
            long[name] = _long_horizon_summary(name, slots, sim.params.energy_budget, tr, q_final)
    return summaries, long


LONG_COLUMNS = [("policy", "policy", "{}"), ("energy_last_half_j", "energy/CV last half J", "{:.2f}"),
                ("energy_budget_j", "budget J", "{:.1f}"), ("energy_vs_budget", "vs budget", "{:+.1%}"),
                ("y_final_j", "Y end J", "{:.1f}"), ("y_growth_j_per_slot", "Y growth J/slot", "{:+.3f}"),
                ("y_levelled_text", "Y levelled", "{}"),
                ("cost_last_half", "cost last half", "{:.4f}"), ("cost_all", "cost all", "{:.4f}"),
                ("delay_last_half_s", "delay s", "{:.4f}"), ("deadline_miss_last_half", "misses", "{:.1%}"),
                ("q_rsu_final", "Q_rsu end", "{:.3f}")]


def long_horizon_table(long: dict[str, LongHorizonSummary]) -> str:
    return format_table([dict(asdict(s), y_levelled_text="yes" if s.y_levelled else "no") for s in long.values()],
                        LONG_COLUMNS)
