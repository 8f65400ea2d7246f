#!/usr/bin/env python
"""How well dpp-opt solves a scenario's slots, and whether more starts or iterations help.

Same as ``dtcosim convergence``; the code is in dtcosim/commands/convergence.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cosim.cli import run_main  # noqa: E402
from dtcosim.commands.convergence import main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
