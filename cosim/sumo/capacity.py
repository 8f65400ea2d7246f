"""Whether this machine can run ``n_envs`` SUMO processes: memory and the open-file limit."""

from __future__ import annotations

from ..config import ConfigError
from ..resources import available_memory_mb


SUMO_MEMORY_MB = 50   # resident memory of one SUMO on the paper's road, measured (more on bigger maps)
SUMO_OPEN_FILES = 4   # a TraCI socket, its log file and SUMO's pipes, per simulation
_RESERVED_FILES = 64  # what Python, torch and the outputs keep open


def check_sumo_capacity(n_envs: int) -> None:
    """Refuse an ``n_envs`` whose SUMO processes would not fit this machine's memory or open-file limit."""
    mem = available_memory_mb()
    if mem is not None and n_envs * SUMO_MEMORY_MB > mem:
        raise ConfigError(f"training.n_envs = {n_envs} would start {n_envs} SUMO processes, about "
                          f"{n_envs * SUMO_MEMORY_MB:,} MB at {SUMO_MEMORY_MB} MB each, but {mem:,.0f} MB of memory is "
                          f"available: use at most {max(1, int(mem // SUMO_MEMORY_MB))}")
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return
    if soft != resource.RLIM_INFINITY and n_envs * SUMO_OPEN_FILES + _RESERVED_FILES > soft:
        raise ConfigError(f"training.n_envs = {n_envs} SUMO processes need about "
                          f"{n_envs * SUMO_OPEN_FILES + _RESERVED_FILES} open files, over this process's limit of "
                          f"{soft} (ulimit -n): use at most {max(1, (soft - _RESERVED_FILES) // SUMO_OPEN_FILES)}")
