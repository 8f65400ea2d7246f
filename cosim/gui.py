"""What the GUI and the terminal show of each slot's decisions.

Each CV is coloured by where most of its task went this slot: grey for local,
one hue per RSU, saturated for DataT and pale for InstrT. The same summary
feeds the per-slot terminal line. In sumo-gui each CV carries a short label
(``cv3 R1 60%``: its id and its largest part) that :func:`layout_labels` places
clear of the road and of every other label, joined to the vehicle by a line.

The functions take a :class:`~cosim.env.StepOutput` or anything with its
``result`` and ``decision`` (see :class:`SlotDecisions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from . import model as M
from .env import StepOutput
from .palette import INACTIVE_COLOR, LOCAL_COLOR, pale, rsu_hue


@dataclass(frozen=True)
class SlotDecisions:
    """A slot's decisions before the vehicles move on (what ``BatchCoSim.before_advance`` receives)."""

    result: M.SlotResult
    decision: M.Decision


def main_part(out: StepOutput | SlotDecisions, e: int, i: int) -> tuple[str, int | None]:
    """('inactive'|'local'|'DataT'|'InstrT', RSU index or None) of CV i's largest part."""
    if not out.result.active[e, i]:
        return "inactive", None
    split = out.decision.split[e, i]
    j = int(np.argmax(split))
    if j == 0:
        return "local", None
    k = j - 1
    return ("InstrT" if out.result.instr_mode[e, i, k] else "DataT"), k


def decision_colors(out: StepOutput | SlotDecisions, e: int = 0) -> list[tuple[int, int, int, int]]:
    colors = []
    for i in range(out.decision.split.shape[1]):
        kind, k = main_part(out, e, i)
        if kind == "inactive":
            colors.append(INACTIVE_COLOR)
        elif kind == "local":
            colors.append(LOCAL_COLOR)
        else:
            rgb = rsu_hue(k) if kind == "DataT" else pale(rsu_hue(k))
            colors.append((*rgb, 255))
    return colors


def decision_label(out: StepOutput | SlotDecisions, e: int, i: int) -> str:
    """E.g. 'R1 InstrT 70% | loc 30%' or 'local 100%'."""
    kind, k = main_part(out, e, i)
    if kind == "inactive":
        return "inactive"
    split = out.decision.split[e, i]
    parts = []
    for kk in np.flatnonzero(split[1:] > 0):
        mode = "InstrT" if out.result.instr_mode[e, i, kk] else "DataT"
        parts.append(f"R{kk} {mode} {split[kk + 1]:.0%}")
    if split[0] > 0:
        parts.append(f"loc {split[0]:.0%}")
    return " | ".join(parts)


def short_label(out: StepOutput | SlotDecisions, e: int, i: int) -> str:
    """CV i's id and largest part, e.g. 'cv3 R1 60%', 'cv3 R1 60% InstrT', 'cv3 local'."""
    kind, k = main_part(out, e, i)
    if kind in ("inactive", "local"):
        return f"cv{i} {kind}"
    text = f"cv{i} R{k} {out.decision.split[e, i, k + 1]:.0%}"
    return text + " InstrT" if kind == "InstrT" else text


# -- placing labels in sumo-gui ----------------------------------------------------------------

Box = tuple[float, float, float, float]  # x0, y0, x1, y1, m


