"""The paper's figures and tables from a finished (or partial) experiment grid.

Curves are the mean over seeds with a 95 % confidence band (Student t), after
smoothing each seed's curve with a trailing moving average of 50 episodes as
the paper does (shorter for short runs). Table III's definitions:

* steady reward: mean reward per slot over the last 50 episodes;
* CV (coefficient of variation): std / |mean| of the reward over those episodes;
* convergence episode: the first episode at which the smoothed reward has covered
  95 % of the way from its first value to the steady reward (the paper's "first
  episode achieving 95 % of the steady reward", made well defined for negative
  rewards).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cosim.config import read_json
from cosim.stats import ci95, smooth

from .experiments import DONE_FILE

ALGO_ORDER = ["ly-dtmppo", "ly-mappo", "ly-maddpg", "ly-matd3", "ly-masac"]
REFERENCE_ORDER = ["dpp-opt", "equal", "nearest", "local", "random"]
ALGO_LABEL = {"ly-dtmppo": "Ly-DTMPPO", "ly-mappo": "Ly-MAPPO", "ly-maddpg": "Ly-MADDPG", "ly-matd3": "Ly-MATD3",
              "ly-masac": "Ly-MASAC", "dpp-opt": "per-slot optimiser", "equal": "equal split",
              "nearest": "nearest RSU", "local": "all local", "random": "random"}
ALGO_COLOR = {"ly-dtmppo": "C3", "ly-mappo": "C0", "ly-maddpg": "C2", "ly-matd3": "C1", "ly-masac": "C4",
              "dpp-opt": "k", "equal": "C7", "nearest": "C5", "local": "C8", "random": "C9"}
ALGO_Z = {"ly-dtmppo": 5}  # ours on top: Ly-MAPPO's curve often lies right under it
STEADY_WINDOW = 50


def label(algo: str) -> str:
    return ALGO_LABEL.get(algo, algo)


def read_csv_columns(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


@dataclass
class Run:
    """One finished cell: its record (done.json) and its training curves."""

    record: dict[str, Any]
    metrics: dict[str, np.ndarray]

    @property
    def algo(self) -> str:
        return self.record["algo"]

    @property
    def setting(self) -> dict[str, Any]:
        return self.record["setting"]


def load_runs(root: Path) -> list[Run]:
    runs = []
    for done in sorted((root / "cells").glob(f"*/{DONE_FILE}")):
        rec = read_json(done, "cell record")
        d = done.parent
        metrics = read_csv_columns(d / "metrics.csv") if (d / "metrics.csv").is_file() else {}
        runs.append(Run(rec, metrics))
    return runs


def select(runs: list[Run], **setting: Any) -> dict[str, list[Run]]:
    """Runs whose setting has these values, grouped by algorithm."""
    out: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        if all(r.setting.get(k) == v for k, v in setting.items()):
            out[r.algo].append(r)
    return out


def ordered(algos: Any) -> list[str]:
    known = [a for a in ALGO_ORDER + REFERENCE_ORDER if a in algos]
    return known + sorted(a for a in algos if a not in known)


# ---------------------------------------------------------------------------
# Tables

def table3_row(rewards: np.ndarray) -> tuple[float, float, int]:
    """(steady reward, coefficient of variation, convergence episode) of one reward curve."""
    w = min(STEADY_WINDOW, max(1, len(rewards) // 3))
    tail = rewards[-w:]
    steady = float(tail.mean())
    cv = float(tail.std() / abs(steady)) if steady else float("nan")
    s = smooth(rewards, w)
    target = s[0] + 0.95 * (steady - s[0])
    reached = np.flatnonzero(s >= target) if steady >= s[0] else np.flatnonzero(s <= target)
    return steady, cv, int(reached[0]) + 1 if reached.size else len(rewards)


def fmt_ci(values: list[float], digits: int = 3) -> str:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return "—"
    return f"{v.mean():.{digits}f} ± {float(ci95(v)):.{digits}f}" if v.size > 1 else f"{v.mean():.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Figures

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def band_plot(ax, curves: list[np.ndarray], window: int, color: str, name: str, zorder: float = 2,
              floor: float | None = None) -> None:
    """Mean over seeds with a 95 % band; ``floor`` clips the band of a quantity that cannot go below it."""
    n = min(len(c) for c in curves)
    y = np.stack([smooth(c[:n], window) for c in curves])
    x = np.arange(1, n + 1)
    m = y.mean(0)
    ax.plot(x, m, color=color, lw=1.8, label=f"{name} (n={len(curves)})", zorder=zorder)
    if len(curves) > 1:
        h = ci95(y)
        lo = m - h if floor is None else np.maximum(m - h, floor)
        ax.fill_between(x, lo, m + h, color=color, alpha=0.2, lw=0, zorder=zorder - 1)


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return path


def finish(fig, ax, xlabel: str, ylabel: str, title: str, path: Path, figures: list[Path],
           legend_size: float | None = None) -> None:
    """Labels, grid and legend, then save into ``path`` and record it in ``figures``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    figures.append(save(fig, path))


