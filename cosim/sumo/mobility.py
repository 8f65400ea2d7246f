"""SUMO mobility: the CVs are vehicles in a SUMO simulation (libsumo or TraCI).

:class:`SumoMobility` runs one simulation behind the :class:`~cosim.mobility.Mobility` protocol;
:class:`SumoBatchMobility` runs several side by side behind :class:`~cosim.mobility.BatchMobility`.
They join the package's parts: the map (:mod:`.network`), its survey and RSUs (:mod:`.survey`,
:mod:`.placement`), the episode's routes on the paper's road (:mod:`.routes`), the SUMO process
(:mod:`.process`), the CV slots (:mod:`.pool`), sumo-gui (:mod:`.drawing`) and the machine's
capacity (:mod:`.capacity`).
"""

from __future__ import annotations

import itertools
import os
import tempfile
import warnings
import weakref
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import traci.constants as tc

from sumo_net import generate_road as road

from ..config import Config, ConfigError, CosimError, RSUConfig, with_rsus
from ..mobility import BatchMobility, MobilityState, stack_states
from ..outputs import remove_stale_temp_dirs
from ..palette import rsu_hue
from .capacity import check_sumo_capacity
from .drawing import GUI_LABEL_LIMIT, GuiDrawing
from .network import begin_args, check_vtype, net_info, resolve_map
from .placement import resolve_rsus
from .pool import RSU_POI, CVPool
from .process import Sumo, argv_map
from .routes import RoadStart, draw_episode, write_episode_routes
from .survey import MapSummary

_SIM_VARS = (tc.VAR_TIME, tc.VAR_DEPARTED_VEHICLES_IDS, tc.VAR_ARRIVED_VEHICLES_IDS)
_labels = itertools.count()
_TMP_PREFIX = "cosim-sumo-"  # temp folders: cosim-sumo-<pid>-<random>


