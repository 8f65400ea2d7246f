#!/usr/bin/env python
"""Figures (PNG) and results.md from a reproduction grid.

    python scripts/plot.py                        # results/quick if it exists, else results/full
    python scripts/plot.py --results results/full --out docs/figures
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.figures import make_all  # noqa: E402
from cosim.cli import add_debug_arg, run_main  # noqa: E402
from cosim.config import CosimError  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=None, help="the folder reproduce.py wrote")
    ap.add_argument("--out", default=None, help="where figures and results.md go (default: the results folder)")
    add_debug_arg(ap)
    args = ap.parse_args()
    if args.results is None:
        found = [p for p in (Path("results/quick"), Path("results/full")) if (p / "cells").is_dir()]
        if not found:
            raise CosimError("no results found: run python scripts/reproduce.py --quick first")
        args.results = found[0]
    root = Path(args.results)
    if not (root / "cells").is_dir():
        raise CosimError(f"{root} holds no results (expected {root / 'cells'}): run scripts/reproduce.py first")
    try:
        figures, results = make_all(root, Path(args.out) if args.out else None)
    except FileNotFoundError as exc:
        raise CosimError(str(exc)) from None
    for f in figures:
        print(f"wrote {f}")
    print(f"wrote {results}")
    return 0


if __name__ == "__main__":
    run_main(main)
