#!/usr/bin/env python
"""Figures (PNG) and results.md from a reproduction grid.

Same as ``dtcosim plot``; the code is in dtcosim/commands/plot.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cosim.cli import run_main  # noqa: E402
from dtcosim.commands.plot import main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