class SumoMobility:
    """One SUMO simulation behind the Mobility protocol.

    ``gui=True`` runs sumo-gui (over TraCI) and needs a display (:mod:`cosim.sumo.drawing` says what
    it shows). ``record_dir`` (with the GUI) saves one screenshot per slot,
    ``slot_00000.png``, ``slot_00001.png``, ..., numbered on across episodes. ``close()`` stops
    SUMO; it also runs when the object is garbage-collected and at interpreter exit.
    """

    def __init__(self, cfg: Config, n_cvs: int | None = None, gui: bool = False, label: str | None = None,
                 record_dir: str | None = None, rsus: Sequence[RSUConfig] | None = None,
                 map_summary: MapSummary | None = None):
        self.cfg = cfg
        self.n_cvs = n_cvs if n_cvs is not None else cfg.scenario.n_cvs
        if self.n_cvs < 1:
            raise ConfigError(f"n_cvs: {self.n_cvs} CV slots; at least 1 is needed")
        self.gui = gui
        self.label = label if label is not None else f"cosim-sumo-{next(_labels)}"
        self.record_dir = Path(record_dir) if record_dir is not None else None
        if gui and not os.environ.get("DISPLAY"):
            raise CosimError("sumo-gui needs a display but DISPLAY is not set (run under xvfb-run, or without the GUI)")
        if self.record_dir is not None:
            if not gui:
                raise ConfigError("record_dir needs gui=True: the screenshots come from sumo-gui")
            self.record_dir.mkdir(parents=True, exist_ok=True)
        # The pid in the name lets a later start remove the folders of runs killed with SIGKILL.
        remove_stale_temp_dirs(tempfile.gettempdir(), _TMP_PREFIX)
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{_TMP_PREFIX}{os.getpid()}-")
        workdir = Path(self._tmp.name)
        try:
            self._map = resolve_map(cfg, workdir)
            self._net = net_info(str(self._map.net), self._map.net.stat().st_mtime)
            if cfg.sumo.cv_vtype is not None and self._map.road is None:
                check_vtype(cfg.sumo.cv_vtype, self._map.demand)
            if rsus is not None:  # SumoBatchMobility places them once for all its simulations
                self._rsus, self.map_summary = tuple(rsus), map_summary
            else:
                self._rsus, self.map_summary = resolve_rsus(cfg, self._map, self._net, workdir)
        except BaseException:
            self._tmp.cleanup()
            raise
        self._episode_routes = workdir / "episode.rou.xml"
        self._sumo = Sumo(self.label, gui, cfg.sumo.use_libsumo, workdir / "sumo.log", cfg.sumo.traci_timeout_s)
        self._drawing = GuiDrawing(self._sumo, self._rsus, self._net.bbox, self._map.road, workdir,
                                   cfg.scenario.slot_s, cfg.sumo.extra_args)
        weakref.finalize(self, self._sumo.close)
        self._rng = np.random.default_rng(cfg.seed)
        self._closed = False
        self.step_length: float | None = None  # SUMO's step length, s, known after the first reset
        self.sim_time = 0.0                     # SUMO's clock after the last step, s
        self._episode: tuple[int, RoadStart | None] = (0, None)
        self._state: MobilityState | None = None
        self._frame = 0
        # Other maps: CV slots go to vehicles inside RSU coverage and are handed over when they leave.
        self._pool = CVPool(self.n_cvs, "road" if self._map.road is not None else cfg.sumo.cv_pool,
                            cfg.sumo.cv_vtype, cfg.sumo.penetration, self._rsus, gui)
        self._warmup = (self.map_summary.warmup_s if self.map_summary is not None
                        else 0.0 if self._map.road is not None else cfg.sumo.warmup_s)

    @property
    def _slot_vehicle(self) -> list[str | None]:
        """Each CV slot's vehicle id (None: free)."""
        return self._pool.slot_vehicle

    @property
    def _waiting(self) -> dict[str, None]:
        return self._pool.waiting

    @property
    def _px_per_m(self) -> float:
        return self._drawing.px_per_m

    # -- Mobility protocol -------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> MobilityState:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        placement, sumo_seeds = draw_episode(self._rng, self.cfg, 1, self.n_cvs, self._map.road is not None)
        return self._begin(int(sumo_seeds[0]), None if placement is None else placement.row(0))

    def advance(self, dt: float) -> MobilityState:
        if self._sumo.api is None:
            raise CosimError("SumoMobility.advance(): no simulation is running (call reset() first)")
        n = round(dt / self.step_length)
        if n < 1 or abs(n * self.step_length - dt) > 1e-9 * max(dt, 1.0):
            raise ConfigError(f"a slot of {dt:g} s is not a whole number of SUMO steps of {self.step_length:g} s")
        try:
            return self._steps(n)
        except self._sumo.errors as exc:
            if not self.cfg.sumo.restart_on_crash:
                raise self._crashed(exc) from exc
        # SUMO died and sumo.restart_on_crash is set: a new SUMO runs this slot again.
        self._restart()
        try:
            return self._steps(n)
        except self._sumo.errors as exc:
            raise self._crashed(exc) from exc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._sumo.close()
            finally:
                self._tmp.cleanup()

    # -- extras --------------------------------------------------------------------------------

    def rsu_configs(self) -> tuple[RSUConfig, ...]:
        """The RSUs on this map: ``scenario.rsus`` (checked to lie on it) or placed where its traffic is."""
        return self._rsus

    @property
    def sumo_pid(self) -> int | None:
        """Process id of the SUMO behind TraCI (None with libsumo or before the first reset)."""
        return self._sumo.proc.pid if self._sumo.proc is not None else None

    def show_decisions(self, colors: Sequence[Sequence[int]], labels: Sequence[str] | None = None,
                       tags: Sequence[str] | None = None) -> None:
        """Colour each CV slot's vehicle, (r, g, b, a) in 0..255; ``labels`` (the full decision) go into
        its ``decision`` parameter, and its label's (sumo-gui: right click, Show Parameter). In sumo-gui each active CV's ``tags``
        text (e.g. 'cv3 R1 60%') is drawn clear of the road and the other labels, with a line to where
        the CV is one slot on (this call comes before the vehicles move; see ``BatchCoSim.before_advance``).
        """
        if (len(colors) != self.n_cvs or (labels is not None and len(labels) != self.n_cvs)
                or (tags is not None and len(tags) != self.n_cvs)):
            raise ValueError(f"show_decisions: expected one colour (and label) per CV slot, {self.n_cvs}")
        for slot, vehicle in enumerate(self._slot_vehicle):
            if vehicle is not None:
                self._sumo.api.vehicle.setColor(vehicle, tuple(int(c) for c in colors[slot]))
                if labels is not None:
                    self._sumo.api.vehicle.setParameter(vehicle, road.DECISION_PARAM, labels[slot])
        if tags is not None and self.gui:
            if sum(v is not None for v in self._slot_vehicle) > GUI_LABEL_LIMIT:
                tags = None  # too many to read: the vehicles' colours alone say what each CV does
            self._drawing.draw_labels(self._state, self._slot_vehicle, colors, tags, labels)

    @property
    def window_size(self) -> tuple[int, int]:
        """sumo-gui's window, px (fitted to the map's shape on other maps)."""
        return self._drawing.window

    def screenshot(self, path: str | Path) -> None:
        """Save sumo-gui's view to ``path``. SUMO writes the file during its next step."""
        if not self.gui:
            raise CosimError("screenshot() needs gui=True")
        self._drawing.screenshot(path)

    # -- internals -----------------------------------------------------------------------------

    def _argv(self, sumo_seed: int, start: RoadStart | None) -> list[str]:
        options = {"--seed": str(sumo_seed), "--no-step-log": "true", "--no-warnings": "true",
                   "--verbose": "false",  # some maps ask for it: it would print SUMO's statistics every episode
                   "--end": "-1"}  # the episode decides when to stop, not the map's end time
        if self.cfg.sumo.step_length_s is not None:
            options["--step-length"] = repr(self.cfg.sumo.step_length_s)
        if self.gui:
            # Top left, so that the dashboard (cosim/dashboard.py) can sit right below it.
            options.update({"--start": "true", "--quit-on-end": "true", "--window-pos": "0,0",
                            "--window-size": ",".join(map(str, self._drawing.window))})
            if self._map.road is None:  # other maps: the road's view settings, which the CV labels need
                options["--gui-settings-file"] = str(self._drawing.map_view_settings())
        if start is not None:
            # In place of the road's route file: its vTypes and routes, and this episode's vehicles.
            write_episode_routes(self._episode_routes, self.cfg, self._map.road, self._map.demand[0], start)
            options["--route-files"] = str(self._episode_routes)
        extra = list(self.cfg.sumo.extra_args)
        given = {a for a in extra if a.startswith("-")}  # SUMO rejects an option given twice
        argv = list(self._map.args) + [a for a in begin_args(self._map) if "--begin" not in given]
        for key, value in options.items():
            if key not in given:
                argv += [key, value]
        return argv + extra

    def _begin(self, sumo_seed: int, start: RoadStart | None) -> MobilityState:
        """Start an episode: (re)load SUMO and perform the step that inserts the vehicles departing at 0."""
        if self._closed:
            raise CosimError("SumoMobility is closed")
        self._episode = (sumo_seed, start)
        argv = self._argv(sumo_seed, start)
        self._sumo.load(argv)
        self._pool.reset(sumo_seed)
        try:
            api = self._sumo.api
            api.simulation.subscribe(_SIM_VARS)
            self.step_length = api.simulation.getDeltaT()
            self._drawing.labels_drawn = []  # a (re)load dropped them
            if self._map.road is None:
                self._add_rsus(api)
            if self.gui:
                self._drawing.fit_view()
            # Other maps start empty: let traffic build up before the first slot.
            warmup = round(self._warmup / self.step_length)
            return self._steps(1 + warmup)
        except self._sumo.errors as exc:  # SUMO reads route files as it goes: a bad one fails here
            message = self._sumo.failure(exc)
            self._sumo.close()
            raise CosimError(f"SUMO could not load {argv_map(argv)}: {message}") from exc

    def _steps(self, n: int) -> MobilityState:
        api = self._sumo.api
        for k in range(n):
            if k == n - 1 and self.record_dir is not None:
                # Requested before the slot's last step, the screenshot shows the state after it.
                self.screenshot(self.record_dir / f"slot_{self._frame:05d}.png")
                self._frame += 1
            api.simulationStep()
            sim = api.simulation.getSubscriptionResults()
            self.sim_time = sim[tc.VAR_TIME]
            self._pool.update(api, sim)
        if self._pool.by_coverage:
            self._pool.hand_over(api)
        return self._read()

    def _add_rsus(self, api: Any) -> None:
        """Other maps: each RSU a POI (in sumo-gui with its coverage circle) that reports the vehicles near it."""
        vars_ = [tc.VAR_POSITION, tc.VAR_ANGLE] + ([tc.VAR_TYPE] if self.cfg.sumo.cv_vtype is not None else [])
        # Vehicles up to a slot at 30 m/s outside the radius may be entering it.
        entering_m = 30.0 * self.cfg.scenario.slot_s
        for k, r in enumerate(self._rsus):
            poi = f"{RSU_POI}{k}"
            size = max(r.radius / 10.0, 1.0)  # visible when the view spans the coverage circles
            api.poi.add(poi, r.x, r.y, (*rsu_hue(k), 255), f"RSU {k}", 5, "", size, size)
            if self._pool.by_coverage:
                api.poi.subscribeContext(poi, tc.CMD_GET_VEHICLE_VARIABLE, r.radius + entering_m, vars_)
            if self.gui:
                self._drawing.draw_coverage(api, k, poi)

    def _read(self) -> MobilityState:
        results = self._sumo.api.vehicle.getAllSubscriptionResults()
        n = self.n_cvs
        x, y, speed, angle = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
        lane = np.zeros(n, dtype=np.int64)
        active = np.zeros(n, dtype=bool)
        spec = self._map.road
        for slot, vehicle in enumerate(self._slot_vehicle):
            r = results.get(vehicle) if vehicle is not None else None
            if not r or r[tc.VAR_POSITION][0] == tc.INVALID_DOUBLE_VALUE:  # not inserted, or teleporting
                continue
            x[slot], y[slot] = r[tc.VAR_POSITION]
            speed[slot] = r[tc.VAR_SPEED]
            angle[slot] = r[tc.VAR_ANGLE]
            index = r[tc.VAR_LANE_INDEX]
            if spec is not None and r[tc.VAR_ROAD_ID] == road.WEST:
                index = 2 * spec.lanes_per_direction - 1 - index
            lane[slot] = index
            active[slot] = True
        # SUMO: degrees clockwise from north; the model: radians counter-clockwise from east, in (-pi, pi].
        heading = np.where(active, np.pi - np.mod(np.pi / 2.0 + np.radians(angle), 2.0 * np.pi), 0.0)
        self._state = MobilityState(x=x, y=y, speed=speed, heading=heading, lane=lane, active=active)
        return self._state.copy()

    def _crashed(self, exc: BaseException) -> CosimError:
        message = self._sumo.failure(exc)
        self._sumo.close()
        return CosimError(f"SUMO exited at simulation time {self.sim_time:g} s running {self._map.name}: {message}")

    def _restart(self) -> None:
        """After a crash: a new SUMO, the road's CVs where they were, at their drawn speeds."""
        warnings.warn(f"SUMO '{self.label}' exited at simulation time {self.sim_time:g} s; restarting it",
                      RuntimeWarning, stacklevel=3)
        self._sumo.close()
        sumo_seed, start = self._episode
        if start is not None:
            start = RoadStart(self._state.x, start.speed, self._state.lane)
        self._begin(sumo_seed, start)


