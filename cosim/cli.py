"""Shared command-line plumbing: common arguments, config loading, one-line errors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from .backends import BACKENDS
from .config import Config, CosimError, load_config, save_config


def add_common_args(ap: argparse.ArgumentParser, backend_default: str | None = None) -> None:
    ap.add_argument("--config", action="append", default=[], metavar="YAML",
                    help="YAML file merged over configs/default.yaml (repeatable)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                    help="override one config value, e.g. --set lyapunov.V=10 (repeatable)")
    ap.add_argument("--backend", choices=tuple(BACKENDS), default=None,
                    help=f"mobility backend (default: {backend_default or 'the config backend'})")
    ap.add_argument("--cvs", type=int, default=None, help="number of client vehicles (agents)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: the config seed)")
    ap.add_argument("--traces", default=None, metavar="DIR",
                    help="replay SUMO traces recorded by scripts/record_traces.py (backend trace)")


def config_from_args(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> Config:
    """Config from default.yaml < script defaults < --config files < --set < dedicated flags."""
    cfg = load_config(args.config, args.overrides, defaults=defaults)
    changes: dict[str, Any] = {}
    if getattr(args, "backend", None):
        changes["backend"] = args.backend
    if getattr(args, "cvs", None) is not None:
        changes["scenario.n_cvs"] = args.cvs
    if getattr(args, "seed", None) is not None:
        changes["seed"] = args.seed
    if getattr(args, "traces", None) is not None:
        changes["trace.dir"] = args.traces
        changes["backend"] = args.backend or "trace"
    return cfg.replace(**changes) if changes else cfg


def save_run_config(cfg: Config, out_dir: str | Path) -> Path:
    path = Path(out_dir) / "config.yaml"
    save_config(cfg, path)
    return path


def run_main(main: Callable[[], int | None]) -> None:
    """Run a script's main: CosimError -> one line on stderr and exit 2; Ctrl-C -> exit 130."""
    try:
        code = main()
    except CosimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