def make_all(root: Path, out: Path | None = None) -> tuple[list[Path], Path]:
    """Every figure and results.md from the runs under ``root``; returns (figures, results.md)."""
    plt = _plt()
    out = out or root
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(root)
    if not runs:
        raise FileNotFoundError(f"no finished runs under {root / 'cells'}: run scripts/reproduce.py first")
    figures: list[Path] = []
    md: list[str] = ["# Reproduction results", ""]
    manifest = read_json(root / "manifest.json", "manifest") if (root / "manifest.json").is_file() else {}
    if manifest:
        b = manifest["budget"]
        md += [f"Preset `{manifest['preset']}` on the {manifest['backend']} backend: {b['episodes']} training "
               f"episodes per run, {b['seeds']} seed(s), {b['eval_episodes']} evaluation episodes per run "
               "(deterministic policies, seeds never used in training). ± is the 95 % confidence interval over "
               "seeds.", ""]
    learned = lambda group: {a: rs for a, rs in group.items() if rs and rs[0].metrics}  # noqa: E731

    # Fig. 4 and Table III: convergence at 5 CVs, V = 5.
    base = select(runs, **{"scenario.n_cvs": 5, "lyapunov.V": 5})
    conv = learned(base)
    if conv:
        n = min(len(r.metrics["reward"]) for rs in conv.values() for r in rs)
        w = min(STEADY_WINDOW, max(1, n // 3))
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for a in ordered(conv):
            band_plot(ax, [r.metrics["reward"] for r in conv[a]], w, ALGO_COLOR.get(a, None), label(a), ALGO_Z.get(a, 2))
        ax.set_yscale("symlog", linthresh=10)
        finish(fig, ax, "episode", f"mean reward per slot ({w}-episode moving average)",
               "Fig. 4: convergence, 5 CVs, 3 RSUs, V = 5", out / "fig4_convergence.png", figures)
        rows = []
        for a in ordered(conv):
            stats = [table3_row(r.metrics["reward"]) for r in conv[a]]
            rows.append([label(a), fmt_ci([s[0] for s in stats]), fmt_ci([s[1] for s in stats]),
                         fmt_ci([s[2] for s in stats], 0)])
        md += ["## Table III: convergence stability and speed (5 CVs, 3 RSUs, V = 5)", "",
               markdown_table(["algorithm", f"steady reward (last {w} episodes)", "CV", "conv. episode (95 %)"],
                              rows), ""]
        gains = {}
        if "ly-dtmppo" in conv:
            ours = np.mean([table3_row(r.metrics["reward"])[0] for r in conv["ly-dtmppo"]])
            for a in ordered(conv):
                if a != "ly-dtmppo":
                    theirs = np.mean([table3_row(r.metrics["reward"])[0] for r in conv[a]])
                    gains[a] = (ours - theirs) / abs(theirs) * 100
            md += ["Relative gain of Ly-DTMPPO's steady reward over each baseline (the paper: 25.3 % over "
                   "Ly-MADDPG, 43.9 % over Ly-MATD3, 15.9 % over Ly-MASAC, 28.3 % over Ly-MAPPO): "
                   + ", ".join(f"{label(a)} {g:+.1f} %" for a, g in gains.items()) + ".", ""]

    # Evaluation at the default setting, learned and reference policies side by side.
    if base:
        rows = []
        opt = [r.record["eval"]["mean_cost"] for r in base.get("dpp-opt", [])]
        for a in ordered(base):
            ev = [r.record["eval"] for r in base[a]]
            gap = ""
            if opt and a != "dpp-opt":
                gap = f"{(np.mean([e['mean_cost'] for e in ev]) / np.mean(opt) - 1) * 100:+.1f} %"
            rows.append([label(a), fmt_ci([e["mean_cost"] for e in ev], 4), fmt_ci([e["mean_delay_s"] for e in ev]),
                         fmt_ci([e["mean_energy_j"] for e in ev], 2), fmt_ci([e["instr_share"] for e in ev]),
                         fmt_ci([e["deadline_miss_rate"] for e in ev]), gap])
        md += ["## Evaluation at the default setting (5 CVs, V = 5)", "",
               markdown_table(["policy", "system cost", "delay s", "energy J", "InstrT share", "deadline misses",
                               "cost vs optimiser"], rows), ""]

    # Fig. 5a: each CV's local queue over an evaluation episode of Ly-DTMPPO (mean over episodes);
    # Fig. 5b: the mean local queue of each algorithm, episode by episode while training.
    dt = [r for r in base.get("ly-dtmppo", []) if r.record.get("queue_trajectory")]
    if dt:
        traj = np.array([r.record["queue_trajectory"] for r in dt])  # (seeds, slots, CVs)
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for j in range(traj.shape[2]):
            band_plot(ax, list(traj[:, :, j]), 1, f"C{j}", f"CV{j + 1}", floor=0.0)
        finish(fig, ax, "slot of an evaluation episode", "local queue after the slot (W_ref units)",
               "Fig. 5a: task queue of each CV, Ly-DTMPPO", out / "fig5a_queues_per_cv.png", figures)
    withq = {a: rs for a, rs in conv.items() if "q_loc_mean" in rs[0].metrics}
    if withq:
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for a in ordered(withq):
            n = min(len(r.metrics["q_loc_mean"]) for r in withq[a])
            w = min(STEADY_WINDOW, max(1, n // 3))
            band_plot(ax, [r.metrics["q_loc_mean"] for r in withq[a]], w, ALGO_COLOR.get(a), label(a), ALGO_Z.get(a, 2),
                      floor=0.0)
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_ylim(bottom=0.0)
        finish(fig, ax, "episode", "mean local queue per CV (W_ref units)",
               "Fig. 5b: average system queue, 5 CVs, V = 5", out / "fig5b_queues_per_algorithm.png", figures)

    # Fig. 6a-c: cost, delay, energy against the number of CVs (V = 5).
    by_cv: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if r.setting.get("lyapunov.V") == 5 and "scenario.n_cvs" in r.setting:
            by_cv[r.algo][int(r.setting["scenario.n_cvs"])].append(r.record["eval"])
    cv_counts = sorted({n for d in by_cv.values() for n in d})
    if len(cv_counts) > 1:
        for key, name, fname, unit in (("mean_cost", "system cost per slot", "fig6a_cost_vs_cvs", ""),
                                       ("mean_delay_s", "average delay", "fig6b_delay_vs_cvs", " s"),
                                       ("mean_energy_j", "average energy", "fig6c_energy_vs_cvs", " J")):
            fig, ax = plt.subplots(figsize=(7, 4.5))
            rows = []
            for a in ordered(by_cv):
                xs = [n for n in cv_counts if by_cv[a].get(n)]
                vals = [[e[key] for e in by_cv[a][n]] for n in xs]
                ax.errorbar(xs, [np.mean(v) for v in vals], yerr=[float(ci95(np.array(v))) for v in vals],
                            marker="o", capsize=3, color=ALGO_COLOR.get(a), label=label(a))
                rows.append([label(a)] + [fmt_ci([e[key] for e in by_cv[a].get(n, [])], 3) for n in cv_counts])
            ax.set_xticks(cv_counts)
            if key != "mean_delay_s":
                ax.set_yscale("log")
            finish(fig, ax, "number of CVs", name + unit, f"Fig. {fname[3:5]}: {name} vs CVs (α = 0.6, V = 5)",
                   out / f"{fname}.png", figures, legend_size=8)
            md += [f"## Fig. {fname[3:5]}: {name}{unit} versus the number of CVs", "",
                   markdown_table(["policy"] + [f"{n} CVs" for n in cv_counts], rows), ""]

    # Fig. 7a, 7b: Ly-DTMPPO's cost for several V.
    by_v: dict[float, list[Run]] = defaultdict(list)
    for r in runs:
        if r.algo == "ly-dtmppo" and r.setting.get("scenario.n_cvs") == 5 and "lyapunov.V" in r.setting:
            by_v[float(r.setting["lyapunov.V"])].append(r)
    if len(by_v) > 1:
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for j, v in enumerate(sorted(by_v)):
            n = min(len(r.metrics["cost"]) for r in by_v[v])
            w = min(STEADY_WINDOW, max(1, n // 3))
            band_plot(ax, [r.metrics["cost"] for r in by_v[v]], w, f"C{j}", f"V = {v:g}")
        ax.set_yscale("log")
        finish(fig, ax, "episode", "system cost per slot while training",
               "Fig. 7a: Ly-DTMPPO's cost while training, by V", out / "fig7a_cost_vs_episode_by_v.png", figures)
        vs = sorted(by_v)
        costs = [[r.record["eval"]["mean_cost"] for r in by_v[v]] for v in vs]
        per_cv = [[r.record["eval"]["mean_cost"] / 5 for r in by_v[v]] for v in vs]
        fig, ax = plt.subplots(figsize=(6, 4.2))
        ax.errorbar(vs, [np.mean(c) for c in costs], yerr=[float(ci95(np.array(c))) for c in costs], marker="o",
                    capsize=3, color="C3", label="Ly-DTMPPO")
        ax.set_xscale("log")
        ax.set_xticks(vs, [f"{v:g}" for v in vs])
        finish(fig, ax, "Lyapunov weight V", "system cost per slot (evaluation)", "Fig. 7b: cost versus V",
               out / "fig7b_cost_vs_v.png", figures)
        md += ["## Fig. 7b: Ly-DTMPPO's cost versus V (5 CVs)", "",
               markdown_table(["V", "system cost per slot", "per CV", "energy J", "delay s"],
                              [[f"{v:g}", fmt_ci(c, 4), fmt_ci(p, 4),
                                fmt_ci([r.record["eval"]["mean_energy_j"] for r in by_v[v]], 2),
                                fmt_ci([r.record["eval"]["mean_delay_s"] for r in by_v[v]], 3)]
                               for v, c, p in zip(vs, costs, per_cv)]), ""]

    md += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures] + [""]
    results = out / "results.md"
    results.write_text("\n".join(md))
    return figures, results
