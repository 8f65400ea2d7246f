"""SUMO maps: list the named ones, draw one with its RSUs and traffic, generate a synthetic city.

    dtcosim maps                                            # the named maps installed here
    dtcosim maps --show resco/ingolstadt21 --rsus 20        # map.png: roads, RSUs, sampled traffic
    dtcosim maps --show my/map.sumocfg --out my_map.png
    dtcosim maps generate --kind grid --size 10 --vph 4000 --out maps/city10   # then --sumocfg maps/city10/city.sumocfg

RESCO's real-city maps come with the maps extra (pip install ".[maps]"). --show places the RSUs
exactly as a run with the same flags would (survey, warm-up, placement) and draws the positions
of the vehicles the survey sampled as a density.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cosim import maps
from cosim.cli import add_config_args, check_configs, add_debug_arg, add_map_args, map_overrides
from cosim.config import CosimError, load_config


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    argv = list(argv or [])
    if argv[:1] == ["generate"]:
        return _generate(argv[1:], prog)
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--show", default=None, metavar="MAP",
                    help="draw this map (a name, a .sumocfg or a .net.xml) with its RSUs and sampled traffic")
    ap.add_argument("--out", default="map.png", help="the picture --show writes (default map.png)")
    add_config_args(ap)
    add_map_args(ap)
    ap.add_argument("--cvs", type=int, default=None, help="CV slots (changes nothing about the placement; default: the config's, 5)")
    add_debug_arg(ap)
    args = ap.parse_args(argv)
    if args.show is None:
        _list()
        return 0
    target = args.show
    if target.endswith(".sumocfg"):
        args.sumocfg = target
    elif target.endswith(".net.xml") or target.endswith(".net.xml.gz"):
        args.net = target
    else:
        args.map = target
    check_configs(args.config)
    cfg = load_config(args.config, args.overrides).replace(backend="sumo", **map_overrides(args))
    from cosim.map_figure import draw_map  # matplotlib only here
    path = draw_map(cfg, Path(args.out))
    print(f"wrote {path}")
    return 0


def _list() -> None:
    found = maps.available_maps()
    width = max((len(m.name) for m in found), default=10)
    print(f"{'map':<{width}}  what")
    for m in found:
        print(f"{m.name:<{width}}  {m.description}  ({m.sumocfg})")
    if not any(m.name.startswith("resco/") for m in found):
        print(f"\nresco/{{{','.join(maps.RESCO_MAPS)}}}: real-city maps, not installed ({maps.MAPS_EXTRA})")
    print("\nrun one with: dtcosim run --map NAME [--cvs I --rsus K --penetration P]; draw it with "
          "dtcosim maps --show NAME")


def _generate(argv: list[str], prog: str | None) -> int:
    ap = argparse.ArgumentParser(prog=f"{prog or 'dtcosim maps'} generate",
                                 description="A synthetic city: a netgenerate network with traffic lights and "
                                             "randomTrips.py demand, written as city.sumocfg into --out.")
    d = maps.CitySpec()
    ap.add_argument("--kind", choices=maps.CITY_KINDS, default=d.kind, help=f"network shape (default {d.kind})")
    ap.add_argument("--size", type=int, default=d.size,
                    help=f"junctions per side (grid), circles (spider) or 10x iterations (random) (default {d.size})")
    ap.add_argument("--block", type=float, default=d.block_m, metavar="M",
                    help=f"distance between junctions, m (default {d.block_m:g})")
    ap.add_argument("--lanes", type=int, default=d.lanes, help=f"lanes per direction (default {d.lanes})")
    ap.add_argument("--vph", type=float, default=d.vehicles_per_hour,
                    help=f"vehicles inserted per hour (default {d.vehicles_per_hour:g})")
    ap.add_argument("--duration", type=float, default=d.duration_s, metavar="S",
                    help=f"seconds of demand (default {d.duration_s:g})")
    ap.add_argument("--seed", type=int, default=d.seed, help=f"netgenerate and randomTrips.py seed (default {d.seed})")
    ap.add_argument("--out", required=True, help="folder for city.net.xml, city.rou.xml, city.sumocfg")
    add_debug_arg(ap)
    args = ap.parse_args(argv)
    out = Path(args.out)
    if (out / "city.sumocfg").exists():
        raise CosimError(f"--out: {out} already holds a city (city.sumocfg); choose a new folder")
    spec = maps.CitySpec(args.kind, args.size, args.block, args.lanes, args.vph, args.duration, args.seed)
    cfg = maps.generate_city(out, spec)
    print(f"wrote {out}/city.net.xml, city.rou.xml, city.sumocfg; run it with: dtcosim run --sumocfg {cfg}")
    return 0
