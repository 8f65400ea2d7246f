"""Figures (PNG) and results.md from a reproduction grid.

    dtcosim plot                        # results/quick if it exists, else results/full
    dtcosim plot --results results/full --out docs/figures
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agents.figures import make_all
from cosim.cli import add_debug_arg
from cosim.config import CosimError


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=None, help="the folder dtcosim reproduce wrote (default: results/quick if it exists, else results/full)")
    ap.add_argument("--out", default=None, help="where figures and results.md go (default: the results folder)")
    add_debug_arg(ap)
    args = ap.parse_args(argv)
    if args.results is None:
        found = [p for p in (Path("results/quick"), Path("results/full")) if (p / "cells").is_dir()]
        if not found:
            raise CosimError("no results found: run dtcosim reproduce --preset quick first")
        args.results = found[0]
    root = Path(args.results)
    if not (root / "cells").is_dir():
        raise CosimError(f"{root} holds no results (expected {root / 'cells'}): run dtcosim reproduce first")
    try:
        figures, results = make_all(root, Path(args.out) if args.out else None)
    except FileNotFoundError as exc:
        raise CosimError(str(exc)) from None
    for f in figures:
        print(f"wrote {f}")
    print(f"wrote {results}")
    return 0

