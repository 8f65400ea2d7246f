#!/usr/bin/env python
"""Speed of MAPPO training (rollout + PPO update), this checkout against another one, in one run.

Each measurement is a fresh process that builds the trainer of a shipped recipe (seed 0), plays one
warm-up iteration (numba compilation, first allocations) and then times ``--iterations`` iterations
of 16 x 30-slot episodes (80 agent-episodes for the set policy) in process CPU time
(``time.process_time``, one torch thread): the whole iteration and the PPO update inside it. The
two checkouts alternate (A B A B ...), ``--reps`` times, and the table gives the median of each and
the median of the per-pair ratios, so a drift of the shared machine's speed cancels. Each process
also prints a hash of the trained tensors and optimiser moments: equal hashes mean the two
checkouts trained bit-identically.

    git worktree add /tmp/ppo_base 125c673      # the code before the faster update
    python scripts/bench_train.py --base /tmp/ppo_base --iterations 12 --reps 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

RECIPES = {  # name -> (config files, overrides): checkpoints/README.md's commands
    "mlp (shipped.yaml)": (["configs/shipped.yaml"], {"backend": "analytic", "seed": 0}),
    "set (set_policy.yaml)": (["configs/set_policy.yaml"], {"seed": 0}),
}


def child(root: str, recipe: str, iterations: int) -> None:
    """Run in a fresh process with ``root`` first on sys.path; print one JSON line."""
    sys.path.insert(0, root)
    import torch

    import agents
    from agents import make_trainer
    from cosim.config import load_config

    assert Path(agents.__file__).resolve().is_relative_to(Path(root).resolve()), agents.__file__
    files, sets = RECIPES[recipe]
    cfg = load_config([str(Path(root) / f) for f in files]).replace(**sets)
    trainer = make_trainer("ly-dtmppo", cfg)
    update = trainer._update
    spent = [0.0]

    def timed_update(*args):
        t = time.process_time()
        out = update(*args)
        spent[0] += time.process_time() - t
        return out

    trainer._update = timed_update
    episodes = 0
    trainer.iterate(episodes)  # warm-up
    spent[0] = 0.0
    t0 = time.process_time()
    for _ in range(iterations):
        episodes += len(trainer.iterate(episodes).episodes)
    total = time.process_time() - t0
    h = hashlib.sha256()
    for t in [*trainer.actor_net.state_dict().values(), trainer.log_std, *trainer.critic.state_dict().values()]:
        h.update(t.detach().contiguous().numpy().tobytes())
    for opt in (trainer.actor_opt, trainer.critic_opt):
        for st in opt.state_dict()["state"].values():
            h.update(st["exp_avg"].numpy().tobytes() + st["exp_avg_sq"].numpy().tobytes())
    print(json.dumps({"total": total, "update": spent[0], "hash": h.hexdigest()[:12],
                      "torch": torch.__version__}))


def optimiser_steps(reps: int, steps: int = 200) -> None:
    """CPU time of one optimiser step of the MLP recipe's two networks: torch's Adam (foreach) with
    clip_grad_norm_ (the reference), FlatAdam (bit-identical) and torch's fused Adam on the flat buffer
    (not bit-identical, shown for comparison only)."""
    sys.path.insert(0, str(HERE))
    import torch
    from torch import nn

    from agents import make_trainer
    from agents.common import FlatAdam
    from cosim.config import load_config

    files, sets = RECIPES["mlp (shipped.yaml)"]
    tr = make_trainer("ly-dtmppo", load_config([str(HERE / f) for f in files]).replace(**sets))
    shapes = [[p.shape for p in (*tr.actor_net.parameters(), tr.log_std)], [p.shape for p in tr.critic.parameters()]]
    gen = torch.Generator().manual_seed(0)

    def setup(kind: str):
        nets = [[nn.Parameter(torch.randn(s, generator=gen) * 0.1) for s in group] for group in shapes]
        grads = [[torch.randn(s, generator=gen) * 1e-2 for s in group] for group in shapes]
        if kind == "reference":
            opts = [torch.optim.Adam(ps, lr=1e-4, eps=1e-5, foreach=True) for ps in nets]
        else:
            opts = [FlatAdam(ps, lr=1e-4, eps=1e-5) for ps in nets]

        def step() -> None:
            for ps, gs, opt in zip(nets, grads, opts):
                for p, g in zip(ps, gs):
                    p.grad = g
                if kind == "reference":
                    nn.utils.clip_grad_norm_(ps, 10.0, foreach=True)
                    opt.step()
                elif kind == "flat":
                    opt.clip_and_step(10.0)
                else:  # FlatAdam.clip_and_step with torch's fused Adam kernel in place of its seven ops
                    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(gs, 2.0)), 2.0)
                    torch.cat([t for g, pad in zip(gs, opt._pads) for t in (g.reshape(-1), pad)], out=opt._grad)
                    opt._grad.mul_(torch.clamp(10.0 / (total + 1e-6), max=1.0))
                    opt._steps[:1] += 1
                    torch._fused_adam_([opt._flat], [opt._grad], [opt._exp_avg], [opt._exp_avg_sq], [],
                                       [opt._steps[0]], lr=1e-4, beta1=0.9, beta2=0.999, weight_decay=0.0,
                                       eps=1e-5, amsgrad=False, maximize=False)
        return step

    runs = {k: setup(k) for k in ("reference", "flat", "fused")}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(reps):
        for k, step in runs.items():
            step()
            t = time.process_time()
            for _ in range(steps):
                step()
            times[k].append((time.process_time() - t) / steps * 1e6)
    ref = statistics.median(times["reference"])
    print(f"\noptimiser step of the MLP recipe's actor and critic ({sum(map(len, shapes))} tensors), "
          f"microseconds (median of {reps}), ratio to the reference")
    print("| Adam + clipping | us per step | speed-up |")
    print("|---|---|---|")
    for k, label in (("reference", "torch Adam(foreach) + clip_grad_norm_ (before)"),
                     ("flat", "FlatAdam.clip_and_step (now, bit-identical)"),
                     ("fused", "fused Adam on the flat buffer (not bit-identical, not used)")):
        print(f"| {label} | {statistics.median(times[k]):.0f} | {ref / statistics.median(times[k]):.2f}x |")


def measure(root: Path, recipe: str, iterations: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(root), recipe, str(iterations)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"benchmark process for {root} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_debug_arg(ap)
    ap.add_argument("--base", required=True, type=Path, help="the other checkout (e.g. a worktree of 125c673)")
    ap.add_argument("--iterations", type=int, default=12, help="timed iterations per process (default 12)")
    ap.add_argument("--reps", type=int, default=3, help="A/B pairs per recipe (default 3)")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated, of: " + ", ".join(RECIPES))
    ap.add_argument("--no-optimiser", action="store_true", help="skip the optimiser-step table")
    args = ap.parse_args()
    if not (args.base / "agents" / "mappo.py").is_file():
        raise SystemExit(f"--base {args.base}: not a dtcosim checkout (no agents/mappo.py)")
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    for r in recipes:
        if r not in RECIPES:
            raise SystemExit(f"--recipes: unknown recipe {r!r} (allowed: {', '.join(RECIPES)})")
    print(f"{args.iterations} iterations per process after one warm-up, {args.reps} A/B pairs; "
          f"CPU seconds per iteration (median), ratio = base / this (median of pairs)")
    print("| recipe | base iteration s | this iteration s | iteration speed-up | base update s | this update s "
          "| update speed-up | update share (base, this) | same tensors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for recipe in recipes:
        base, new = [], []
        for _ in range(args.reps):
            base.append(measure(args.base, recipe, args.iterations))
            new.append(measure(HERE, recipe, args.iterations))
        def med(rows: list[dict], k: str, n: int = args.iterations) -> float:
            return statistics.median(r[k] for r in rows) / n

        def ratio(k: str, base: list[dict] = base, new: list[dict] = new) -> float:
            return statistics.median(b[k] / a[k] for b, a in zip(base, new))
        same = "yes" if {r["hash"] for r in base} == {r["hash"] for r in new} and len({r["hash"] for r in new}) == 1 \
            else f"NO ({base[0]['hash']} vs {new[0]['hash']})"
        print(f"| {recipe} | {med(base, 'total'):.3f} | {med(new, 'total'):.3f} | {ratio('total'):.2f}x "
              f"| {med(base, 'update'):.3f} | {med(new, 'update'):.3f} | {ratio('update'):.2f}x "
              f"| {med(base, 'update') / med(base, 'total'):.0%}, {med(new, 'update') / med(new, 'total'):.0%} "
              f"| {same} |", flush=True)
    if not args.no_optimiser:
        optimiser_steps(max(args.reps, 3))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        main()  # a measured child imports the checkout it is given, never this one's cosim first
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from cosim.cli import add_debug_arg, run_main
        run_main(main)
