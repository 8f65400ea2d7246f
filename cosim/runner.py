"""Run a policy for episodes, log every slot and summarise (shared by run_cosim and evaluate)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from . import model as M
from .config import CosimError
from .env import BatchCoSim, StepOutput
from .stats import ci95


@dataclass
class EpisodeRecord:
    """One episode, as evaluation reports it and training logs it (metrics.csv): the one per-episode record."""

    episode: int
    seed: int                # the reset seed; -1 in training, where the random streams continue
    reward: float            # mean over slots of R(t)
    cost: float              # mean over slots of the system cost
    delay_s: float           # mean over tasks
    energy_j: float          # mean over tasks
    instr_share: float       # InstrT parts / RSU parts
    deadline_miss_rate: float
    deadline_misses: int
    tasks: int
    q_loc_mean: float        # local backlog per CV, mean over slots, W_ref units (Fig. 5b)
    q_rsu_mean: float        # RSU backlog per RSU, mean over slots, W_ref units
    q_loc_final: float       # sum over CVs at the end, in units of one average local task (W_ref)
    q_rsu_final: float       # sum over RSUs at the end, W_ref units
    energy_queue_final: float  # sum over CVs at the end, J


RECORD_FIELDS = [f.name for f in fields(EpisodeRecord)]
_INT_FIELDS = {f.name for f in fields(EpisodeRecord) if f.type in (int, "int")}


def record_from_row(row: dict[str, Any]) -> EpisodeRecord:
    """An EpisodeRecord from strings or floats by field name (metrics.csv rows, checkpoint tables)."""
    return EpisodeRecord(**{k: int(float(row[k])) if k in _INT_FIELDS else float(row[k]) for k in RECORD_FIELDS})


class EpisodeSums:
    """Per-episode sums of what the slots report, vectorised over the E lockstep environments;
    shared by evaluation (run_episodes) and training (the trainers' rollouts)."""

    KEYS = ("reward", "cost", "delay", "energy", "tasks", "parts", "instr", "misses", "q_loc", "q_rsu")

    def __init__(self, sim: BatchCoSim):
        self.sim = sim
        self.sums = {k: np.zeros(sim.n_envs) for k in self.KEYS}
        self.slots = 0

    def add(self, out: StepOutput) -> None:
        r, s = out.result, self.sums
        check_finite(out)
        act = r.active
        s["reward"] += r.reward
        s["cost"] += r.system_cost
        s["delay"] += (r.delay * act).sum(-1)
        s["energy"] += (r.energy * act).sum(-1)
        s["tasks"] += act.sum(-1)
        s["parts"] += r.offloaded.sum((-2, -1))
        s["instr"] += r.instr_mode.sum((-2, -1))  # InstrT is only ever chosen for offloaded parts
        s["misses"] += r.deadline_miss.sum(-1)
        q, W = self.sim.queues, self.sim.params.W_ref  # the backlogs this slot left behind
        s["q_loc"] += q.q_loc.mean(-1) / W
        s["q_rsu"] += q.q_rsu.mean(-1) / W
        self.slots += 1

    def finish(self, first_episode: int, seed: int = -1, n: int | None = None) -> list[EpisodeRecord]:
        """Records of the first ``n`` (default all E) environments, numbered from ``first_episode``."""
        s, q, W = self.sums, self.sim.queues, self.sim.params.W_ref
        div = lambda a, b: np.where(b > 0, a / np.maximum(b, 1e-300), 0.0)  # noqa: E731
        slots = max(self.slots, 1)
        cols = {"reward": s["reward"] / slots, "cost": s["cost"] / slots, "delay_s": div(s["delay"], s["tasks"]),
                "energy_j": div(s["energy"], s["tasks"]), "instr_share": div(s["instr"], s["parts"]),
                "deadline_miss_rate": div(s["misses"], s["tasks"]), "q_loc_mean": s["q_loc"] / slots,
                "q_rsu_mean": s["q_rsu"] / slots, "q_loc_final": q.q_loc.sum(-1) / W,
                "q_rsu_final": q.q_rsu.sum(-1) / W, "energy_queue_final": q.energy.sum(-1)}
        return [EpisodeRecord(episode=first_episode + e, seed=seed, deadline_misses=int(s["misses"][e]),
                              tasks=int(s["tasks"][e]), **{k: float(v[e]) for k, v in cols.items()})
                for e in range(self.sim.n_envs if n is None else n)]


# What a slot reports, in the order a blow-up propagates; the first non-finite one is named.
_CHECKED = (("delay", "task delay"), ("energy", "task energy"), ("system_cost", "system cost"),
            ("reward", "reward R(t)"))


def check_finite(out: StepOutput) -> None:
    """Stop with one line naming the quantity when a slot's result is inf or NaN: summaries and
    training would otherwise carry it on silently (a parameter outside what the model can handle)."""
    r = out.result
    for attr, label in _CHECKED:
        v = np.asarray(getattr(r, attr))
        if not np.isfinite(v).all():
            bad = v[~np.isfinite(v)].flat[0]
            raise CosimError(f"the {label} of a slot is {bad} (not finite): the parameters drive the model "
                             f"beyond what it can compute; check the config values in use")


def _div(a: float, b: float) -> float:
    return a / b if b else 0.0


def slot_columns(n_rsus: int) -> list[str]:
    """slots.csv's header: one row per slot and CV."""
    per_rsu = [f"{c}_rsu{k}" for k in range(n_rsus) for c in ("split", "bw", "cpu_ghz", "mode")]
    return (["episode", "slot", "cv", "active", "x", "y", "lane", "speed", "split_local"] + per_rsu
            + ["delay_s", "energy_j", "cost", "deadline_miss", "agent_reward", "system_cost", "system_reward"])


def slot_rows(out: StepOutput, first_episode: int, slot: int, n_envs: int) -> list[list[Any]]:
    """The slots.csv rows of environments 0..n_envs-1 (episodes first_episode...) for one step.

    Built from whole arrays (``tolist`` once per quantity, not a dict per row); every value is
    Python's round() of the float, so the file is what a per-row writer gives."""
    r, d, m = out.result, out.decision, out.mobility
    n = slice(0, n_envs)
    L = lambda a: a[n].tolist()  # noqa: E731
    active, lane = L(r.active.astype(int)), L(m.lane.astype(int))
    x, y, speed = L(m.x), L(m.y), L(m.speed)
    split, bw, cpu = L(d.split), L(d.bandwidth), L(d.cpu / 1e9)
    mode = L(np.where(r.offloaded, np.where(r.instr_mode, "InstrT", "DataT"), ""))
    delay, energy, cost = L(r.delay), L(r.energy), L(r.cost)
    miss, agent_reward = L(r.deadline_miss.astype(int)), L(r.agent_reward)
    system_cost, system_reward = L(r.system_cost), L(r.reward)
    rows = []
    for e in range(n_envs):
        ep, tail = first_episode + e, (system_cost[e], system_reward[e])
        for i, (a, xe, ye, ln, sp, s_ei, b_ei, c_ei, m_ei, dl, en, co, mi, ar) in enumerate(zip(
                active[e], x[e], y[e], lane[e], speed[e], split[e], bw[e], cpu[e], mode[e], delay[e], energy[e],
                cost[e], miss[e], agent_reward[e])):
            row = [ep, slot, i, a, round(xe, 3), round(ye, 3), ln, round(sp, 3), round(s_ei[0], 5)]
            for sk, bk, ck, mk in zip(s_ei[1:], b_ei, c_ei, m_ei):
                row += (round(sk, 5), round(bk, 5), round(ck, 5), mk)
            row += (dl, en, co, mi, ar)
            row += tail
            rows.append(row)
    return rows


MAX_SEED = 2**32 - 1  # episode seeds (numpy's legacy range, SUMO's --seed) stay within [0, MAX_SEED]


def check_episode_count(episodes: int, first_seed: int, seed_name: str, note: str = "") -> None:
    """One CosimError when episodes first_seed .. first_seed + episodes - 1 leave the seed range."""
    if first_seed + episodes - 1 > MAX_SEED and 0 <= first_seed <= MAX_SEED:
        raise CosimError(f"--episodes {episodes} is too many: episode i is reset with seed {seed_name} + i, at most "
                         f"{MAX_SEED}, so from {seed_name} {first_seed}{note} at most {MAX_SEED - first_seed + 1} "
                         f"episodes fit" + (" (far more than any run finishes)" if episodes > 10**7 else ""))


@dataclass
class RunResult:
    episodes: list[EpisodeRecord] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def run_episodes(sim: BatchCoSim, policy: Any, episodes: int, seed: int = 0, csv_path: str | Path | None = None,
                 on_slot: Callable[[StepOutput, int, int], None] | None = None, progress: bool = True,
                 policy_name: str | None = None) -> RunResult:
    """Run ``episodes`` episodes of ``policy``; episode chunk c is reset with seed + c.

    With E parallel environments episodes run E at a time. ``on_slot(out, episode, slot)``
    is called after every slot (the GUI colours vehicles there).
    """
    E = sim.n_envs
    totals = dict.fromkeys(EpisodeSums.KEYS, 0.0) | {"slots": 0, "active": 0, "covered": 0}
    rsu_load = np.zeros(sim.n_rsus, dtype=np.int64)
    result = RunResult()
    writer = None
    fh = open(csv_path, "w", newline="") if csv_path else None
    if fh is not None:
        writer = csv.writer(fh)
        writer.writerow(slot_columns(sim.n_rsus))
    bar = tqdm(total=episodes * sim.episode_slots, unit="slot", disable=not progress, leave=False,
               desc=policy_name or getattr(policy, "name", "policy"))
    try:
        for chunk in range(math.ceil(episodes / E)):
            obs, _ = sim.reset(seed + chunk)
            if hasattr(policy, "reset"):
                policy.reset()
            acc = EpisodeSums(sim)
            n_here = min(E, episodes - chunk * E)
            done = False
            while not done:
                slot_idx = sim.t
                out = sim.step(_act(policy, obs, sim))
                obs, done = out.obs, out.done
                acc.add(out)
                m = out.mobility  # active CV-slots, and those some RSU covers
                totals["active"] += int(m.active[:n_here].sum())
                hd = M.horizontal_distance(sim.params, m.x, m.y)[:n_here]
                cov = M.coverage(sim.params, hd, m.active[:n_here])
                totals["covered"] += int(cov.any(-1).sum())
                # Each covered CV-slot counts for its nearest covering RSU: how evenly the RSUs are loaded.
                near = np.where(cov, hd, np.inf)
                inside = cov.any(-1)
                rsu_load += np.bincount(near[inside].argmin(-1), minlength=sim.n_rsus)
                if writer is not None:
                    writer.writerows(slot_rows(out, chunk * E, slot_idx, n_here))
                for e in range(n_here):
                    if on_slot is not None:
                        on_slot(out, chunk * E + e, slot_idx)
                bar.update(n_here)
            result.episodes.extend(acc.finish(chunk * E, seed=seed + chunk, n=n_here))
            for e in range(n_here):
                for k in EpisodeSums.KEYS:
                    totals[k] += float(acc.sums[k][e])
                totals["slots"] += acc.slots
    finally:
        bar.close()
        if fh is not None:
            fh.close()
    if totals["tasks"] == 0 and episodes > 0:
        raise CosimError(f"no vehicle became a CV in {episodes} episode(s) of {sim.episode_slots} slots, so there "
                         f"is nothing to offload or report: on a SUMO map check sumo.cv_vtype, the routes "
                         f"(vehicles must depart within the episode) and sumo.warmup_s")
    costs = np.array([s.cost for s in result.episodes])
    result.summary = {
        "mean_cost": _div(totals["cost"], totals["slots"]),
        "mean_reward": _div(totals["reward"], totals["slots"]),
        "mean_delay_s": _div(totals["delay"], totals["tasks"]),
        "mean_energy_j": _div(totals["energy"], totals["tasks"]),
        "instr_share": _div(totals["instr"], totals["parts"]),
        "deadline_miss_rate": _div(totals["misses"], totals["tasks"]),
        "active_share": _div(totals["active"], totals["slots"] * sim.n_cvs),
        "covered_share": _div(totals["covered"], totals["active"]),  # of active CV-slots
        # of covered CV-slots, at the busiest RSU (each counted at its nearest covering RSU); 1/K is even
        "busiest_rsu_share": _div(float(rsu_load.max(initial=0)), float(rsu_load.sum())),
        "cost_ci95": float(ci95(costs)),
        "episodes": episodes, "slots": totals["slots"], "tasks": int(totals["tasks"]),
        "n_cvs": sim.n_cvs, "n_rsus": sim.n_rsus, "backend": sim.backend,
        "policy": policy_name or getattr(policy, "name", "policy"), "seed": seed,
    }
    return result


def _act(policy: Any, obs: np.ndarray, sim: BatchCoSim) -> np.ndarray:
    if hasattr(policy, "act_sim"):  # policies that need the full slot (e.g. the per-slot optimiser)
        return policy.act_sim(sim)
    return policy.act(obs, deterministic=True)


EPISODE_COLUMNS = [("episode", "ep", "{:d}"), ("cost", "cost", "{:.4f}"), ("reward", "reward", "{:.3f}"),
                   ("delay_s", "delay s", "{:.4f}"), ("energy_j", "energy J", "{:.2f}"),
                   ("instr_share", "InstrT", "{:.1%}"), ("deadline_misses", "misses", "{:d}"),
                   ("q_loc_final", "Q_loc", "{:.3f}"), ("q_rsu_final", "Q_rsu", "{:.3f}"),
                   ("energy_queue_final", "Y J", "{:.1f}")]


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """A plain aligned text table: columns are (key, header, format)."""
    cells = [[h for _, h, _ in columns]] + [[f.format(r[k]) for k, _, f in columns] for r in rows]
    widths = [max(len(c[j]) for c in cells) for j in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def episode_table(result: RunResult) -> str:
    return format_table([asdict(s) for s in result.episodes], EPISODE_COLUMNS)


def write_summary(path: str | Path, summary: dict[str, Any], episodes: list[EpisodeRecord] | None = None) -> None:
    data = dict(summary)
    if episodes is not None:
        data["per_episode"] = [asdict(s) for s in episodes]
    Path(path).write_text(strict_json(data))


def strict_json(data: Any) -> str:
    """JSON that every parser reads (json.dumps would write the non-standard NaN/Infinity): a NaN,
    a statistic with nothing to average (e.g. a spread over no offloaded parts), becomes null; an
    infinity, a result that blew up, is a CosimError naming the key."""
    def clean(x: Any, where: str) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            if math.isnan(x):
                return None
            raise CosimError(f"{where} is {x}: refusing to write it to a summary")
        if isinstance(x, dict):
            return {k: clean(v, f"{where}.{k}" if where else str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v, f"{where}[{i}]") for i, v in enumerate(x)]
        return x
    return json.dumps(clean(data, ""), indent=2, allow_nan=False)
