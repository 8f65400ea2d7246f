"""List the policies --policy and --checkpoint take by name: the reference policies, the per-slot
optimiser and the checkpoints that ship inside the package.

    dtcosim policies
    dtcosim run --policy ly-dtmppo_default --backend analytic
    dtcosim evaluate --checkpoint ly-dtmppo_default ly-mappo_default

A checkpoint of your own (runs/<run>/policy.safetensors, or its run folder) works by path.
"""

from __future__ import annotations

import argparse

from agents import default_policy
from cosim.cli import add_debug_arg
from cosim.policies import REFERENCE_POLICIES
from cosim.resources import checkpoints, short_name

SOLVER_ABOUT = {"dpp-opt": "the per-slot optimiser of the drift-plus-penalty cost, full information (slow, a bound)"}


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paths", action="store_true", help="also print each checkpoint's path (default: names only)")
    add_debug_arg(ap)
    args = ap.parse_args(argv)
    packaged = checkpoints()
    rows = [(n, " ".join((c.__doc__ or "").split()).rstrip(".")) for n, c in REFERENCE_POLICIES.items()]
    rows += list(SOLVER_ABOUT.items())
    width = max(len(n) for n in [*dict(rows), *packaged])
    default = short_name(default_policy())
    print("reference policies (--policy NAME, evaluate --policies NAME):")
    for name, about in rows:
        print(f"  {name:<{width}}  {about}")
    print("packaged checkpoints (--policy NAME, evaluate --checkpoint NAME):")
    for r in packaged.values():
        mark = " [default]" if r.name == default else ""
        print(f"  {r.name:<{width}}  {r.description}{mark}" + (f"\n  {'':<{width}}  {r.path}" if args.paths else ""))
    return 0
