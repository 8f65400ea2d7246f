"""Compile the numba kernels once, ahead of time, so that no later run waits for them.

    dtcosim warmup            # the environment's step (~10-40 s) and the optimiser dpp-opt (~20-110 s)

With numba installed (the ``fast`` extra) the model step and the per-slot optimiser run as
compiled kernels (cosim/fast/). numba compiles each kernel on its first use and caches it on
disk (``__pycache__`` beside cosim/fast/, or NUMBA_CACHE_DIR), so only the very first run pays.
Without this command that first run says so before it compiles ("compiling the optimiser's kernels
once ...") and its progress bar starts after the compile. Running it again costs only the loading.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from typing import Any

from cosim.cli import add_debug_arg

# What a first run compiles, as a user would name it, and what it took on the 2-core machine the
# project is developed on (the range: an idle machine to one shared by several jobs).
GROUPS = {
    "env": ("the environment's kernels", "about 10-40 s", ("_step_kernel", "_channel_obs_kernel")),
    "optimiser": ("the optimiser's kernels", "about 20-110 s", ("_bfgs_kernel", "_probe_kernel")),
}
SOLVER_PREFIXES = ("dpp-opt", "refined")  # policies that run the optimiser (refinedN:POLICY too)
_WARMED: set[str] = set()


def numba_available() -> bool:
    from cosim import fast
    return bool(fast.AVAILABLE)


def cached(group: str) -> bool:
    """Whether ``group``'s kernels are compiled in this process or cached on disk for the current source
    (numba's own index; when it cannot be read, assume they are, and say nothing)."""
    from cosim import fast
    if not fast.AVAILABLE:
        return True
    module = _kernel_module(group)
    for name in GROUPS[group][2]:
        disp = getattr(module, name, None)
        if disp is None or getattr(disp, "signatures", None):
            continue
        try:
            if not disp._cache._cache_file._load_index():  # {} when absent or stale (another source)
                return False
        except Exception:  # numba's private layout changed: no claim either way
            continue
    return True


def _kernel_module(group: str) -> Any:
    """The module holding ``group``'s kernels: the env step's or the optimiser's objective."""
    if group == "env":
        from cosim.fast import step
        return step
    from cosim.fast import objective
    return objective


def uses_optimiser(policies: Iterable[str]) -> bool:
    return any(str(p).startswith(SOLVER_PREFIXES) for p in policies)


def _warm_config(cfg: Any) -> Any:
    """``cfg`` cut to one environment, two analytic slots: the same kernels and argument types, no SUMO."""
    return cfg.replace(backend="analytic", **{"scenario.episode_slots": 2})


def warm(cfg: Any, group: str) -> float:
    """Compile ``group``'s kernels by running two analytic slots under ``cfg``; the seconds it took."""
    from agents import make_policy
    from cosim.env import BatchCoSim
    from cosim.runner import run_episodes
    t0 = time.perf_counter()
    with BatchCoSim(_warm_config(cfg), n_envs=1, seed=0) as sim:
        policy = make_policy("dpp-opt" if group == "optimiser" else "equal", sim.n_rsus, seed=0, env=sim)
        run_episodes(sim, policy, 1, seed=0, progress=False)
    _WARMED.add(group)
    return time.perf_counter() - t0


def prepare(cfg: Any, policies: Iterable[str] = (), log=None) -> None:
    """Before a command's first slot: compile what is not cached yet, saying first what and for how long, so
    that the wait is explained and the progress bar that follows times only the run."""
    if not numba_available():
        return
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    groups = ["env", *(["optimiser"] if uses_optimiser(policies) else [])]
    for group in groups:
        if group in _WARMED or cached(group):
            continue
        what, how_long = GROUPS[group][:2]
        log(f"compiling {what} once ({how_long}); later runs load them from the cache (dtcosim warmup does it "
            f"ahead of time)")
        seconds = warm(cfg, group)
        _WARMED.add(group)
        log(f"compiled {what} in {seconds:.0f} s")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-optimiser", action="store_true",
                    help="only the environment's kernels, not dpp-opt's (default: both)")
    add_debug_arg(ap)
    args = ap.parse_args(argv)
    if not numba_available():
        print("numba is not installed (pip install \"dtcosim[fast]\"): nothing to compile, the numpy path runs")
        return 0
    from cosim.config import load_config
    from cosim.resources import config_dir
    # The paper's options and the shipped policies' (the twin's global view reads another observation layout).
    configs = [load_config(), load_config([config_dir() / "shipped.yaml"])]
    for group in ["env", *([] if args.no_optimiser else ["optimiser"])]:
        what = GROUPS[group][0]
        was = "loaded from the cache" if cached(group) else "compiled"
        t0 = time.perf_counter()
        for cfg in configs if group == "env" else configs[:1]:  # dpp-opt runs under the paper's actions only
            warm(cfg, group)
        print(f"{what}: {was} in {time.perf_counter() - t0:.1f} s")
    print(f"cache: {_kernel_module('env')._step_kernel._cache._cache_path}")
    return 0
