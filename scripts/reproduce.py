#!/usr/bin/env python
"""Run the paper's experiment grid (Sec. VII) from configs/experiments/*.yaml.

Same as ``dtcosim reproduce``; the code is in dtcosim/commands/reproduce.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cosim.cli import run_main  # noqa: E402
from dtcosim.commands.reproduce import main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
