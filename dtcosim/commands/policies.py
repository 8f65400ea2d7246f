"""List the policies --policy and --checkpoint take by name: the reference policies, the per-slot
optimiser and the checkpoints that ship inside the package.

    dtcosim policies
    dtcosim run --policy ly-dtmppo_default --backend analytic
    dtcosim evaluate --checkpoint ly-dtmppo_default ly-mappo_default
    dtcosim policies --digest runs/x/policy.safetensors   # its tensors' sha256, beside the shipped files'

A checkpoint of your own (runs/<run>/policy.safetensors, or its run folder) works by path.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agents import default_policy
from cosim.cli import add_debug_arg
from cosim.policies import REFERENCE_POLICIES
from cosim.resources import checkpoints, short_name

SOLVER_ABOUT = {"dpp-opt": "the per-slot optimiser of the drift-plus-penalty cost, full information (slow, a bound)"}


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paths", action="store_true", help="also print each checkpoint's path (default: names only)")
    ap.add_argument("--digest", nargs="*", metavar="FILE", default=None,
                    help="print the sha256 of the tensors (not the header) of the packaged checkpoints and of FILEs: "
                         "a retrain from checkpoints/README.md's command gives the same digest (default: off)")
    add_debug_arg(ap)
    args = ap.parse_args(argv)
    packaged = checkpoints()
    if args.digest is not None:
        from agents.checkpoint import tensor_digest
        from cosim.resources import resolve_checkpoint
        targets = [(r.name, r.path) for r in packaged.values()] + [(f, resolve_checkpoint(f)) for f in args.digest]
        for name, path in targets:
            file = Path(path) / "policy.safetensors" if Path(path).is_dir() else Path(path)  # a run folder
            print(f"{tensor_digest(file)}  {name}")
        return 0
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
