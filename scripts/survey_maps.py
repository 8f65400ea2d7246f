#!/usr/bin/env python
"""Run policies on SUMO's shipped scenarios and fresh netgenerate nets, with no flag but the map.

Same as ``dtcosim survey``; the code is in dtcosim/commands/survey.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cosim.cli import run_main  # noqa: E402
from dtcosim.commands.survey import main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
