"""The main job: co-simulate traffic and offloading with a policy, and report what it did.

    dtcosim run                          # SUMO headless on the paper's road, default policy
    dtcosim run --gui                    # watch it in sumo-gui (needs a display)
    dtcosim run --gui --record frames/   # and record sumo-gui, the dashboard and a GIF
    dtcosim run --backend analytic --record frames/   # headless: the dashboard alone
    dtcosim run --sumocfg my/map.sumocfg    # RSUs placed where its traffic is, CVs inside coverage
    dtcosim run --map resco/ingolstadt21 --cvs 200 --rsus 20 --penetration 0.7   # a real city (maps extra)
    dtcosim run --net my.net.xml --rsus 5 --cvs 8
    dtcosim run --backend analytic --episodes 3 --policy nearest
    dtcosim run --cvs 9 --config rsu5          # the shipped policy, any fleet and RSU layout
    dtcosim run --backend analytic --config congested --policy ly-dtmppo_default

--config takes a packaged config by name (dtcosim configs lists them) or a YAML file;
--policy a reference policy, a packaged checkpoint by name (dtcosim policies) or a path.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from tqdm import tqdm

from agents import FALLBACK_POLICY, config_for, default_policy, make_policy
from cosim.cli import add_common_args, add_map_args, config_from_args, map_overrides, resolve_policy, save_run_config
from cosim.config import Config, CosimError, flat_overrides
from cosim.env import BatchCoSim, StepOutput
from cosim.gui import SlotDecisions, decision_colors, decision_label, short_label, slot_line
from cosim.outputs import OutputDir
from cosim.resources import short_name
from cosim.runner import check_episode_count, episode_table, run_episodes, write_summary
from dtcosim.commands.warmup import prepare


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    scenario = add_common_args(ap, backend_default="sumo")
    scenario.add_argument("--episodes", type=int, default=1, help="episodes to run (default 1)")
    add_map_args(ap)
    pol = ap.add_argument_group("policy")
    pol.add_argument("--policy", default=None, metavar="NAME|PATH",
                     help="local | nearest | equal | random | dpp-opt | a packaged checkpoint (dtcosim policies: "
                          "ly-dtmppo_set, ly-dtmppo_default, ...) | a checkpoint path or run folder "
                          "(default: ly-dtmppo_set, the set-structured Ly-DTMPPO for any --cvs and RSU layout)")
    out = ap.add_argument_group("output")
    out.add_argument("--out", default="runs/cosim", metavar="DIR",
                     help="output folder for slots.csv, summary.json, config.yaml (default runs/cosim)")
    out.add_argument("--record", metavar="DIR", default=None,
                     help="save the dashboard (and with --gui sumo-gui's view) as one PNG per slot into DIR, "
                          "and both side by side as DIR/cosim.gif (default: no recording)")
    out.add_argument("--fps", type=float, default=2.0, help="slots per second of the --record animation (default 2)")
    show = ap.add_argument_group("display")
    show.add_argument("--gui", action="store_true",
                      help="run sumo-gui and colour each CV by its decision (needs a display; default: headless)")
    show.add_argument("--dashboard", action=argparse.BooleanOptionalAction, default=None,
                      help="a live matplotlib window of cost, reward, delays, splits, queues and the twin "
                           "(default: on with --gui)")
    show.add_argument("--delay", type=int, default=200, metavar="MS", help="sumo-gui delay per step, ms (default 200)")
    show.add_argument("--print-slots", action="store_true",
                      help="print one line per slot (default: on with --gui, else off)")
    show.add_argument("--quiet", action="store_true", help="no progress bar (default: a progress bar)")
    args = ap.parse_args(argv)
    if args.episodes < 1:
        ap.error("--episodes must be at least 1")
    if not args.fps > 0:
        ap.error("--fps must be above 0")
    show_dashboard = args.dashboard if args.dashboard is not None else args.gui
    sumo_map = map_overrides(args)
    if args.gui or sumo_map:
        needs = "--gui" if args.gui else "--map/--sumocfg/--net/--routes"
        if args.backend not in (None, "sumo"):
            raise CosimError(f"{needs} needs the SUMO backend, not --backend {args.backend}")
        args.backend = "sumo"
    cfg = config_from_args(args, defaults={"backend": "sumo"})
    check_episode_count(args.episodes, cfg.seed, "--seed")
    if sumo_map:
        cfg = cfg.replace(**sumo_map)
    if args.gui:
        cfg = cfg.replace(**{"sumo.extra_args": [*cfg.sumo.extra_args, "--delay", str(args.delay)]})
    policy_name = resolve_policy(args.policy) if args.policy else default_policy()
    # A checkpoint runs under the action and observation options it was trained with, unless set here.
    cfg = config_for(policy_name, cfg, flat_overrides(args.config, args.overrides))

    final = Path(args.out)
    record = Path(args.record) if args.record else None
    if record is not None:
        record.mkdir(parents=True, exist_ok=True)
        # A new recording replaces an old one in DIR (only the files it writes itself).
        for old in [*record.glob("slot_*.png"), *record.glob("dash_*.png"), record / "cosim.gif"]:
            old.unlink(missing_ok=True)
    with OutputDir(final) as staged:  # locked; the files land in --out only when the run completes
        animation = _run(args, cfg, policy_name, staged.path, record, show_dashboard)
    print(f"wrote {final / 'slots.csv'}, {final / 'summary.json'}, {final / 'config.yaml'}"
          + (f", {record}/{'slot_*.png, ' if args.gui else ''}dash_*.png, {animation}" if record else ""))
    return 0


def _run(args: argparse.Namespace, cfg: Config, policy_name: str, out: Path, record: Path | None,
         show_dashboard: bool) -> Path | None:
    """The co-simulation itself, writing into ``out``; returns the --record animation's path."""
    with BatchCoSim(cfg, n_envs=1, seed=cfg.seed, **({"gui": True} if args.gui else {})) as sim:
        try:
            policy = make_policy(policy_name, sim.n_rsus, seed=cfg.seed, env=sim)
        except CosimError as exc:
            if args.policy is not None or policy_name == FALLBACK_POLICY:
                raise
            # A default checkpoint that cannot drive this environment (e.g. an MLP on other CV or RSU counts).
            print(f"note: {exc}; using the {FALLBACK_POLICY} policy instead", file=sys.stderr)
            policy_name = FALLBACK_POLICY
            policy = make_policy(policy_name, sim.n_rsus, seed=cfg.seed, env=sim)
        # Kernels not compiled yet are compiled now, said first, so the progress bar below times only the run.
        prepare(sim.cfg, [policy_name])
        # With the RSUs where they were placed and the policy's resolved settings (dpp-opt's).
        save_run_config(sim.cfg, out, policy)
        show_slots = args.print_slots or args.gui
        dashboard = None
        if show_dashboard or record is not None:  # off in a plain headless run: it costs ~0.2 s a slot
            from cosim.dashboard import Dashboard
            title = f"{short_name(policy_name)} on {cfg.backend}, {sim.n_cvs} CVs, {sim.n_rsus} RSUs"
            # sumo-gui's window is at the top left
            below_gui = (0, sim.mobility.envs[0].window_size[1] + 30) if args.gui else None
            dashboard = Dashboard(sim, show=show_dashboard, record_dir=record, title=title, window_pos=below_gui)
        frame = 0

        def before_advance(result, decision) -> None:
            # The slot's decisions on the vehicles before they move; sumo-gui draws the frame after the move.
            nonlocal frame
            view = SlotDecisions(result, decision)
            n = sim.n_cvs
            sim.mobility.show_decisions(decision_colors(view), [decision_label(view, 0, i) for i in range(n)],
                                        [short_label(view, 0, i) for i in range(n)])
            if record is not None:
                sim.mobility.screenshot(record / f"slot_{frame:05d}.png")
            frame += 1

        if args.gui:
            sim.before_advance = before_advance

        def on_slot(step: StepOutput, episode: int, slot: int) -> None:
            if dashboard is not None:
                dashboard.update(step, sim, episode, slot)
            if show_slots:
                tqdm.write(f"ep {episode} {slot_line(step, slot)}")

        try:
            result = run_episodes(sim, policy, args.episodes, seed=cfg.seed, csv_path=out / "slots.csv",
                                  on_slot=on_slot, progress=not args.quiet, policy_name=short_name(policy_name))
        finally:
            if dashboard is not None:
                dashboard.close()
    animation = None
    if record is not None:
        from cosim.dashboard import write_animation
        animation = write_animation(record, fps=args.fps)
    where = {"sumo": cfg.sumo.map or cfg.sumo.sumocfg or cfg.sumo.net or "the paper's road", "analytic": "analytic road",
             "trace": f"traces in {cfg.trace.dir}, {cfg.trace.part} part"}.get(cfg.backend, cfg.backend)
    print(f"{short_name(policy_name)} on {cfg.backend} ({where}), "
          f"{sim.n_cvs} CVs, {sim.n_rsus} RSUs, {args.episodes} episode(s) of {cfg.scenario.episode_slots} slots")
    print(episode_table(result))
    s = result.summary
    print(f"mean system cost {s['mean_cost']:.4f}, reward {s['mean_reward']:.3f}, delay {s['mean_delay_s']:.4f} s, "
          f"energy {s['mean_energy_j']:.2f} J, InstrT {s['instr_share']:.1%}, "
          f"deadline misses {s['deadline_miss_rate']:.1%}")
    if cfg.backend != "analytic":
        print(f"CV slots active {s['active_share']:.1%}, of them covered by an RSU {s['covered_share']:.1%}; "
              f"the busiest RSU is the nearest of {s['busiest_rsu_share']:.1%} of the covered ones "
              f"({s['busiest_rsu_share'] * sim.n_rsus:.1f}x its fair share)")
    if hasattr(policy, "summary_text"):  # the per-slot optimiser says how converged its solutions are
        print(policy.summary_text())
    if getattr(sim.mobility, "map_summary", None) is not None:  # other maps: size, traffic, RSU coverage
        s["map"] = dataclasses.asdict(sim.mobility.map_summary)
    if short_name(policy_name) != policy_name:
        s["checkpoint"] = policy_name
    write_summary(out / "summary.json", s, result.episodes)
    return animation

