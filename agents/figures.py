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

from cosim.config import load_config, read_json
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
              floor: float | None = None, ls: str = "-") -> None:
    """Mean over seeds with a 95 % band; ``floor`` clips the band of a quantity that cannot go below it."""
    n = min(len(c) for c in curves)
    y = np.stack([smooth(np.asarray(c[:n], dtype=float), window) for c in curves])
    x = np.arange(1, n + 1)
    m = y.mean(0)
    ax.plot(x, m, color=color, lw=1.8, ls=ls, label=f"{name} (n={len(curves)})", zorder=zorder)
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


@dataclass(frozen=True)
class BaseSetting:
    """The setting the paper's Fig. 4, 5 and 7 and Table III hold fixed: the default config's."""

    n_cvs: int
    n_rsus: int
    V: float
    alpha: float

    @classmethod
    def default(cls) -> BaseSetting:
        cfg = load_config()
        return cls(cfg.scenario.n_cvs, cfg.n_rsus, cfg.lyapunov.V, cfg.lyapunov.alpha)


def make_all(root: Path, out: Path | None = None) -> tuple[list[Path], Path]:
    """Every figure and results.md from the runs under ``root``; returns (figures, results.md)."""
    out = out or root
    out.mkdir(parents=True, exist_ok=True)
    all_runs = load_runs(root)
    if not all_runs:
        raise FileNotFoundError(f"no finished runs under {root / 'cells'}: run scripts/reproduce.py first")
    # The paper's figures select by setting; cells only the variant experiments list stay out of them.
    runs = [r for r in all_runs if not _variant_only(r)]
    figures: list[Path] = []
    md: list[str] = ["# Reproduction results", ""]
    manifest = read_json(root / "manifest.json", "manifest") if (root / "manifest.json").is_file() else {}
    if manifest:
        b = manifest["budget"]
        md += [f"Preset `{manifest['preset']}` on the {manifest['backend']} backend: {b['episodes']} training "
               f"episodes per run, {b['seeds']} seed(s), {b['eval_episodes']} evaluation episodes per run "
               "(deterministic policies, seeds never used in training). ± is the 95 % confidence interval over "
               "seeds.", ""]
    s = BaseSetting.default()
    base = select(runs, **{"scenario.n_cvs": s.n_cvs, "lyapunov.V": s.V})
    conv = _learned(base)
    md += _convergence(conv, s, out, figures)
    md += _default_evaluation(base, s)
    md += _queues(base, conv, s, out, figures)
    md += _against_cvs(runs, s, out, figures)
    md += _against_v(runs, s, out, figures)
    for section in (twin_ablation_section, scenarios_section, long_horizon_section, lyapunov_v_long_section):
        md += section(all_runs, manifest, out, figures)
    md += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures] + [""]
    results = out / "results.md"
    results.write_text("\n".join(md))
    return figures, results


def _learned(group: dict[str, list[Run]]) -> dict[str, list[Run]]:
    """The algorithms of ``group`` that have training curves (the learners)."""
    return {a: rs for a, rs in group.items() if rs and rs[0].metrics}


