"""List the configs that ship inside the package, by the name --config takes.

    dtcosim configs                      # name, one line each, and the file
    dtcosim run --config congested       # use one by name (a path to your own YAML works too)
    dtcosim configs --show congested     # print one, to copy and edit

Every command merges its --config files, in order, over the default config.
"""

from __future__ import annotations

import argparse

from cosim.cli import add_debug_arg, check_configs, packaged_config
from cosim.resources import configs


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--show", metavar="NAME", type=packaged_config, default=None,
                    help="print this config's YAML instead of the list (default: the list)")
    ap.add_argument("--paths", action="store_true", help="also print each file's path (default: names only)")
    add_debug_arg(ap)
    args = ap.parse_args(argv)
    if args.show is not None:
        check_configs([args.show])
        with open(args.show, encoding="utf-8") as fh:
            print(fh.read(), end="")
        return 0
    found = configs()
    width = max(map(len, found))
    print("packaged configs (--config NAME):")
    for r in found.values():
        print(f"  {r.name:<{width}}  {r.description}" + (f"\n  {'':<{width}}  {r.path}" if args.paths else ""))
    return 0
