#!/usr/bin/env python
"""The contention table: every policy where CVs share RSUs, with its decision time.

Same as ``dtcosim contention``; the code is in dtcosim/commands/contention.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cosim.cli import run_main  # noqa: E402
from dtcosim.commands.contention import main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
