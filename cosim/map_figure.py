"""A picture of a SUMO map: its roads, the RSUs with their coverage and the sampled traffic density.

``dtcosim maps --show MAP`` draws it with the RSUs placed exactly as a run with the same
configuration places them (:class:`~cosim.sumo.SumoMobility` surveys the map first).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import sumolib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from .config import Config, CosimError
from .palette import rsu_hue


def draw_map(cfg: Config, path: Path) -> Path:
    from .sumo.mobility import SumoMobility
    from .sumo.placement import rsu_loads, survey_samples

    if not (cfg.sumo.map or cfg.sumo.sumocfg or cfg.sumo.net):
        raise CosimError("maps --show needs a map other than the paper's road: a name, a .sumocfg or a .net.xml")
    mob = SumoMobility(cfg)
    try:
        rsus, summary, net_file = mob.rsu_configs(), mob.map_summary, mob._map.net
        samples = survey_samples.get(mob._map.name, np.zeros((0, 2)))
    finally:
        mob.close()
    net = sumolib.net.readNet(str(net_file))
    (x0, y0), (x1, y1) = net.getBBoxXY()
    aspect = (y1 - y0) / max(x1 - x0, 1e-9)
    fig = Figure(figsize=(9.0, float(np.clip(8.0 * aspect, 3.5, 11.0)) + 0.8), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for edge in net.getEdges():
        if edge.getFunction():  # internal edges: junction interiors
            continue
        xy = np.asarray(edge.getShape())
        ax.plot(xy[:, 0], xy[:, 1], color="0.55", lw=0.6, zorder=1)
    if len(samples):
        cells = max(20, int(60 * max(1.0, 1.0 / max(aspect, 1e-3)) ** 0.5))
        hb = ax.hexbin(samples[:, 0], samples[:, 1], gridsize=cells, norm=LogNorm(), cmap="viridis",
                       mincnt=1, alpha=0.85, zorder=2, extent=(x0, x1, y0, y1))
        fig.colorbar(hb, ax=ax, fraction=0.035, pad=0.01, label="vehicle-slots sampled (log)")
    loads = rsu_loads(rsus, samples)
    total = max(int(loads.sum()), 1)
    for k, r in enumerate(rsus):
        color = tuple(c / 255.0 for c in rsu_hue(k))
        ax.add_patch(Circle((r.x, r.y), r.radius, fill=False, ec=color, lw=1.6, zorder=3))
        ax.plot([r.x], [r.y], "o", color=color, ms=5, zorder=4)
        ax.annotate(f"{k}: {loads[k] / total:.0%}", (r.x, r.y), xytext=(4, 4), textcoords="offset points",
                    fontsize=7, color=color, zorder=5)
    ax.set_aspect("equal")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("x, m")
    ax.set_ylabel("y, m")
    if summary is not None:
        ax.set_title(f"{Path(summary.name).name}: {len(rsus)} RSUs cover {summary.covered_share:.1%} of "
                     f"{summary.vehicle_seconds:.0f} vehicle-seconds; busiest RSU {summary.busiest_share:.0%} "
                     f"(label: each RSU's share)\nwindow {summary.window_s[0]:g}..{summary.window_s[1]:g} s after "
                     f"the begin at {summary.begin_s:g} s", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path
