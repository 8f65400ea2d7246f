"""Which SUMO vehicle each CV slot is: the CV pool and its hand-over.

Slot i is agent i for the whole episode. On the paper's road slot i is vehicle ``cv<i>``, which
never leaves the ring. On other maps (``sumo.cv_pool``):

* ``coverage``: each RSU is a POI whose context subscription reports the vehicles (of vType
  ``sumo.cv_vtype``, or any) near it; at the end of every slot a slot whose vehicle is gone or
  outside every radius passes to a free vehicle inside coverage at the RSU with the fewest CVs (the
  nearest to it first), or with none free inside to one heading into coverage (with nobody free it
  keeps its vehicle);
* ``departure``: the CVs are the vehicles in the order they depart; a CV that arrives frees its slot,
  which the next to depart fills;
* ``penetration``: each departing vehicle is a CV with probability ``sumo.penetration`` (one seeded
  draw each, in SUMO's order); CVs without a free slot wait, and a slot freed by an arrival goes to
  the one that has waited longest.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import traci.constants as tc

from ..config import RSUConfig

VEHICLE_VARS = (tc.VAR_POSITION, tc.VAR_SPEED, tc.VAR_ANGLE, tc.VAR_LANE_INDEX, tc.VAR_ROAD_ID)
RSU_POI = "cosim_rsu"  # other maps: POI ids of the RSUs
# sumo-gui on other maps: vehicles that are not (or no longer) CVs, faint, so that the CVs' colours stand out
OTHER_COLOR = (150, 150, 150, 90)


class CVPool:
    """The slot -> vehicle assignment of one simulation; ``kind`` is ``road`` or a ``sumo.cv_pool``."""

    def __init__(self, n_cvs: int, kind: str, cv_vtype: str | None, penetration: float,
                 rsus: Sequence[RSUConfig], gui: bool):
        self.n_cvs = n_cvs
        self.kind = kind
        self.cv_vtype = cv_vtype
        self.penetration = penetration
        self.rsus = tuple(rsus)
        self.gui = gui
        self.slot_vehicle: list[str | None] = [None] * n_cvs
        self.slot_of: dict[str, int] = {}
        self.waiting: dict[str, None] = {}  # penetration: CVs without a slot yet, in departure order
        self._cv_rng = np.random.default_rng(0)  # penetration: which vehicles are CVs (seeded per episode)

    @property
    def by_coverage(self) -> bool:
        """Slots are handed over at the end of each slot by RSU coverage."""
        return self.kind == "coverage"

    def reset(self, seed: int) -> None:
        """A new episode: every slot free; the penetration draws seeded by the episode's SUMO seed."""
        self.slot_vehicle = [None] * self.n_cvs
        self.slot_of = {}
        self.waiting = {}
        self._cv_rng = np.random.default_rng(seed)

    def _assign(self, api: Any, slot: int, vehicle: str) -> None:
        self.slot_vehicle[slot] = vehicle
        self.slot_of[vehicle] = slot
        api.vehicle.subscribe(vehicle, VEHICLE_VARS)

    def update(self, api: Any, sim: dict[int, Any]) -> None:
        """After one SUMO step: arrivals free their slots, waiting and departing vehicles fill them."""
        for vehicle in sim[tc.VAR_ARRIVED_VEHICLES_IDS]:
            self.waiting.pop(vehicle, None)
            slot = self.slot_of.pop(vehicle, None)
            if slot is not None:
                self.slot_vehicle[slot] = None
        if self.waiting and None in self.slot_vehicle:  # penetration: CVs that waited longest first
            for slot in [i for i, v in enumerate(self.slot_vehicle) if v is None][:len(self.waiting)]:
                vehicle = next(iter(self.waiting))
                del self.waiting[vehicle]
                self._assign(api, slot, vehicle)
        for vehicle in sim[tc.VAR_DEPARTED_VEHICLES_IDS]:
            slot = self._slot_for(api, vehicle)
            if self.gui and self.kind != "road":
                api.vehicle.setColor(vehicle, OTHER_COLOR)  # a CV gets its decision's colour
            if slot is not None:
                self._assign(api, slot, vehicle)

    def _slot_for(self, api: Any, vehicle: str) -> int | None:
        if self.kind == "road":  # slot i is cv<i>; background vehicles get none
            return int(vehicle[2:]) if vehicle.startswith("cv") else None
        if self.by_coverage:  # slots are handed out by coverage at the end of each slot
            return None
        vtype = self.cv_vtype
        if self.kind == "penetration":
            # One draw per departing vehicle (of the CV vType), in SUMO's order: the same seed, the same CVs.
            if vtype is not None and api.vehicle.getTypeID(vehicle) != vtype:
                return None
            if self._cv_rng.random() >= self.penetration:
                return None
            if None not in self.slot_vehicle:
                self.waiting[vehicle] = None
                return None
            return self.slot_vehicle.index(None)
        if None not in self.slot_vehicle:
            return None
        if vtype is not None and api.vehicle.getTypeID(vehicle) != vtype:
            return None
        return self.slot_vehicle.index(None)

    def hand_over(self, api: Any) -> None:
        """Give each CV slot whose vehicle is gone or outside every RSU's coverage to a free vehicle
        inside coverage (at the RSU that has the fewest CVs, the nearest to it first) or, with none, to
        one heading into it (the closest to the edge first); a CV that is itself entering keeps its
        slot against another entering one, and with nobody free a slot keeps its vehicle."""
        vtype = self.cv_vtype
        rank: dict[str, tuple[int, float, int]] = {}  # (0 inside | 1 entering, distance to RSU or edge, RSU)
        for k, r in enumerate(self.rsus):
            for vehicle, v in api.poi.getContextSubscriptionResults(f"{RSU_POI}{k}").items():
                if vtype is not None and v[tc.VAR_TYPE] != vtype:
                    continue
                x, y = v[tc.VAR_POSITION]
                d = math.hypot(x - r.x, y - r.y)
                if d <= r.radius:
                    here = (0, d, k)
                else:
                    a = math.radians(v[tc.VAR_ANGLE])  # SUMO: clockwise from north
                    if math.sin(a) * (r.x - x) + math.cos(a) * (r.y - y) <= 0.0:
                        continue  # heading away
                    here = (1, d - r.radius, k)
                if here < rank.get(vehicle, (2, 0.0, -1)):
                    rank[vehicle] = here
        load = [0] * len(self.rsus)  # CVs inside each RSU's coverage (at their nearest RSU)
        for vehicle in self.slot_vehicle:
            if vehicle in rank and rank[vehicle][0] == 0:
                load[rank[vehicle][2]] += 1
        free = [(rk, vehicle) for vehicle, rk in rank.items() if vehicle not in self.slot_of]

        def order(j: int) -> tuple:
            (inside, d, k), vehicle = free[j]
            return inside, load[k] if inside == 0 else 0, d, vehicle

        for slot, vehicle in enumerate(self.slot_vehicle):
            if not free:
                break
            have = rank.get(vehicle, (2, 0.0, -1)) if vehicle is not None else (3, 0.0, -1)
            if have[0] <= min(rk[0] for rk, _ in free):
                continue  # inside, or entering with only entering ones to swap for
            rk, new = free.pop(min(range(len(free)), key=order))
            if vehicle is not None:
                del self.slot_of[vehicle]
                api.vehicle.unsubscribe(vehicle)
                if self.gui:
                    api.vehicle.setColor(vehicle, OTHER_COLOR)
            if rk[0] == 0:
                load[rk[2]] += 1
            self._assign(api, slot, new)
