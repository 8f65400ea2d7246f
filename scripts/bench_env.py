#!/usr/bin/env python
"""Speed: environments, the per-slot optimiser and training, with ratios measured in this one run.

Same as ``dtcosim bench``; the code is in dtcosim/commands/bench.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cosim.cli import run_main  # noqa: E402
from dtcosim.commands.bench import main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
