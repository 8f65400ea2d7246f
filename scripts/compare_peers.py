#!/usr/bin/env python
"""Compare the project's MAPPO with the same environments trained by other RL libraries.

Same as ``dtcosim peers``; the code is in dtcosim/commands/peers.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cosim.cli import run_main  # noqa: E402
from dtcosim.commands.peers import main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
