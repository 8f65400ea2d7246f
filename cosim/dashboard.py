"""A live dashboard of how the system is doing, slot by slot, and the recording of a run.

:class:`Dashboard` draws one matplotlib figure per slot: the system cost and reward over the
episode, each CV's delay and energy, each CV's split across local and the RSUs (stacked bars
in sumo-gui's colours, with the legend of those colours), the RSU backlogs and the energy
queues Y over the episode, and the twin's view (the backlogs the actors see against the true
ones, and how far off the twin's one-slot distance forecast was). It shows the figure in a
window (``show=True``, needs a display: a real one or Xvfb) and/or saves it as
``dash_00000.png``, ... (``record_dir``); without a window it draws with matplotlib's Agg
canvas and never touches pyplot, so a headless run stays headless.

:func:`write_animation` pairs those frames with sumo-gui's (``slot_00000.png``, ...) into one
GIF (imageio); ``python -m cosim.dashboard DIR`` rebuilds it, ``--still N PNG`` writes frame N
alone (the README's picture).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np

from .config import CosimError
from .palette import INACTIVE_COLOR, LOCAL_COLOR, pale, rsu_hue

DASH_PREFIX, SUMO_PREFIX = "dash_", "slot_"
ANIMATION_NAME = "cosim.gif"
# 1190 x 560 px: as wide as sumo-gui's default view, so that the two stack into one 3:2 frame
FIG_SIZE_IN, FIG_DPI = (11.9, 5.6), 100
ANIMATION_MAX_WIDTH = 1190               # px; wider combined frames are scaled down


# The RSU hues (and local's and inactive's greys) mean where a task goes, here as in sumo-gui; what is not
# an RSU is drawn in black and brown, which no RSU has, and told apart by line style, fill and hatching.
NEUTRAL, BROWN = "black", "#8c564b"
NOTE_STYLE = dict(ha="center", va="center", fontsize=8, color="0.35", wrap=True)


def _rgb(c: tuple[int, ...]) -> tuple[float, float, float]:
    return (c[0] / 255.0, c[1] / 255.0, c[2] / 255.0)


class Dashboard:
    """One figure, redrawn after every slot from the slot's ``StepOutput`` and the simulator.

    Environment 0 of the simulator is shown. Time series restart with each episode. ``window_pos``
    places the window's top left corner on the screen, px.
    """

    def __init__(self, sim: Any, show: bool = True, record_dir: str | Path | None = None, title: str = "",
                 window_pos: tuple[int, int] | None = None):
        self.n_cvs, self.n_rsus = sim.n_cvs, sim.n_rsus
        self.slots = sim.episode_slots
        self.W_ref = sim.params.W_ref
        self.rsu_radius = sim.params.rsu_radius
        self.obs_layout = sim.layout
        twin_cfg = sim.cfg.twin
        self.twin_on = bool(twin_cfg.enabled)
        self.twin_note = (f"staleness {twin_cfg.staleness}, sync error {twin_cfg.sync_error:g}"
                          if self.twin_on else "twin off: the actors see zeros in its place")
        self.title = title
        self.record_dir = Path(record_dir) if record_dir is not None else None
        if self.record_dir is not None:
            self.record_dir.mkdir(parents=True, exist_ok=True)
        self.show = show
        self.frame = 0
        self._episode: int | None = None
        self._prev_pred: np.ndarray | None = None
        if show:
            if not os.environ.get("DISPLAY"):
                raise CosimError("the dashboard window needs a display but DISPLAY is not set "
                                 "(run under xvfb-run, or use --record DIR without --dashboard to only save frames)")
            import matplotlib.pyplot as plt
            try:
                plt.switch_backend("TkAgg")
            except ImportError as exc:
                raise CosimError(f"the dashboard window needs matplotlib's TkAgg backend: {exc}") from None
            self._plt = plt
            self.fig = plt.figure(figsize=FIG_SIZE_IN, dpi=FIG_DPI)
            if window_pos is not None:  # e.g. right below sumo-gui's window, as in the recording
                self.fig.canvas.manager.window.wm_geometry(f"+{window_pos[0]}+{window_pos[1]}")
            plt.show(block=False)
        else:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
            self.fig = Figure(figsize=FIG_SIZE_IN, dpi=FIG_DPI)
            FigureCanvasAgg(self.fig)
        gs = self.fig.add_gridspec(2, 3, left=0.055, right=0.975, top=0.83, bottom=0.08, hspace=0.5, wspace=0.42)
        self.ax = {"cost": self.fig.add_subplot(gs[0, 0]), "cv": self.fig.add_subplot(gs[0, 1]),
                   "split": self.fig.add_subplot(gs[0, 2]), "rsu": self.fig.add_subplot(gs[1, 0]),
                   "energy_q": self.fig.add_subplot(gs[1, 1]), "twin": self.fig.add_subplot(gs[1, 2])}
        self.suptitle = self.fig.suptitle("", x=0.055, y=0.985, ha="left", fontsize=12, fontweight="bold")
        self._legend()
        # Every artist is made once and only its data changes per slot: redrawing from scratch
        # (new lines, ticks and texts) took several times as long.
        self._build()
        self._reset_history()

    # -- data --------------------------------------------------------------------------------

    def _reset_history(self) -> None:
        self.hist: dict[str, list[Any]] = {"slot": [], "cost": [], "reward": [], "q_rsu": [], "y": []}
        self._prev_pred = None

    def update(self, out: Any, sim: Any, episode: int, slot: int) -> None:
        """Draw slot ``slot`` of ``episode`` (after ``sim.step`` returned ``out``); save it when recording."""
        if episode != self._episode:
            self._episode = episode
            self._reset_history()
        r, d = out.result, out.decision
        h = self.hist
        h["slot"].append(slot)
        h["cost"].append(float(r.system_cost[0]))
        h["reward"].append(float(r.reward[0]))
        h["q_rsu"].append(sim.queues.q_rsu[0] / self.W_ref)
        h["y"].append(sim.queues.energy[0].copy())
        self._draw_cost()
        self._draw_cvs(r)
        self._draw_split(r, d)
        self._draw_series()
        self._draw_twin(out, sim)
        self.suptitle.set_text(f"{self.title}   episode {episode}, slot {slot}")
        if self.show:
            from tkinter import TclError
            try:
                self.fig.canvas.draw_idle()
                self.fig.canvas.flush_events()
            except TclError:  # the user closed the window: the run (and any recording) goes on without it
                self.show = False
        if self.record_dir is not None:
            self.fig.savefig(self.record_dir / f"{DASH_PREFIX}{self.frame:05d}.png", dpi=FIG_DPI)
        self.frame += 1

    # -- panels ------------------------------------------------------------------------------

    def _legend(self) -> None:
        """What the colours mean, here and in sumo-gui."""
        from matplotlib.patches import Patch

        handles = [Patch(color=_rgb(LOCAL_COLOR), label="local")]
        for k in range(self.n_rsus):
            handles.append(Patch(color=_rgb(rsu_hue(k)), label=f"R{k} DataT"))
            handles.append(Patch(color=_rgb(pale(rsu_hue(k))), label=f"R{k} InstrT"))
        handles.append(Patch(color=_rgb(INACTIVE_COLOR), label="inactive"))
        self.fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.055, 0.95), ncol=len(handles),
                        fontsize=8, frameon=False, handlelength=1.2, columnspacing=1.0,
                        title="colour of a CV (here and in sumo-gui) = where most of its task goes; "
                              "saturated: raw data sent (DataT), pale: instructions sent, the twin rebuilds "
                              "the data (InstrT)", title_fontsize=8, alignment="left")

    def _time_axis(self, ax: Any) -> None:
        ax.set_xlim(-0.5, self.slots - 0.5)
        ax.set_xlabel("slot", fontsize=8, labelpad=1)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)

    def _build(self) -> None:
        I, K = self.n_cvs, self.n_rsus
        cvs, rsus = np.arange(I), np.arange(K)
        a = self.ax
        # system cost (left axis) and reward (right axis) over the episode
        self._time_axis(a["cost"])
        a["cost"].set_ylabel("system cost", fontsize=8)
        (self.l_cost,) = a["cost"].plot([], [], color=NEUTRAL, lw=1.5, marker=".", ms=4, label="system cost (left)")
        self.ax_reward = a["cost"].twinx()
        self.ax_reward.tick_params(labelsize=7)
        self.ax_reward.set_ylabel("reward R(t)", fontsize=8)
        (self.l_reward,) = self.ax_reward.plot([], [], color=NEUTRAL, lw=1.0, ls="--", marker="x", ms=3,
                                               label="reward (right)")
        # per CV: delay (left) and energy (right)
        ax = a["cv"]
        self.b_delay = ax.bar(cvs - 0.2, np.zeros(I), width=0.4, facecolor="white", edgecolor=NEUTRAL, lw=1.0)
        ax.set_ylabel("delay s (white bars)", fontsize=8)
        ax.set_xticks(cvs, [f"cv{i}" if I <= 8 else str(i) for i in cvs], fontsize=7)  # many CVs: numbers
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, axis="y")
        self.ax_energy = ax.twinx()
        self.b_energy = self.ax_energy.bar(cvs + 0.2, np.zeros(I), width=0.4, color=BROWN)
        self.ax_energy.set_ylabel("energy J (brown bars)", fontsize=8, color=BROWN)
        self.ax_energy.tick_params(labelsize=7, colors=BROWN)
        from matplotlib.patches import Patch
        self.ax_energy.legend(handles=[Patch(facecolor="white", edgecolor=NEUTRAL, label="delay"),
                                       Patch(facecolor="white", edgecolor=NEUTRAL, hatch="xxx", label="deadline missed"),
                                       Patch(color=BROWN, label="energy")],
                              fontsize=7, loc="upper right", ncol=3, framealpha=0.8, handlelength=1.2,
                              columnspacing=0.8)
        # each CV's split: local, then RSU 0..K-1, stacked
        ax = a["split"]
        self.b_split = [ax.barh(cvs, np.zeros(I), height=0.7, color=_rgb(LOCAL_COLOR))]
        self.b_split += [ax.barh(cvs, np.zeros(I), height=0.7, color=_rgb(rsu_hue(k))) for k in rsus]
        ax.set_yticks(cvs, [f"cv{i}" for i in cvs], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of the task", fontsize=8, labelpad=1)
        ax.tick_params(labelsize=7)
        ax.set_title("each CV's split (colours: the legend above)", fontsize=9)
        # RSU backlogs and energy queues over the episode
        ax = a["rsu"]
        self._time_axis(ax)
        self.l_rsu = [ax.plot([], [], color=_rgb(rsu_hue(k)), lw=1.5, label=f"R{k}")[0] for k in rsus]
        ax.set_title("RSU backlogs (in average local tasks)", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", ncol=min(K, 4))
        self.t_rsu = ax.text(0.5, 0.5, "", transform=ax.transAxes, **NOTE_STYLE)
        ax = a["energy_q"]
        self._time_axis(ax)
        self.l_y = [ax.plot([], [], color=BROWN, lw=0.8, alpha=0.6, label="each CV" if i == 0 else "_")[0]
                    for i in cvs]
        (self.l_ysum,) = ax.plot([], [], color=NEUTRAL, lw=1.5, marker=".", ms=4, label="sum over CVs")
        ax.legend(fontsize=7, loc="upper left")
        self.t_y = ax.text(0.5, 0.5, "", transform=ax.transAxes, **NOTE_STYLE)
        # the twin's view of the backlogs against the true ones
        ax = a["twin"]
        colors = [_rgb(rsu_hue(k)) for k in rsus]
        self.b_true = ax.bar(rsus - 0.2, np.zeros(K), width=0.4, color=colors)
        # white with the RSU's hue as hatching: a pale fill would read as InstrT
        self.b_seen = ax.bar(rsus + 0.2, np.zeros(K), width=0.4, facecolor="white", edgecolor=colors, hatch="//",
                             lw=1.0)
        ax.set_xticks(rsus, [f"R{k}" for k in rsus], fontsize=7)
        ax.tick_params(labelsize=7)
        from matplotlib.patches import Patch
        ax.legend(handles=[Patch(facecolor="white", edgecolor=NEUTRAL, label="true"),
                           Patch(facecolor="white", edgecolor=NEUTRAL, hatch="//", label="the twin's")],
                  fontsize=7, loc="upper right", ncol=2, framealpha=0.8)
        self.t_twin = ax.text(0.5, 0.5, "", transform=ax.transAxes, **NOTE_STYLE)

    @staticmethod
    def _top(values: np.ndarray, floor: float = 1e-3) -> float:
        return max(floor, float(np.max(values)) * 1.15) if np.size(values) else floor

    def _draw_cost(self) -> None:
        h = self.hist
        self.l_cost.set_data(h["slot"], h["cost"])
        self.l_reward.set_data(h["slot"], h["reward"])
        for ax, v in ((self.ax["cost"], h["cost"]), (self.ax_reward, h["reward"])):
            lo, hi = min(v), max(v)
            pad = 0.08 * (hi - lo) or 0.1 * max(abs(hi), 1e-3)
            ax.set_ylim(lo - pad, hi + pad)
        # the title is the legend: the two lines differ by style, not colour
        self.ax["cost"].set_title(f"system cost {h['cost'][-1]:.3f} (solid), reward {h['reward'][-1]:.3f} (dashed)",
                                  fontsize=9)

    def _draw_cvs(self, r: Any) -> None:
        delay, energy, miss = r.delay[0], r.energy[0], r.deadline_miss[0]
        for bar, v, m in zip(self.b_delay, delay, miss):
            bar.set_height(v)
            bar.set_hatch("xxx" if m else "")
        for bar, v in zip(self.b_energy, energy):
            bar.set_height(v)
        # headroom for the legend above the bars
        self.ax["cv"].set_ylim(0, self._top(delay) * 1.3)
        self.ax_energy.set_ylim(0, self._top(energy) * 1.3)
        self.ax["cv"].set_title(f"per CV: delay and energy ({int(miss.sum())} deadlines missed)", fontsize=9)

    def _draw_split(self, r: Any, d: Any) -> None:
        split, active = d.split[0], r.active[0]
        left = np.zeros(self.n_cvs)
        for j, bars in enumerate(self.b_split):
            share = split[:, j] if j else np.where(active, split[:, 0], 1.0)  # inactive: one dark bar
            share = np.where(active, share, 0.0) if j else share
            for i, bar in enumerate(bars):
                bar.set_x(left[i])
                bar.set_width(share[i])
                if j == 0:
                    bar.set_color(_rgb(LOCAL_COLOR if active[i] else INACTIVE_COLOR))
                else:
                    hue = rsu_hue(j - 1)
                    bar.set_color(_rgb(pale(hue) if r.instr_mode[0, i, j - 1] else hue))
            left += share

    def _draw_series(self) -> None:
        h = self.hist
        q = np.array(h["q_rsu"])
        for k, line in enumerate(self.l_rsu):
            line.set_data(h["slot"], q[:, k])
        self.ax["rsu"].set_ylim(0, self._top(q))
        # An empty panel says why (on the paper's road the RSUs finish their work within the slot).
        self.t_rsu.set_text("" if q.max() > 1e-9 else
                            "no RSU backlog so far this episode:\nevery RSU has finished its offloaded work\n"
                            "within the slot")
        y = np.array(h["y"])
        for i, line in enumerate(self.l_y):
            line.set_data(h["slot"], y[:, i])
        self.l_ysum.set_data(h["slot"], y.sum(axis=1))
        self.ax["energy_q"].set_ylim(0, self._top(y.sum(axis=1), 1.0))
        self.t_y.set_text("" if y.max() > 1e-9 else
                          "Y = 0 so far: every CV has stayed\nwithin its energy budget each slot")
        self.ax["energy_q"].set_title(f"energy queues Y (J): sum {y[-1].sum():.1f}", fontsize=9)

    def _draw_twin(self, out: Any, sim: Any) -> None:
        true_q = sim.queues.q_rsu[0] / self.W_ref
        obs = out.obs[0]
        seen_q = obs[:, self.obs_layout["dt_backlog"]].mean(axis=0)  # what the actors see in the next slot
        for bar, v in zip(self.b_true, true_q):
            bar.set_height(v)
        for bar, v in zip(self.b_seen, seen_q):
            bar.set_height(v)
        self.ax["twin"].set_ylim(0, self._top(np.concatenate([true_q, seen_q])))
        self.t_twin.set_text("" if max(true_q.max(), seen_q.max()) > 1e-9 else
                             "nothing queued at the RSUs now,\nin truth or in the twin's view")
        # The twin predicted each CV's distance to each RSU one slot ahead: how far off was it?
        pred = obs[:, self.obs_layout["dt_distance_next"]] * self.rsu_radius  # m, for the slot now starting
        err = ""
        if self.twin_on and self._prev_pred is not None:
            act = sim.mob.active[0]
            if act.any():
                e = np.abs(self._prev_pred[act] - sim.d3[0][act]).mean()
                err = f"forecast off {e:.1f} m; "
        self._prev_pred = pred
        self.ax["twin"].set_title(f"the twin's view of the RSU backlogs\n{err}{self.twin_note}", fontsize=8)

    def close(self) -> None:
        if self.show:
            self._plt.close(self.fig)


# -- recording ---------------------------------------------------------------------------------

def _frames(record_dir: Path) -> list[tuple[Path, Path | None]]:
    pairs = []
    for dash in sorted(record_dir.glob(f"{DASH_PREFIX}*.png")):
        sumo = record_dir / (SUMO_PREFIX + dash.name[len(DASH_PREFIX):])
        pairs.append((dash, sumo if sumo.is_file() else None))
    return pairs


def combined_frame(dash: Path, sumo: Path | None) -> np.ndarray:
    """One RGB frame: sumo-gui's view and the dashboard, side by side, or the view on top when
    it is wide (the paper's road); scaled down to at most ``ANIMATION_MAX_WIDTH`` pixels."""
    from PIL import Image

    d = Image.open(dash).convert("RGB")
    if sumo is None:
        out = d
    else:
        s = Image.open(sumo).convert("RGB")
        if s.width > 1.6 * s.height:  # a wide view: on top, at the dashboard's width
            s = s.resize((d.width, round(s.height * d.width / s.width)))
            out = Image.new("RGB", (d.width, s.height + d.height), "white")
            out.paste(s, (0, 0))
            out.paste(d, (0, s.height))
        else:
            s = s.resize((round(s.width * d.height / s.height), d.height))
            out = Image.new("RGB", (s.width + d.width, d.height), "white")
            out.paste(s, (0, 0))
            out.paste(d, (s.width, 0))
    if out.width > ANIMATION_MAX_WIDTH:
        out = out.resize((ANIMATION_MAX_WIDTH, round(out.height * ANIMATION_MAX_WIDTH / out.width)), Image.LANCZOS)
    return np.asarray(out)


def write_animation(record_dir: str | Path, path: str | Path | None = None, fps: float = 2.0) -> Path:
    """Combine the recorded frames of ``record_dir`` into one looping GIF; returns its path."""
    try:
        import imageio.v3 as iio
    except ImportError:
        raise CosimError("the --record animation needs imageio: pip install imageio") from None

    record_dir = Path(record_dir)
    pairs = _frames(record_dir)
    if not pairs:
        raise CosimError(f"{record_dir}: no dashboard frames ({DASH_PREFIX}00000.png, ...) to animate")
    if not fps > 0:
        raise CosimError(f"animation fps: {fps}; must be above 0")
    frames = [combined_frame(d, s) for d, s in pairs]
    # sumo-gui's frames can differ by a pixel when its window was resized: pad to one size.
    hgt, wid = max(f.shape[0] for f in frames), max(f.shape[1] for f in frames)
    frames = [np.pad(f, ((0, hgt - f.shape[0]), (0, wid - f.shape[1]), (0, 0)), constant_values=255) for f in frames]
    path = Path(path) if path is not None else record_dir / ANIMATION_NAME
    iio.imwrite(path, np.stack(frames), extension=".gif", duration=1000.0 / fps, loop=0)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cosim.dashboard",
                                 description="Combine recorded sumo-gui and dashboard frames into one GIF.")
    ap.add_argument("record_dir", help="the folder given to dtcosim run --record")
    ap.add_argument("--fps", type=float, default=2.0, help="frames (slots) per second (default 2)")
    ap.add_argument("--out", default=None, help=f"GIF path (default RECORD_DIR/{ANIMATION_NAME})")
    ap.add_argument("--still", nargs=2, metavar=("N", "PNG"), default=None,
                    help="write combined frame N as a PNG instead")
    args = ap.parse_args(argv)
    record_dir = Path(args.record_dir)
    if args.still:
        from PIL import Image
        pairs = _frames(record_dir)
        n = int(args.still[0]) if args.still[0].isdigit() else -1
        if not 0 <= n < len(pairs):
            raise CosimError(f"--still {args.still[0]}: {record_dir} has frames 0..{len(pairs) - 1}" if pairs
                             else f"{record_dir}: no dashboard frames ({DASH_PREFIX}00000.png, ...)")
        Image.fromarray(combined_frame(*pairs[n])).save(args.still[1])
        print(f"wrote {args.still[1]}")
    else:
        print(f"wrote {write_animation(record_dir, args.out, args.fps)}")
    return 0


if __name__ == "__main__":
    from .cli import run_main
    run_main(main)
