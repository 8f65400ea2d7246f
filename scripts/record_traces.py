#!/usr/bin/env python
"""Record SUMO mobility for the `trace` backend: many episodes, in parallel worker processes or on Ray.

Same as ``dtcosim traces``; the code is in dtcosim/commands/traces.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cosim.cli import run_main  # noqa: E402
from dtcosim.commands.traces import main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
