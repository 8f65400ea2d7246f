"""What sumo-gui shows: its window and view, the RSUs' coverage, the CVs' decision labels, screenshots.

The window is ``generate_road.WINDOW_SIZE`` on the paper's road (``--window-size`` in
``sumo.extra_args`` overrides it) and on other maps as wide and as high as the area the RSUs cover
needs; the view is fitted to that area at each reset; other maps get the road's view settings
(``--gui-settings-file`` in ``sumo.extra_args`` overrides them), which draw the CV labels. Each active
CV's label is placed clear of the road and the other labels (:func:`cosim.gui.layout_labels`).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sumo_net import generate_road as road

from ..config import ConfigError, RSUConfig
from ..gui import LabelMetrics, layout_labels
from ..mobility import MobilityState
from ..palette import pale, rsu_hue
from .process import Sumo

GUI_FRAME_PX = (10, 215)  # sumo-gui's window minus its view (menus, tool bars, status bar), measured
GUI_LABEL_LIMIT = 40      # sumo-gui: more active CVs than this are drawn in colour only, no labels


class GuiDrawing:
    """sumo-gui's window, view and drawn labels for one simulation (``sumo``, whose API changes on a restart)."""

    def __init__(self, sumo: Sumo, rsus: Sequence[RSUConfig], bbox: tuple[float, float, float, float],
                 road_spec: Any, workdir: Path, slot_s: float, extra_args: Sequence[str]):
        self.sumo = sumo
        self.rsus = tuple(rsus)
        self.bbox = bbox
        self.road_spec = road_spec  # generate_road.RoadSpec on the paper's road, else None
        self.workdir = workdir
        self.slot_s = slot_s
        extra = list(extra_args)
        size = extra[extra.index("--window-size") + 1] if "--window-size" in extra[:-1] else None
        try:
            self.window = tuple(int(v) for v in size.split(",")) if size else self._fitting_window()
        except ValueError:
            raise ConfigError(f"sumo.extra_args: --window-size {size!r} is not WIDTH,HEIGHT in pixels") from None
        self.px_per_m = 1.0
        self.labels_drawn: list[tuple[str, str]] = []  # ('poi'|'polygon', id) of the labels drawn now
        self.view: tuple[float, float, float, float] | None = None  # what sumo-gui shows, m

    def draw_coverage(self, api: Any, k: int, poi: str) -> None:
        """The rim of RSU k's coverage in its hue, as on the paper's road (sumo_net/generate_road.py)."""
        r = self.rsus[k]
        circle = [(r.x + r.radius * math.cos(a), r.y + r.radius * math.sin(a))
                  for a in np.linspace(0.0, 2.0 * math.pi, 49)]
        api.polygon.add(f"{poi}_coverage", circle, (*rsu_hue(k), 170), False, "coverage", -1,
                        max(r.radius / 100.0, 1.0))

    def draw_labels(self, state: MobilityState, slot_vehicle: Sequence[str | None],
                    colors: Sequence[Sequence[int]], tags: Sequence[str] | None,
                    details: Sequence[str] | None) -> None:
        """The RSUs' name boxes and, with ``tags``, each active CV's label with a line to where it is one slot on."""
        api = self.sumo.api
        for kind, name in self.labels_drawn:
            (api.poi if kind == "poi" else api.polygon).remove(name)
        self.labels_drawn = []
        slots = [i for i, v in enumerate(slot_vehicle) if v is not None and state.active[i]]
        self.read_view()
        metrics = LabelMetrics()
        band, obstacles = None, []
        spec = self.road_spec
        if spec is not None:  # the road, with room for vehicles drawn wider than their lane
            half = spec.lanes_per_direction * spec.lane_width_m + 1.5
            band = (-half, half)
        # The RSU dots and names; each name on a box of its RSU's hue (sumo-gui draws every POI text
        # in one colour). On the road a name sits above its RSU, on other maps on it.
        for k, r in enumerate(self.rsus):
            dot = (road.RSU_DOT_M if spec is not None else max(r.radius / 10.0, 1.0)) / 2.0
            obstacles.append((r.x - dot, r.y - dot, r.x + dot, r.y + dot))
            w, h = metrics.size_m(f"RSU {k}", self.px_per_m)
            ny = r.y + (road.RSU_NAME_OFFSET_M if spec is not None else 0.0) - metrics.drop_px / self.px_per_m
            obstacles.append((r.x - w / 2, ny - h / 2, r.x + w / 2, ny + h / 2))
            self._add_box(f"cosim_rsu{k}_box", obstacles[-1], pale(rsu_hue(k)), 4.5)
        if not slots or tags is None:  # no labels: the RSU boxes only
            return
        # Where each CV will be when sumo-gui draws the frame: one slot on at its present velocity
        # (exact on the paper's road away from its ends).
        dt = self.slot_s
        x0, y0, x1, y1 = self.view
        ahead = np.stack([state.x + state.speed * np.cos(state.heading) * dt,
                          state.y + state.speed * np.sin(state.heading) * dt], axis=-1)[slots]
        ahead[:, 0] = np.clip(ahead[:, 0], x0, x1)
        texts = [tags[i] for i in slots]
        boxes = layout_labels(ahead, texts, self.px_per_m, self.view, band, obstacles, metrics)
        for i, (ax, ay), box, text in zip(slots, ahead, boxes, texts):
            rgb = tuple(int(c) for c in colors[i][:3])
            cx, cy = 0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3])
            edge = box[1] if cy > ay else box[3]  # the line ends at the label's side towards its vehicle
            api.polygon.add(f"cosim_label{i}_line", [(float(ax), float(ay)), (float(cx), float(edge))],
                            rgb + (255,), False, "label", 4, 0.8)
            self.labels_drawn.append(("polygon", f"cosim_label{i}_line"))
            # White, framed in the CV's colour (a pale fill would read as InstrT).
            self._add_box(f"cosim_label{i}_box", box, (255, 255, 255), 5.5)
            self._add_box(f"cosim_label{i}_frame", box, rgb, 5.6, fill=False)
            lift = metrics.drop_px / self.px_per_m  # so that the text lands on its box
            api.poi.add(f"cosim_label{i}", float(cx), float(cy + lift), rgb + (255,), text, 6, "", 0.1, 0.1)
            if details is not None:
                api.poi.setParameter(f"cosim_label{i}", road.DECISION_PARAM, details[i])
            self.labels_drawn.append(("poi", f"cosim_label{i}"))

    def _add_box(self, name: str, box: tuple[float, float, float, float], rgb: tuple[int, ...],
                 layer: float, fill: bool = True) -> None:
        x0, y0, x1, y1 = (float(v) for v in box)
        shape = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)] + ([] if fill else [(x0, y0)])
        self.sumo.api.polygon.add(name, shape, tuple(rgb) + (255,), fill, "label", layer, 1.0)
        self.labels_drawn.append(("polygon", name))

    def fit_view(self) -> None:
        """Show the area the RSUs cover (on the paper's road: all of it), centred, with a small margin."""
        cx0, cy0, cx1, cy1 = self._view_area()
        pad = 0.02 * max(cx1 - cx0, cy1 - cy0)
        gui = self.sumo.api.gui
        gui.setBoundary(gui.DEFAULT_VIEW, cx0 - pad, cy0 - pad, cx1 + pad, cy1 + pad)
        self.read_view()

    def read_view(self) -> None:
        """What sumo-gui shows now (it keeps its window's aspect; a user may have zoomed or panned)."""
        gui = self.sumo.api.gui
        (vx0, vy0), (vx1, vy1) = gui.getBoundary(gui.DEFAULT_VIEW)
        self.view = (vx0, vy0, vx1, vy1)
        self.px_per_m = (self.window[0] - GUI_FRAME_PX[0]) / max(vx1 - vx0, 1e-9)

    def _fitting_window(self) -> tuple[int, int]:
        """The road's window on the paper's road; elsewhere as wide, and as high as the area the RSUs
        cover needs at that width (within 400..900 px of view), so a city is not a strip."""
        if self.road_spec is not None:
            return road.WINDOW_SIZE
        x0, y0, x1, y1 = self._view_area()
        width = road.WINDOW_SIZE[0]
        view_h = (width - GUI_FRAME_PX[0]) * (y1 - y0) / max(x1 - x0, 1e-9)
        return width, int(round(min(max(view_h, 400.0), 900.0))) + GUI_FRAME_PX[1]

    def map_view_settings(self) -> Path:
        """The road's sumo-gui view settings with vehicles drawn large enough to see on this map's scale
        (about 4 px per metre of car, between the road's 3x and 20x)."""
        path = self.workdir / "map.view.xml"
        if not path.is_file():
            x0, _, x1, _ = self._view_area()
            px_per_m = (self.window[0] - GUI_FRAME_PX[0]) / max(x1 - x0, 1e-9)
            tree = ET.parse(road.ROAD_DIR / f"{road.NAME}.view.xml")
            for vehicles in tree.getroot().iter("vehicles"):
                vehicles.set("vehicle_exaggeration", f"{min(max(4.0 / px_per_m, 3.0), 20.0):.1f}")
            tree.write(path, encoding="UTF-8", xml_declaration=True)
        return path

    def _view_area(self) -> tuple[float, float, float, float]:
        """The area the RSUs cover (on the paper's road: all of it), within the map."""
        x0, y0, x1, y1 = self.bbox
        cx0 = max(x0, min(r.x - r.radius for r in self.rsus))
        cx1 = min(x1, max(r.x + r.radius for r in self.rsus))
        cy0 = max(y0, min(r.y - r.radius for r in self.rsus))
        cy1 = min(y1, max(r.y + r.radius for r in self.rsus))
        if cx1 <= cx0 or cy1 <= cy0:  # RSUs beside the map: show the map
            return x0, y0, x1, y1
        return cx0, cy0, cx1, cy1

    def screenshot(self, path: str | Path) -> None:
        """Save sumo-gui's view to ``path``. SUMO writes the file during its next step."""
        self.sumo.api.gui.screenshot(self.sumo.api.gui.DEFAULT_VIEW, str(path))
