"""What the GUI and the terminal show of each slot's decisions.

Each CV is coloured by where most of its task went this slot: grey for local,
one hue per RSU, saturated for DataT and pale for InstrT. The same summary
feeds the per-slot terminal line.
"""

from __future__ import annotations

import numpy as np

from .env import StepOutput
from .palette import INACTIVE_COLOR, LOCAL_COLOR, pale, rsu_hue

def main_part(out: StepOutput, e: int, i: int) -> tuple[str, int | None]:
    """('inactive'|'local'|'DataT'|'InstrT', RSU index or None) of CV i's largest part."""
    if not out.result.active[e, i]:
        return "inactive", None
    split = out.decision.split[e, i]
    j = int(np.argmax(split))
    if j == 0:
        return "local", None
    k = j - 1
    return ("InstrT" if out.result.instr_mode[e, i, k] else "DataT"), k


def decision_colors(out: StepOutput, e: int = 0) -> list[tuple[int, int, int, int]]:
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


def decision_label(out: StepOutput, e: int, i: int) -> str:
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


def slot_line(out: StepOutput, slot: int, e: int = 0) -> str:
    """One terminal line per slot: system metrics, then each CV's decision."""
    r = out.result
    cvs = "; ".join(f"cv{i}: {decision_label(out, e, i)} ({r.delay[e, i]:.2f}s)"
                    for i in range(r.delay.shape[1]))
    return (f"t={slot:3d} cost {r.system_cost[e]:7.3f} R {r.reward[e]:8.3f} "
            f"misses {int(r.deadline_miss[e].sum())} | {cvs}")
