#!/usr/bin/env python
"""The transfer table: one trained policy on fleets and RSU layouts it was not trained on.

Same as ``dtcosim transfer``; the code is in dtcosim/commands/transfer.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cosim.cli import run_main  # noqa: E402
from dtcosim.commands.transfer import main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
