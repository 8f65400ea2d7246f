"""Evaluate trained checkpoints beside the reference policies, on the same unseen episodes.

    dtcosim evaluate --checkpoint ly-dtmppo_paper          # a packaged checkpoint (dtcosim policies)
    dtcosim evaluate --checkpoint runs/A/policy.safetensors runs/B --episodes 50 --backend sumo
    dtcosim evaluate --checkpoint X --policies equal,nearest
    dtcosim evaluate --checkpoint X --policies equal,dpp-opt --slots 600 --episodes 2
    dtcosim evaluate --checkpoint ly-dtmppo_set --cvs 8 --config rsu5
    dtcosim evaluate --checkpoint ly-dtmppo_default ly-mappo_default --policies dpp-opt --episodes 5

A set-architecture checkpoint runs on any --cvs and RSU layout (--config); an
MLP checkpoint only on the CV and RSU counts it was trained on (one-line error
elsewhere). With several trace folders (--traces A,B) every policy is evaluated
on each folder's held-out episodes, with its RSUs and CVs (at most --cvs), one
table per folder; summary.json then maps each folder to its summaries.

Every policy acts deterministically (a Gaussian actor's mean) on the same
episodes: episode i is reset with seed --eval-seed + i (default 10000 + i),
which training never uses (it draws from the stream of the config seed).
Writes summary.json (run_cosim's summary keys, per policy) and config.yaml to
--out, and prints mean cost with its 95% CI, reward, delay, energy, InstrT share
and deadline misses for every policy. --slots N runs N-slot episodes and adds the
long-horizon table: time-average energy per CV over the last half against the
budget, the energy queue Y at the end and its growth per slot over the last
half, whether Y has levelled off (it grows by at most 2 % of the budget per slot
there: cosim.evaluation.LEVELLED_SHARE), and the cost over the last half (the
time-average cost the Lyapunov theory speaks of) and over the whole episode.
Use N >= 3000 for the long-run constraint: over 600 slots Y is still rising.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from agents import make_policy, policy_names, refined_base
from agents.checkpoint import POLICY_FILE, config_for_policy, load_policy, options_of, read_policy_file
from cosim.cli import add_common_args, add_list_arg, check_checkpoints, config_from_args, packaged_checkpoint, save_run_config
from cosim.config import Config, CosimError, flat_overrides, to_dict
from cosim.evaluation import EVAL_SEED, comparison_table, evaluate_each, long_horizon_table
from cosim.outputs import OutputDir
from cosim.runner import MAX_SEED, check_episode_count, strict_json
from cosim.trace_mobility import mixes_folders, trace_folders
from dtcosim.commands.warmup import prepare


def checkpoint_labels(paths: list[str], algos: list[str]) -> list[str]:
    """One unambiguous row label per checkpoint: its algorithm, and where several share one, the
    shortest tail of its path that tells them apart (the run folder for runs/*/policy.safetensors)."""
    def tail(path: str, n: int) -> str:
        p = Path(path)
        parts = (p.parent.parts if p.name == POLICY_FILE else p.with_suffix("").parts) or (str(p),)
        return "/".join(parts[-n:])

    labels = list(algos)
    for algo in set(algos):
        idx = [i for i, a in enumerate(algos) if a == algo]
        if len(idx) < 2:
            continue
        for n in range(1, 1 + max(len(Path(paths[i]).parts) for i in idx)):
            names = [tail(paths[i], n) for i in idx]
            if len(set(names)) == len(names):
                break
        for k, (i, name) in enumerate(zip(idx, names)):
            dup = names[:k].count(name)  # the same file given twice
            labels[i] = f"{algo}:{name}" + (f"#{dup + 1}" if dup else "")
    return labels


def _evaluate(args: argparse.Namespace, cfg: Config, configs: dict[str, Config], policies: dict[str, object],
              checkpoints: dict[str, str]) -> dict[str, dict]:
    """Every policy on the same episodes under ``cfg`` (each under its own ``configs`` entry); prints the
    tables and returns the summaries by policy."""
    summaries, long = evaluate_each({n: (configs[n], p) for n, p in policies.items()}, args.episodes,
                                    seed=args.eval_seed, slots=args.slots, progress=not args.quiet)
    base = options_of(to_dict(cfg))
    for label in checkpoints:
        options = options_of(to_dict(configs[label]))
        if options != base:
            summaries[label]["options"] = options
    for label, path in checkpoints.items():
        summaries[label]["checkpoint"] = path
    print(f"{args.episodes} episodes per policy on {cfg.backend}, {cfg.scenario.n_cvs} CVs, {cfg.n_rsus} RSUs, "
          f"seeds {args.eval_seed}..{args.eval_seed + args.episodes - 1}")
    print(comparison_table(summaries))
    for label, s in summaries.items():
        if "options" in s:
            differ = " ".join(f"{k}={v}" for k, v in s["options"].items() if v != base[k])
            print(f"{label} runs under the options it was trained with: {differ}")
    for s in summaries.values():
        if "diagnostics_text" in s:
            print(s["diagnostics_text"])
    if long is not None:
        print(f"\nlong horizon: {args.slots} slots per episode, last half = slots {args.slots // 2}..{args.slots}")
        print(long_horizon_table(long))
        for name, lh in long.items():
            summaries[name]["long_horizon"] = dataclasses.asdict(lh)
    return summaries


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    scenario = add_common_args(ap, backend_default="analytic")
    scenario.add_argument("--episodes", type=int, default=20, help="evaluation episodes per policy (default 20)")
    scenario.add_argument("--eval-seed", type=int, default=EVAL_SEED,
                          help=f"episode i uses seed EVAL_SEED + i (default {EVAL_SEED})")
    scenario.add_argument("--slots", type=int, default=None,
                          help="episode length override (e.g. 600) with the long-horizon table "
                               "(default: the config's, 30)")
    pol = ap.add_argument_group("policy")
    add_list_arg(pol, "--checkpoint", metavar="NAME|PATH", default=[], type=packaged_checkpoint,
                 help="packaged checkpoints by name (dtcosim policies lists them), policy .safetensors files or "
                      "run folders (default: none)")
    add_list_arg(pol, "--policies", help="reference policies to include, none after the flag for none "
                                         f"(default: {' '.join(policy_names())})", default=None)
    out = ap.add_argument_group("output")
    out.add_argument("--out", default=None, metavar="DIR", help="output folder (default runs/eval__<time>)")
    out.add_argument("--quiet", action="store_true", help="no progress bars (default: progress bars)")
    args = ap.parse_args(argv)
    if args.episodes < 1:
        ap.error("--episodes must be at least 1")
    if args.slots is not None and args.slots < 2:
        ap.error("--slots must be at least 2")
    # Episode i is reset with seed eval_seed + i: a count that leaves the seed range from the default seed (or
    # from seed 0 where --eval-seed is given) is the count's fault, not the seed's.
    default = args.eval_seed == EVAL_SEED
    check_episode_count(args.episodes, EVAL_SEED if default else 0, "--eval-seed", " (the default)" if default else "")
    if not 0 <= args.eval_seed <= MAX_SEED + 1 - args.episodes:
        raise CosimError(f"--eval-seed must be in [0, {MAX_SEED + 1 - args.episodes}], got {args.eval_seed}")

    check_checkpoints(args.checkpoint)
    cfg = config_from_args(args, defaults={"trace.part": "eval"})  # traces: the held-out episodes
    if cfg.backend == "sumo":  # other SUMO maps: config.yaml records where the RSUs went
        from cosim.sumo_mobility import placed_config
        cfg = placed_config(cfg)
    names = policy_names() if args.policies is None else args.policies
    known = policy_names()
    for n in names:
        base = refined_base(n)
        if base not in known and not (base != n and Path(base).exists()):
            raise CosimError(f"unknown policy '{n}' in --policies (choose {', '.join(known)}, or refinedN:POLICY "
                             f"with POLICY one of those or a checkpoint path)")
    if not names and not args.checkpoint:
        raise CosimError("nothing to evaluate: give --checkpoint PATH and/or --policies")

    policies: dict[str, object] = {}
    checkpoints: dict[str, str] = {}  # label -> the path it was read from
    metas = [read_policy_file(path)[0] for path in args.checkpoint]  # a bad file fails here, before any episode
    # Each checkpoint runs under the action and observation options it was trained with (unless --config/--set
    # name them); the reference policies under the config's.
    explicit = flat_overrides(args.config, args.overrides)
    configs: dict[str, Config] = {}
    for path, label, meta in zip(args.checkpoint, checkpoint_labels(args.checkpoint, [m["algo"] for m in metas]),
                                 metas):
        checkpoints[label] = str(path)
        configs[label] = config_for_policy(cfg, meta, explicit)
        policies[label] = lambda sim, path=path, label=label: load_policy(path, env=sim, name=label)
    for n in names:
        if n in policies:
            raise CosimError(f"--policies {n} has the same name as a checkpoint's row; leave it out")
        configs[n] = cfg
        policies[n] = lambda sim, n=n: make_policy(n, sim.n_rsus, seed=args.eval_seed, env=sim)

    # Several trace folders (maps): a simulator replays one, so every policy is evaluated on each folder's
    # held-out episodes in turn, with that folder's RSUs and CVs; summary.json holds one summary per folder.
    folders = trace_folders(cfg) if mixes_folders(cfg) else None
    final = Path(args.out) if args.out else Path("runs") / f"eval__{time.strftime('%Y%m%d-%H%M%S')}"
    with OutputDir(final) as staged:  # locked; files land in --out only when the evaluation completes
        out = staged.path
        settings = {}
        if "dpp-opt" in names:  # the optimiser's resolved settings, as run_cosim saves them
            from cosim.optimizer import EXTRA_SECTION, DppOptConfig
            settings[EXTRA_SECTION] = DppOptConfig.from_config(cfg)
        if args.slots is not None:
            cfg = cfg.replace(**{"scenario.episode_slots": args.slots})
        save_run_config(cfg, out, settings=settings)
        prepare(cfg, names)  # first-run compiles, said before the progress bars start
        if folders is None:
            summaries = _evaluate(args, cfg, configs, policies, checkpoints)
        else:
            summaries = {"folders": {}}
            for k, f in enumerate(folders):
                print(("\n" if k else "") + f"traces in {f.folder}:")
                here = {n: f.apply(c) for n, c in configs.items()}
                summaries["folders"][f.folder] = _evaluate(args, f.apply(cfg), here, policies, checkpoints)
        (out / "summary.json").write_text(strict_json(summaries))
    print(f"wrote {final / 'summary.json'}, {final / 'config.yaml'}")
    return 0