def _window(n: int) -> int:
    return min(STEADY_WINDOW, max(1, n // 3))


def _convergence(conv: dict[str, list[Run]], s: BaseSetting, out: Path, figures: list[Path]) -> list[str]:
    """Fig. 4 and Table III: convergence at the base setting, and Ly-DTMPPO's gain over each baseline."""
    if not conv:
        return []
    plt = _plt()
    where = f"{s.n_cvs} CVs, {s.n_rsus} RSUs, V = {s.V:g}"
    n = min(len(r.metrics["reward"]) for rs in conv.values() for r in rs)
    w = _window(n)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for a in ordered(conv):
        band_plot(ax, [r.metrics["reward"] for r in conv[a]], w, ALGO_COLOR.get(a, None), label(a), ALGO_Z.get(a, 2))
    ax.set_yscale("symlog", linthresh=10)
    finish(fig, ax, "episode", f"mean reward per slot ({w}-episode moving average)",
           f"Fig. 4: convergence, {where}", out / "fig4_convergence.png", figures)
    rows = []
    for a in ordered(conv):
        stats = [table3_row(r.metrics["reward"]) for r in conv[a]]
        rows.append([label(a), fmt_ci([st[0] for st in stats]), fmt_ci([st[1] for st in stats]),
                     fmt_ci([st[2] for st in stats], 0)])
    md = [f"## Table III: convergence stability and speed ({where})", "",
          markdown_table(["algorithm", f"steady reward (last {w} episodes)", "CV", "conv. episode (95 %)"], rows), ""]
    if "ly-dtmppo" in conv:
        gains = {}
        ours = np.mean([table3_row(r.metrics["reward"])[0] for r in conv["ly-dtmppo"]])
        for a in ordered(conv):
            if a != "ly-dtmppo":
                theirs = np.mean([table3_row(r.metrics["reward"])[0] for r in conv[a]])
                gains[a] = (ours - theirs) / abs(theirs) * 100
        md += ["Relative gain of Ly-DTMPPO's steady reward over each baseline (the paper: 25.3 % over "
               "Ly-MADDPG, 43.9 % over Ly-MATD3, 15.9 % over Ly-MASAC, 28.3 % over Ly-MAPPO): "
               + ", ".join(f"{label(a)} {g:+.1f} %" for a, g in gains.items()) + ".", ""]
    return md


def _default_evaluation(base: dict[str, list[Run]], s: BaseSetting) -> list[str]:
    """Evaluation at the base setting, learned and reference policies side by side."""
    if not base:
        return []
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
    return [f"## Evaluation at the default setting ({s.n_cvs} CVs, V = {s.V:g})", "",
            markdown_table(["policy", "system cost", "delay s", "energy J", "InstrT share", "deadline misses",
                            "cost vs optimiser"], rows), ""]


def _queues(base: dict[str, list[Run]], conv: dict[str, list[Run]], s: BaseSetting, out: Path,
            figures: list[Path]) -> list[str]:
    """Fig. 5a: each CV's local queue over an evaluation episode of Ly-DTMPPO (mean over episodes);
    Fig. 5b: the mean local queue of each algorithm, episode by episode while training."""
    plt = _plt()
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
            w = _window(min(len(r.metrics["q_loc_mean"]) for r in withq[a]))
            band_plot(ax, [r.metrics["q_loc_mean"] for r in withq[a]], w, ALGO_COLOR.get(a), label(a), ALGO_Z.get(a, 2),
                      floor=0.0)
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_ylim(bottom=0.0)
        finish(fig, ax, "episode", "mean local queue per CV (W_ref units)",
               f"Fig. 5b: average system queue, {s.n_cvs} CVs, V = {s.V:g}", out / "fig5b_queues_per_algorithm.png",
               figures)
    return []


def _against_cvs(runs: list[Run], s: BaseSetting, out: Path, figures: list[Path]) -> list[str]:
    """Fig. 6a-c: cost, delay, energy against the number of CVs (at the base V)."""
    by_cv: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if r.setting.get("lyapunov.V") == s.V and "scenario.n_cvs" in r.setting:
            by_cv[r.algo][int(r.setting["scenario.n_cvs"])].append(r.record["eval"])
    cv_counts = sorted({n for d in by_cv.values() for n in d})
    if len(cv_counts) < 2:
        return []
    plt = _plt()
    md: list[str] = []
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
        finish(fig, ax, "number of CVs", name + unit, f"Fig. {fname[3:5]}: {name} vs CVs (α = {s.alpha:g}, V = {s.V:g})",
               out / f"{fname}.png", figures, legend_size=8)
        md += [f"## Fig. {fname[3:5]}: {name}{unit} versus the number of CVs", "",
               markdown_table(["policy"] + [f"{n} CVs" for n in cv_counts], rows), ""]
    return md


def _against_v(runs: list[Run], s: BaseSetting, out: Path, figures: list[Path]) -> list[str]:
    """Fig. 7a, 7b: Ly-DTMPPO's cost for several V (at the base number of CVs)."""
    by_v: dict[float, list[Run]] = defaultdict(list)
    for r in runs:
        if r.algo == "ly-dtmppo" and r.setting.get("scenario.n_cvs") == s.n_cvs and "lyapunov.V" in r.setting:
            by_v[float(r.setting["lyapunov.V"])].append(r)
    if len(by_v) < 2:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for j, v in enumerate(sorted(by_v)):
        w = _window(min(len(r.metrics["cost"]) for r in by_v[v]))
        band_plot(ax, [r.metrics["cost"] for r in by_v[v]], w, f"C{j}", f"V = {v:g}")
    ax.set_yscale("log")
    finish(fig, ax, "episode", "system cost per slot while training",
           "Fig. 7a: Ly-DTMPPO's cost while training, by V", out / "fig7a_cost_vs_episode_by_v.png", figures)
    vs = sorted(by_v)
    costs = [[r.record["eval"]["mean_cost"] for r in by_v[v]] for v in vs]
    per_cv = [[r.record["eval"]["mean_cost"] / s.n_cvs for r in by_v[v]] for v in vs]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.errorbar(vs, [np.mean(c) for c in costs], yerr=[float(ci95(np.array(c))) for c in costs], marker="o",
                capsize=3, color="C3", label="Ly-DTMPPO")
    ax.set_xscale("log")
    ax.set_xticks(vs, [f"{v:g}" for v in vs])
    finish(fig, ax, "Lyapunov weight V", "system cost per slot (evaluation)", "Fig. 7b: cost versus V",
           out / "fig7b_cost_vs_v.png", figures)
    return [f"## Fig. 7b: Ly-DTMPPO's cost versus V ({s.n_cvs} CVs)", "",
            markdown_table(["V", "system cost per slot", "per CV", "energy J", "delay s"],
                           [[f"{v:g}", fmt_ci(c, 4), fmt_ci(p, 4),
                             fmt_ci([r.record["eval"]["mean_energy_j"] for r in by_v[v]], 2),
                             fmt_ci([r.record["eval"]["mean_delay_s"] for r in by_v[v]], 3)]
                            for v, c, p in zip(vs, costs, per_cv)]), ""]


# ---------------------------------------------------------------------------
# The variant experiments (twin ablation, scenarios, long horizon): cells selected by the variant names their
# records carry

TWIN_ABLATION, SCENARIOS, LONG_HORIZON = "twin_ablation", "scenarios", "long_horizon"
LYAPUNOV_V_LONG = "lyapunov_v_long"
VARIANT_EXPERIMENTS = (TWIN_ABLATION, SCENARIOS, LONG_HORIZON, LYAPUNOV_V_LONG)


def _variants(r: Run) -> dict[str, dict[str, Any]]:
    return r.record.get("variants") or {}


def _is_long(r: Run) -> bool:
    return "long_horizon" in r.record


def _variant_only(r: Run) -> bool:
    """A cell that belongs to the variant experiments only (or a long-horizon evaluation)."""
    v = _variants(r)
    return _is_long(r) or (bool(v) and set(v) <= set(VARIANT_EXPERIMENTS))


def members(runs: list[Run], exp: str, long: bool = False) -> list[Run]:
    """Runs an experiment lists (its long-horizon evaluations with ``long``, else its usual ones)."""
    return [r for r in runs if exp in _variants(r) and _is_long(r) == long]


def variant_order(manifest: dict[str, Any], exp: str, axis: str, runs: list[Run]) -> list[Any]:
    """An axis's variants in the experiment file's order (manifest.json), else as first met; only those
    with runs."""
    present = [_variants(r)[exp].get(axis) for r in runs]
    order: list[Any] = []
    for e in manifest.get("experiments", []):
        if e.get("name") == exp and axis in (e.get("sweep") or {}):
            order = list(e["sweep"][axis])
    order = [v for v in order if v in present]
    return order + [v for v in dict.fromkeys(present) if v not in order]


def by_variant(runs: list[Run], exp: str, **labels: Any) -> dict[str, list[Run]]:
    """Runs with these variant names, grouped by algorithm (the variant-name twin of :func:`select`)."""
    out: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        v = _variants(r).get(exp, {})
        if all(v.get(k) == x for k, x in labels.items()):
            out[r.algo].append(r)
    return out


def _costs(rs: list[Run]) -> dict[int, float]:
    return {int(r.record["seed"]): float(r.record["eval"]["mean_cost"]) for r in rs}


def paired_pct(a: dict[int, float], b: dict[int, float]) -> list[float]:
    """Per training seed, how much higher ``a``'s cost is than ``b``'s, %: seeds share the evaluation
    episodes, so the pairs remove what the episodes have in common."""
    return [(a[s] / b[s] - 1.0) * 100.0 for s in sorted(a) if s in b and b[s]]


def fmt_pct(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return "—"
    return f"{v.mean():+.1f} ± {float(ci95(v)):.1f} %" if v.size > 1 else f"{v.mean():+.1f} %"


def _ci(values: list[float]) -> float:
    return float(ci95(np.asarray(values, dtype=float))) if len(values) > 1 else 0.0


def twin_ablation_section(runs: list[Run], manifest: dict[str, Any], out: Path, figures: list[Path]) -> list[str]:
    """What the twin is worth, block by block: bars per twin variant and scenario, the no-twin level marked."""
    rs = members(runs, TWIN_ABLATION)
    if not rs:
        return []
    plt = _plt()
    scenarios = variant_order(manifest, TWIN_ABLATION, "scenario", rs) or [None]
    twins = variant_order(manifest, TWIN_ABLATION, "twin", rs)
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.2 + 3.3 * len(scenarios), 4.5), squeeze=False)
    rows = []
    for ax, sc in zip(axes[0], scenarios):
        here = [r for r in rs if sc is None or _variants(r)[TWIN_ABLATION].get("scenario") == sc]
        groups = {t: [r for r in here if _variants(r)[TWIN_ABLATION].get("twin") == t] for t in twins}
        groups = {t: g for t, g in groups.items() if g}
        # The reference variants, found from what their cells ran, not from their names.
        none = next((t for t, g in groups.items() if all(r.algo == "ly-mappo" for r in g)), None)
        glob = next((t for t, g in groups.items() if all(r.algo != "ly-mappo"
                                                             and r.setting.get("twin.view") == "global"
                                                             and not r.setting.get("twin.hide") for r in g)), None)
        names = list(groups)
        means = [np.mean(list(_costs(groups[t]).values())) for t in names]
        errs = [_ci(list(_costs(groups[t]).values())) for t in names]
        colors = ["C7" if t == none else "C0" if t == glob else "C3" for t in names]
        ax.bar(range(len(names)), means, yerr=errs, capsize=3, color=colors)
        if none is not None:
            ax.axhline(np.mean(list(_costs(groups[none]).values())), color="k", ls="--", lw=1,
                       label=f"no twin ({none})")
            ax.legend(fontsize=8)
        ax.set_xticks(range(len(names)), [str(t) for t in names], rotation=30, ha="right")
        lo, hi = min(m - e for m, e in zip(means, errs)), max(m + e for m, e in zip(means, errs))
        ax.set_ylim(max(0.0, lo - 0.15 * (hi - lo + 1e-9)), hi + 0.1 * (hi - lo + 1e-9))
        ax.set_ylabel("system cost per slot (evaluation)")
        ax.set_title(f"scenario: {sc}" if sc is not None else "twin ablation")
        ax.grid(alpha=0.3, axis="y")
        for t in names:
            c, ev = _costs(groups[t]), [r.record["eval"] for r in groups[t]]
            rows.append([str(sc), str(t), label(groups[t][0].algo), fmt_ci(list(c.values()), 4),
                         fmt_pct(paired_pct(c, _costs(groups[none]))) if none is not None and t != none else "",
                         fmt_pct(paired_pct(c, _costs(groups[glob]))) if glob is not None and t not in (glob, none)
                         else "", fmt_ci([e["mean_delay_s"] for e in ev]),
                         fmt_ci([e["deadline_miss_rate"] for e in ev])])
    fig.suptitle("Twin ablation: cost of each twin variant (95 % CI over seeds)")
    figures.append(save(fig, out / "fig_twin_ablation.png"))
    return ["## Twin ablation: what the digital twin is worth, block by block", "",
            "Each variant trains Ly-DTMPPO with the actions of the experiment file; the no-twin variant is Ly-MAPPO "
            "trained the same way. \"vs no twin\": the twin's worth, cost change against no twin (negative: the "
            "twin helps); \"vs global view\": a hidden block's effect, cost change against the whole global view "
            "(positive: the block helps). Both paired by training seed, mean ± 95 % CI.", "",
            markdown_table(["scenario", "twin", "trained as", "system cost", "vs no twin", "vs global view",
                            "delay s", "deadline misses"], rows), ""]


def scenarios_section(runs: list[Run], manifest: dict[str, Any], out: Path, figures: list[Path]) -> list[str]:
    """Every policy per scenario and action option: tables, grouped bars, and the RSU backlog over an episode."""
    rs = members(runs, SCENARIOS)
    if not rs:
        return []
    plt = _plt()
    scenarios = variant_order(manifest, SCENARIOS, "scenario", rs) or [None]
    actions = variant_order(manifest, SCENARIOS, "actions", rs) or [None]
    md = ["## Scenarios: every policy on the default road and the presets", "",
          "Per scenario and action option (`actions` variants of the experiment file); the gap is to the per-slot "
          "optimiser of the same scenario (paper's actions).", ""]
    fig, axes = plt.subplots(1, len(scenarios), figsize=(2 + 4.5 * len(scenarios), 4.8), squeeze=False)
    qfig, qaxes = plt.subplots(1, len(scenarios), figsize=(2 + 4.5 * len(scenarios), 4.2), squeeze=False)
    styles = ["-", "--", ":", "-."]
    width = 0.8 / len(actions)
    any_queue = False
    for ax, qax, sc in zip(axes[0], qaxes[0], scenarios):
        here = by_variant(rs, SCENARIOS, **({} if sc is None else {"scenario": sc}))
        algos = ordered(here)
        opt = [r.record["eval"]["mean_cost"] for r in here.get("dpp-opt", [])]
        rows = []
        for j, act in enumerate(actions):
            xs, means, errs = [], [], []
            for i, a in enumerate(algos):
                g = [r for r in here[a] if act is None or _variants(r)[SCENARIOS].get("actions") == act]
                if not g:
                    continue
                ev = [r.record["eval"] for r in g]
                cost = [e["mean_cost"] for e in ev]
                xs.append(i + (j - (len(actions) - 1) / 2) * width)
                means.append(np.mean(cost))
                errs.append(_ci(cost))
                gap = f"{(np.mean(cost) / np.mean(opt) - 1) * 100:+.1f} %" if opt and a != "dpp-opt" else ""
                rows.append((i, j, [label(a), str(act), fmt_ci(cost, 4), fmt_ci([e["mean_delay_s"] for e in ev]),
                                    fmt_ci([e["mean_energy_j"] for e in ev], 2),
                                    fmt_ci([e["deadline_miss_rate"] for e in ev]), gap]))
                traj = [np.asarray(r.record["rsu_queue_trajectory"]).sum(1) for r in g
                        if r.record.get("rsu_queue_trajectory")]
                if traj:
                    any_queue = True
                    band_plot(qax, traj, 1, ALGO_COLOR.get(a), f"{label(a)}, {act}", ALGO_Z.get(a, 2),
                              floor=0.0, ls=styles[j % len(styles)])
            if xs:
                ax.bar(xs, means, width=width, yerr=errs, capsize=2, label=f"actions: {act}",
                       color=f"C{j}", alpha=0.85)
        ax.set_xticks(range(len(algos)), [label(a) for a in algos], rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("system cost per slot (evaluation)")
        ax.set_title(f"scenario: {sc}")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
        qax.set_xlabel("slot of an evaluation episode")
        qax.set_ylabel("RSU backlog, sum over RSUs (W_ref units)")
        qax.set_title(f"scenario: {sc}")
        qax.set_ylim(bottom=0.0, top=max([1.0] + [float(np.max(ln.get_ydata())) * 1.05 for ln in qax.lines]))
        qax.grid(alpha=0.3)
        if qax.lines and qax is qaxes[0][0]:  # one legend: every panel has the same policies
            qax.legend(fontsize=6)
        md += [f"### Scenario: {sc}", "",
               markdown_table(["policy", "actions", "system cost", "delay s", "energy J", "deadline misses",
                               "vs optimiser"], [r for _, _, r in sorted(rows, key=lambda t: t[:2])]), ""]
    fig.suptitle("Scenarios: system cost per policy and action option (95 % CI over seeds)")
    figures.append(save(fig, out / "fig_scenarios.png"))
    if any_queue:
        qfig.suptitle("RSU backlog over an evaluation episode (mean over episodes and seeds)")
        figures.append(save(qfig, out / "fig_scenarios_queues.png"))
    else:
        plt.close(qfig)
    return md


def long_horizon_section(runs: list[Run], manifest: dict[str, Any], out: Path, figures: list[Path]) -> list[str]:
    """Energy against the budget and the energy queue Y over long episodes."""
    rs = members(runs, LONG_HORIZON, long=True)
    if not rs:
        return []
    plt = _plt()
    axes_names = sorted({a for r in rs for a in _variants(r)[LONG_HORIZON]})
    orders = {a: variant_order(manifest, LONG_HORIZON, a, rs) for a in axes_names}
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in rs:
        v = _variants(r)[LONG_HORIZON]
        key = (r.algo, *(v.get(a) for a in axes_names))
        groups[key].append(r)
    algo_rank = {a: i for i, a in enumerate(ordered({g[0] for g in groups}))}
    keys = sorted(groups, key=lambda g: (algo_rank[g[0]], *(orders[a].index(x) if x in orders[a] else 99
                                                             for a, x in zip(axes_names, g[1:]))))
    by_key = {r.record["key"]: r for r in runs}
    slots = int(rs[0].record["long_horizon"]["slots"])
    budget = float(rs[0].record["long_horizon"]["energy_budget_j"])
    window = max(1, slots // 20)
    fig, (ax_e, ax_y) = plt.subplots(1, 2, figsize=(13, 4.8))
    styles = ["-", "--", ":", "-."]
    rows = []
    for g in keys:
        lh = [r.record["long_horizon"] for r in groups[g]]
        name = ", ".join([label(g[0])] + [str(x) for x in g[1:] if x is not None])
        style = styles[sum(orders[a].index(x) if x in orders[a] else 0 for a, x in zip(axes_names, g[1:]))
                       % len(styles)]
        color = ALGO_COLOR.get(g[0])
        if all(x.get("energy_trace_j") for x in lh):
            band_plot(ax_e, [x["energy_trace_j"] for x in lh], window, color, name, ALGO_Z.get(g[0], 2), ls=style)
        band_plot(ax_y, [x["y_trace_j"] for x in lh], 1, color, name, ALGO_Z.get(g[0], 2), floor=0.0, ls=style)
        short = []  # the same policy's cost on the usual episodes (its training cell's evaluation)
        for r in groups[g]:
            base = by_key.get(r.record.get("trained_in") or r.record["key"].replace(f"__slots={slots}", ""))
            if base is not None:
                short.append(base.record["eval"]["mean_cost"])
        rows.append([label(g[0]), *[str(x) for x in g[1:]], fmt_ci([x["energy_last_half_j"] for x in lh], 2),
                     fmt_pct([x["energy_vs_budget"] * 100 for x in lh]), fmt_ci([x["y_final_j"] for x in lh], 0),
                     fmt_ci([x["y_growth_j_per_slot"] for x in lh], 2), fmt_ci([x["cost_last_half"] for x in lh], 4),
                     fmt_ci([x["cost_all"] for x in lh], 4), fmt_ci(short, 4)])
    ax_e.axhline(budget, color="k", ls="--", lw=1, label=f"budget E_max/I = {budget:g} J")
    for ax, ylabel, title in ((ax_e, f"energy per CV per slot, J ({window}-slot moving average)",
                               "energy against the budget"),
                              (ax_y, "energy queue Y per CV after the slot, J", "energy queue")):
        ax.set_xlabel("slot")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Long horizon: {slots}-slot episodes (mean over episodes; 95 % CI over seeds)")
    figures.append(save(fig, out / "fig_long_horizon.png"))
    h = slots // 2
    return [f"## Long horizon: {slots}-slot episodes", "",
            f"Energy per active CV per slot over slots {h}–{slots} against the budget E_max/I = {budget:g} J, the "
            f"energy queue Y at the end and its growth per slot over slots {h}–{slots} (least squares; 0: stable), "
            f"the cost over the last half and the whole episode, and the same policy's cost on the usual episodes "
            f"(the training cell's evaluation).", "",
            markdown_table(["policy", *axes_names, f"energy J, slots {h}–{slots}", "vs budget", f"Y at {slots} J",
                            "Y growth J/slot", "cost, last half", "cost, all", "cost, usual episodes"], rows), ""]


def v_tradeoff_figure(rows: list[dict[str, Any]], budget: float, path: Path) -> Path:
    """Cost over the second half, Y at the end and the energy against the budget, each against V (log),
    one line per policy; circled: Y not levelled. ``rows``: dicts with policy, V, cost_last_half,
    y_final_j, energy_vs_budget, y_levelled (scripts/v_sweep.py and the lyapunov_v_long experiment)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for pol in dict.fromkeys(r["policy"] for r in rows):
        rs = sorted((r for r in rows if r["policy"] == pol), key=lambda r: r["V"])
        vs = [r["V"] for r in rs]
        axes[0].plot(vs, [r["cost_last_half"] for r in rs], "o-", label=pol)
        axes[1].plot(vs, [r["y_final_j"] for r in rs], "o-", label=pol)
        axes[2].plot(vs, [100 * r["energy_vs_budget"] for r in rs], "o-", label=pol)
        for ax, key in ((axes[0], "cost_last_half"), (axes[1], "y_final_j")):
            ax.scatter([r["V"] for r in rs if not r["y_levelled"]], [r[key] for r in rs if not r["y_levelled"]],
                       s=90, facecolors="none", edgecolors="k", zorder=3)
    axes[2].axhline(0.0, color="k", lw=0.8, ls="--")
    axes[0].set_ylabel("system cost per slot, second half")
    axes[1].set_ylabel("energy queue Y per CV at the end, J")
    axes[1].set_yscale("log")
    axes[2].set_ylabel(f"energy per CV vs budget ({budget:g} J), second half, %")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("V")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title("circled: Y not levelled", fontsize=9)
    return save(fig, path)


def lyapunov_v_long_section(runs: list[Run], manifest: dict[str, Any], out: Path, figures: list[Path]) -> list[str]:
    """The V trade-off over long episodes: per policy and V, means over the seeds' long evaluations."""
    rs = members(runs, LYAPUNOV_V_LONG, long=True)
    if not rs:
        return []
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in rs:
        groups[(r.algo, float(r.setting["lyapunov.V"]))].append(r.record["long_horizon"])
    slots = int(rs[0].record["long_horizon"]["slots"])
    budget = float(rs[0].record["long_horizon"]["energy_budget_j"])
    rank = {a: i for i, a in enumerate(ordered({a for a, _ in groups}))}
    rows, fig_rows = [], []
    for algo, V in sorted(groups, key=lambda g: (rank[g[0]], g[1])):
        lh = groups[(algo, V)]
        mean = lambda k, lh=lh: float(np.mean([x[k] for x in lh]))  # noqa: E731
        fig_rows.append({"policy": label(algo), "V": V, "cost_last_half": mean("cost_last_half"),
                         "y_final_j": mean("y_final_j"), "energy_vs_budget": mean("energy_vs_budget"),
                         "y_levelled": all(x["y_levelled"] for x in lh)})
        rows.append([label(algo), f"{V:g}", fmt_ci([x["cost_last_half"] for x in lh], 4),
                     fmt_ci([x["energy_last_half_j"] for x in lh], 2), fmt_pct([x["energy_vs_budget"] * 100 for x in lh]),
                     fmt_ci([x["y_final_j"] for x in lh], 0), f"{sum(x['y_levelled'] for x in lh)}/{len(lh)}"])
    figures.append(v_tradeoff_figure(fig_rows, budget, out / "fig_v_tradeoff.png"))
    h = slots // 2
    return [f"## The V trade-off: {slots}-slot episodes", "",
            f"Per policy and V (mean ± 95 % CI over seeds): the cost over slots {h}–{slots}, the energy per CV there "
            f"against the budget {budget:g} J (the constraint's violation), Y at the end, and in how many seeds Y has "
            f"levelled off (cosim.evaluation.LEVELLED_SHARE). Figure: fig_v_tradeoff.png.", "",
            markdown_table(["policy", "V", f"cost, slots {h}–{slots}", "energy J", "vs budget", f"Y at {slots} J",
                            "Y levelled"], rows), ""]
