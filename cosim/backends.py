"""Mobility backends by name: the one registry that configs and every command line read.

A backend is a :class:`cosim.mobility.BatchMobility` subclass, named here as
``"module:Class"`` so that choosing the analytic road never imports SUMO. To
add one (e.g. recorded traces), implement ``BatchMobility`` in its own module
and call :func:`register_backend` below; ``--backend NAME``, ``make_env`` and
the config's ``backend`` key then accept it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .mobility import BatchMobility


@dataclass(frozen=True)
class Backend:
    name: str
    target: str        # "module:Class" of a BatchMobility subclass
    summary: str
    gui: bool = False  # shows the simulation (sumo-gui) and can record frames

    def load(self) -> type[BatchMobility]:
        module, cls = self.target.split(":")
        return getattr(importlib.import_module(module), cls)


BACKENDS: dict[str, Backend] = {}


def register_backend(name: str, target: str, summary: str, gui: bool = False) -> Backend:
    BACKENDS[name] = backend = Backend(name, target, summary, gui)
    return backend


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ConfigError(f"backend: unknown backend '{name}' (choose {', '.join(BACKENDS)})")
    return BACKENDS[name]


register_backend("analytic", "cosim.mobility:AnalyticMobility",
                 "the paper's straight road with uniform speeds, in numpy (fast, headless)")
register_backend("sumo", "cosim.sumo.mobility:SumoBatchMobility",
                 "SUMO: libsumo headless, TraCI with sumo-gui; the paper's road or any map", gui=True)
register_backend("trace", "cosim.trace_mobility:TraceMobility",
                 "SUMO mobility recorded by scripts/record_traces.py, replayed at batch speed (trace.dir)")
