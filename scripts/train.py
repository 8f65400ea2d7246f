#!/usr/bin/env python
"""Train a multi-agent policy on the co-simulation (training.n_envs episodes at once).

Same as ``dtcosim train``; the code is in dtcosim/commands/train.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cosim.cli import run_main  # noqa: E402
from dtcosim.commands.train import main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