class SumoBatchMobility(BatchMobility):
    """``n_envs`` SUMO simulations side by side, with (E, I) arrays like AnalyticMobility's batch methods.

    Each reset (re)loads every SUMO with its own ``--seed`` and performs SUMO's first step, which
    inserts the vehicles that depart at time 0; ``advance_batch(dt)`` performs as many steps as dt
    spans; every CV's position, speed, angle and lane come from subscriptions. A slot without a
    vehicle (or whose vehicle is being teleported) has ``active = False`` and zeros elsewhere.

    One environment uses libsumo (if ``sumo.use_libsumo``); more use TraCI, one labelled
    connection each, stepped in turn. (Stepping them from threads was measured no faster on
    two cores: the Python side of each step is what takes the time.) Environment e's start and SUMO
    seed derive from the reset seed; on the road the start equals ``AnalyticMobility(cfg,
    n_envs).reset_batch(seed)``. Environment e generates its random trips (maps without
    routes) with seed ``cfg.seed + e``. The GUI (and recording) shows one simulation, so it
    needs ``n_envs == 1``; ``show_decisions`` and ``screenshot`` act on it.
    """

    def __init__(self, cfg: Config, n_envs: int, n_cvs: int | None = None, gui: bool = False,
                 record_dir: str | None = None):
        if n_envs < 1:
            raise ConfigError(f"n_envs: {n_envs}; at least 1 environment is needed")
        if (gui or record_dir is not None) and n_envs != 1:
            raise ConfigError(f"the SUMO GUI shows one simulation, not n_envs = {n_envs}")
        check_sumo_capacity(n_envs)
        if n_envs > 1:  # libsumo runs one simulation per process
            cfg = cfg.replace(**{"sumo.use_libsumo": False})
        self.cfg = cfg
        self.n_envs = n_envs
        prefix = f"cosim-batch-{next(_labels)}"
        self.envs: list[SumoMobility] = []
        try:
            for e in range(n_envs):
                placed = {} if e == 0 else {"rsus": self.envs[0].rsu_configs(),
                                            "map_summary": self.envs[0].map_summary}
                self.envs.append(SumoMobility(cfg.replace(seed=(cfg.seed + e) % 2**31), n_cvs, gui=gui,
                                              label=f"{prefix}-{e}", record_dir=record_dir, **placed))
        except BaseException:
            self.close()
            raise
        self.n_cvs = self.envs[0].n_cvs
        self._rng = np.random.default_rng(cfg.seed)

    def reset_batch(self, seed: int | None = None) -> MobilityState:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        on_road = self.envs[0]._map.road is not None
        placement, sumo_seeds = draw_episode(self._rng, self.cfg, self.n_envs, self.n_cvs, on_road)
        return stack_states([env._begin(int(sumo_seeds[e]), None if placement is None else placement.row(e))
                             for e, env in enumerate(self.envs)])

    def advance_batch(self, dt: float) -> MobilityState:
        return stack_states([env.advance(dt) for env in self.envs])

    def rsu_configs(self) -> tuple[RSUConfig, ...]:
        return self.envs[0].rsu_configs()

    @property
    def map_summary(self) -> MapSummary | None:
        """Other maps: their size, traffic and how the RSUs cover it (None on the paper's road)."""
        return self.envs[0].map_summary

    def show_decisions(self, colors: Sequence[Sequence[int]], labels: Sequence[str] | None = None,
                       tags: Sequence[str] | None = None) -> None:
        self.envs[0].show_decisions(colors, labels, tags)

    def screenshot(self, path: str | Path) -> None:
        self.envs[0].screenshot(path)

    def close(self) -> None:
        for env in self.envs:
            env.close()


def placed_config(cfg: Config) -> Config:
    """``cfg`` with the RSUs this map gets (placed once per process; unchanged on the paper's road)."""
    if cfg.backend != "sumo" or not (cfg.sumo.sumocfg or cfg.sumo.net):
        return cfg
    mob = SumoMobility(cfg)
    mob.close()
    placed = with_rsus(cfg, mob.rsu_configs())
    if mob.map_summary is not None and cfg.sumo.warmup_s is None:  # measured once: later runs need not
        placed = placed.replace(**{"sumo.warmup_s": mob.map_summary.warmup_s})
    return placed
