"""Train a multi-agent policy on the co-simulation (training.n_envs episodes at once).

    dtcosim train --algo ly-dtmppo                       # the paper's budget, analytic road
    dtcosim train --algo ly-mappo --episodes 300 --seed 1
    dtcosim train --resume runs/analytic-5cv-3rsu__ly-dtmppo__0__20260101-120000
    dtcosim train --algo ly-dtmppo --set training.arch=set --traces traces/road,traces/grid   # mix recorded maps
    dtcosim train --algo ly-dtmppo --config set_policy --seed 0     # the shipped ly-dtmppo_set's recipe

A run folder (default runs/<scenario>__<algo>__<seed>__<time>) gets config.yaml,
metrics.csv, tb/ (TensorBoard), checkpoint.safetensors (for --resume),
policy.safetensors (for dtcosim run --policy and dtcosim evaluate) and curves.png.
Ctrl-C saves a checkpoint; --resume DIR continues to the same result as an
uninterrupted run.
"""

from __future__ import annotations

import argparse
import sys

from agents import ALGORITHMS, get_algorithm, train
from agents.common import CURVES_FILE, METRICS_FILE, POLICY_FILE
from cosim.cli import add_common_args, config_from_args
from cosim.config import CosimError, load_config
from dtcosim.commands.warmup import prepare


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    scenario = add_common_args(ap, backend_default="the config's, analytic")
    scenario.add_argument("--episodes", type=int, default=None,
                          help="training episodes (default: the config's training.episodes, 1800)")
    pol = ap.add_argument_group("policy")
    pol.add_argument("--algo", help=f"algorithm: {' | '.join(ALGORITHMS)} (required; not with --resume)")
    out = ap.add_argument_group("output")
    out.add_argument("--out", default=None, metavar="DIR", help="run folder (default: runs/scenario__algo__seed__time)")
    out.add_argument("--resume", default=None, metavar="DIR",
                     help="continue the interrupted run in DIR (default: a new run)")
    out.add_argument("--no-tensorboard", action="store_true",
                     help="skip TensorBoard event files (default: written to RUN/tb)")
    show = ap.add_argument_group("display")
    show.add_argument("--quiet", action="store_true", help="no progress bar (default: a progress bar)")
    args = ap.parse_args(argv)
    if args.episodes is not None and args.episodes < 1:
        ap.error("--episodes must be at least 1")

    if args.resume:
        given = [f for f, v in (("--config", args.config), ("--set", args.overrides), ("--backend", args.backend),
                                ("--cvs", args.cvs), ("--seed", args.seed), ("--out", args.out),
                                ("--traces", args.traces)) if v]
        if given:
            raise CosimError(f"--resume takes the run's own config; drop {', '.join(given)}")
        cfg = None
    else:
        if not args.algo:
            raise CosimError(f"--algo is required (choose {', '.join(ALGORITHMS)})")
        get_algorithm(args.algo)
        cfg = config_from_args(args)
        if args.episodes is not None:
            cfg = cfg.replace(**{"training.episodes": args.episodes})

    prepare(cfg if cfg is not None else load_config(), [] if args.algo != "ly-dagger" else ["dpp-opt"])
    result = train(args.algo, cfg, out=args.out, resume=args.resume, episodes=args.episodes,
                   progress=not args.quiet, tensorboard=not args.no_tensorboard,
                   log=lambda msg: print(msg, file=sys.stderr))
    m = result.metrics[-min(len(result.metrics), 50):]
    run = result.run_dir
    print(f"trained {result.episodes} episodes in {result.seconds:.1f} s ({result.slots_per_s:.0f} slots/s); "
          f"last {len(m)} training episodes (exploring): mean cost {sum(x.cost for x in m) / len(m):.4f}, "
          f"reward {sum(x.reward for x in m) / len(m):.3f}")
    print(f"wrote {run / POLICY_FILE}, {run / METRICS_FILE}, {run / CURVES_FILE}, {run / 'config.yaml'}")
    print(f"evaluate: dtcosim evaluate --checkpoint {run / POLICY_FILE}")
    if not args.no_tensorboard:
        print(f"curves in TensorBoard: tensorboard --logdir {run / 'tb'}   (then open http://localhost:6006)")
    return 0

