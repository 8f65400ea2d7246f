#!/usr/bin/env python
"""The main job: co-simulate traffic and offloading with a policy, and report what it did.

Same as ``dtcosim run``; the code is in dtcosim/commands/run.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cosim.cli import run_main  # noqa: E402
from dtcosim.commands.run import main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
