#!/usr/bin/env python
"""The queues of the default scenario and each preset under configs/scenarios/, policy by policy.

Same as ``dtcosim queues``; the code is in dtcosim/commands/queues.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cosim.cli import run_main  # noqa: E402
from dtcosim.commands.queues import main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
