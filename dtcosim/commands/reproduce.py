"""Run the paper's experiment grid (Sec. VII) from configs/experiments/*.yaml.

    dtcosim reproduce --preset tiny               # every experiment, every code path: about 1 min on 2 cores
    dtcosim reproduce --preset quick --experiments convergence vehicles lyapunov_v   # the paper's figures: about 7 min
    dtcosim reproduce                             # the paper's budget (1800 episodes per run)
    dtcosim reproduce --preset quick --backend sumo   # on SUMO mobility
    dtcosim reproduce --ray local                 # on a (local or remote) Ray cluster
    dtcosim reproduce --set lyapunov.alpha=0.8    # every cell on a changed base config
    dtcosim plot                             # then the figures and results.md

Every run is a cell (algorithm x setting x seed); a finished cell is never redone,
so an interrupted grid continues where it stopped when run again.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from agents.experiments import (EXPERIMENTS_DIR, PRESETS, Budget, grid, load_experiments, run_grid,
                                validate, write_manifest)
from cosim.backends import BACKENDS
from cosim.cli import add_config_args, check_configs, add_debug_arg, add_list_arg
from cosim.config import CosimError, flat_overrides
from cosim.outputs import OutputDir


def _reproduction_file(path: Path) -> bool:
    """Whether a file without a manifest entry is an earlier reproduction's (one of before the manifests)."""
    if path.name == "cells":
        return path.is_dir()
    try:
        import json
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(old, dict) and {"preset", "budget", "experiments"} <= set(old)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full",
                    help="full (the paper's budget, default; hours), quick (150 training episodes, 5 evaluation episodes: the paper's experiments in about 7 min) or tiny (4 episodes, 1 seed: every experiment in about 1 min)")
    add_config_args(ap)
    add_list_arg(ap, "--experiments", help="only these experiments (default: all)")
    ap.add_argument("--experiments-dir", default=None, help="folder of experiment YAML files (default: configs/experiments)")
    add_list_arg(ap, "--algos", help="only these algorithms/policies (default: all)")
    ap.add_argument("--backend", choices=tuple(BACKENDS), default="analytic", help="mobility backend (default analytic)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per cell (default: the preset's, 3)")
    ap.add_argument("--episodes", type=int, default=None, help="training episodes per run (default: the preset's)")
    ap.add_argument("--workers", type=int, default=2, help="parallel worker processes (default 2)")
    ap.add_argument("--ray", metavar="ADDRESS", default=None, help="run on Ray: a cluster address, or 'local' (default: local worker processes)")
    ap.add_argument("--out", default=None, help="results folder (default: results/<preset>)")
    ap.add_argument("--dry-run", action="store_true", help="list the cells and exit")
    add_debug_arg(ap)
    args = ap.parse_args(argv)
    preset = args.preset
    b = PRESETS[preset]
    for flag, value in (("--episodes", args.episodes), ("--seeds", args.seeds), ("--workers", args.workers)):
        if value is not None and value < 1:  # 0 is refused, not replaced by the preset's value
            raise CosimError(f"{flag} must be at least 1, got {value}")
    budget = Budget(b.episodes if args.episodes is None else args.episodes, b.eval_episodes,
                    b.seeds if args.seeds is None else args.seeds)
    experiments = load_experiments(args.experiments, Path(args.experiments_dir) if args.experiments_dir
                                   else EXPERIMENTS_DIR)
    check_configs(args.config)
    base = flat_overrides(args.config, args.overrides)
    cells = grid(experiments, budget, args.backend, base=base)
    if args.algos:
        cells = [c for c in cells if c.algo in args.algos]
    validate(cells)
    root = Path(args.out or f"results/{preset}" + ("-sumo" if args.backend == "sumo" else ""))
    if args.dry_run:
        for c in cells:
            print(c.key)
        long = sum(1 for c in cells if c.eval_slots)
        print(f"{len(cells)} cells" + (f" ({long} of them long-horizon evaluations)" if long else ""))
        return 0
    # Locked (one reproduction per folder at a time), and never over a manifest.json or cells the user put there.
    with OutputDir(root, staged=False, writes=("manifest.json", "cells"), ours=_reproduction_file):
        write_manifest(root, experiments, budget, args.backend, preset, base)
        print(f"{len(cells)} runs ({', '.join(e.name for e in experiments)}), {budget.episodes} training episodes "
              f"each, {budget.seeds} seed(s), into {root}")
        t0 = time.time()
        report = run_grid(cells, root, workers=args.workers, ray_address=args.ray)
    print(f"done in {time.time() - t0:.0f} s: {len(report.records) - report.skipped} new, "
          f"{report.skipped} already done, {len(report.failed)} failed")
    for key, err in report.failed:
        print(f"  failed {key}: {err}", file=sys.stderr)
    print(f"next: dtcosim plot --results {root}")
    return 1 if report.failed else 0