@dataclass(frozen=True)
class LabelMetrics:
    """How big sumo-gui draws a label, in pixels, measured on its POI text at the size the road's view
    settings use (``LABEL_TEXT_SIZE`` = 50 in sumo_net/generate_road.py). A little generous, so that
    labels keep a gap rather than touch."""

    char_px: float = 8.0     # widest common characters; digits are about 7.4 px
    height_px: float = 14.0  # text with its background box
    pad_px: float = 6.0      # background margin, both sides together
    gap_px: float = 4.0      # between labels, and between the road and the first row
    drop_px: float = 9.0     # sumo-gui draws a POI's text centred this far below the POI

    def size_m(self, text: str, px_per_m: float) -> tuple[float, float]:
        return (len(text) * self.char_px + self.pad_px) / px_per_m, self.height_px / px_per_m


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def layout_labels(anchors: np.ndarray, texts: Sequence[str], px_per_m: float, view: Box,
                  band: tuple[float, float] | None = None, obstacles: Sequence[Box] = (),
                  metrics: LabelMetrics = LabelMetrics()) -> list[Box]:
    """Boxes for labels that overlap neither each other nor ``obstacles``, one per anchor.

    ``anchors`` (N, 2) are the vehicles' positions, m. With a road ``band`` (y0, y1) a label
    goes in rows above the road for a vehicle north of its middle and below it otherwise;
    without one, in rows above or else below its vehicle. Within a row a label is centred on
    its vehicle (kept inside ``view``); vehicles are placed west to east, each in the first
    free row, so labels stay close to their vehicles. Only when every row in view is taken at a
    vehicle's place does its label overlap another (in the nearest row): at sumo-gui's default
    zoom on the paper's road, that takes more than 7 labels within one label's width on one side.
    """
    anchors = np.asarray(anchors, dtype=float).reshape(-1, 2)
    placed: list[Box] = []
    boxes: list[Box | None] = [None] * len(anchors)
    gap = metrics.gap_px / px_per_m
    for n in np.argsort(anchors[:, 0], kind="stable"):
        x, y = anchors[n]
        w, h = metrics.size_m(texts[n], px_per_m)
        cx = min(max(x, view[0] + w / 2), view[2] - w / 2)
        if band is not None:
            north = y >= 0.5 * (band[0] + band[1])
            bases = [(band[1], 1.0), (band[0], -1.0)] if north else [(band[0], -1.0), (band[1], 1.0)]
        else:
            bases = [(y, 1.0), (y, -1.0)]
        candidates = []
        for base, side in bases:
            r = 0
            while True:
                near = base + side * (gap + r * (h + gap))  # the box's edge towards its vehicle
                lo, hi = (near, near + h) if side > 0 else (near - h, near)
                if lo < view[1] or hi > view[3]:
                    break
                candidates.append((cx - w / 2, lo, cx + w / 2, hi))
                r += 1
        if not candidates:  # a view lower than one label: stay beside the vehicle
            candidates.append((cx - w / 2, y - h / 2, cx + w / 2, y + h / 2))
        box = next((c for c in candidates if not any(_overlaps(c, o) for o in (*placed, *obstacles))),
                   candidates[0])
        placed.append(box)
        boxes[n] = box
    return boxes  # type: ignore[return-value]


def slot_line(out: StepOutput, slot: int, e: int = 0) -> str:
    """One short terminal line per slot, the same length for any fleet: system metrics, where the CVs' largest
    parts go, how many use InstrT, and the slowest CV (each CV's decision is on its sumo-gui label and in
    slots.csv), e.g. ``t=  3 cost 0.912 R -4.503 misses 1 | CVs R0 2, R1 2, local 1 | InstrT 2 | slowest cv3 0.42 s``."""
    r = out.result
    n = r.delay.shape[1]
    kinds = [main_part(out, e, i) for i in range(n)]
    where: dict[str, int] = {}
    for kind, k in kinds:
        key = f"R{k}" if k is not None else kind
        where[key] = where.get(key, 0) + 1
    order = sorted(where, key=lambda w: (int(w[1:]), "") if w.startswith("R") else (1 << 30, w == "inactive"))
    active = [i for i in range(n) if kinds[i][0] != "inactive"]
    slowest = (f" | slowest cv{max(active, key=lambda i: r.delay[e, i])} {max(r.delay[e, i] for i in active):.2f} s"
               if active else "")
    return (f"t={slot:3d} cost {r.system_cost[e]:7.3f} R {r.reward[e]:8.3f} misses {int(r.deadline_miss[e].sum())}"
            f" | CVs {', '.join(f'{w} {where[w]}' for w in order)} | InstrT {sum(kind == 'InstrT' for kind, _ in kinds)}"
            f"{slowest}")
