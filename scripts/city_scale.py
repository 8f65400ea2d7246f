#!/usr/bin/env python
"""City scale: policies on real city maps with many CVs and RSUs, with their speed.

Same as ``dtcosim city``; the code is in dtcosim/commands/city.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cosim.cli import run_main  # noqa: E402
from dtcosim.commands.city import main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
