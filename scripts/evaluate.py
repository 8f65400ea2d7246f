#!/usr/bin/env python
"""Evaluate trained checkpoints beside the reference policies, on the same unseen episodes.

Same as ``dtcosim evaluate``; the code is in dtcosim/commands/evaluate.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cosim.cli import run_main  # noqa: E402
from dtcosim.commands.evaluate import main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
