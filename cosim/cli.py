"""Shared command-line plumbing: common arguments, config loading, one-line errors."""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from .backends import BACKENDS
from .config import Config, CosimError, load_config, save_config, settings_dict, with_extra
from .resources import ResourceError, checkpoints, configs, resolve_checkpoint, resolve_config


class _ConfigAction(argparse._AppendAction):
    """--config NAME|YAML: a packaged config's name becomes its file; anything else stays as given (a file that
    is missing fails in check_configs, or in load_config, with one line)."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, packaged_config(values), option_string)


def packaged_config(value: str) -> str:
    """A --config value with a packaged config's name (or its path from the repository root) made its file."""
    try:
        return resolve_config(value)
    except ResourceError:
        return value


def check_configs(files: list[str]) -> None:
    """One line naming the first --config that is no file, with the names allowed."""
    for f in files:
        try:
            resolve_config(f)
        except ResourceError:
            raise CosimError(f"config file not found: {f} (nor a packaged config: {', '.join(configs())}; "
                             f"dtcosim configs describes them)") from None


def packaged_checkpoint(value: str) -> str:
    """A checkpoint value with a packaged checkpoint's name made its file; anything else as given."""
    try:
        return resolve_checkpoint(value)
    except ResourceError:
        return value


def check_checkpoints(paths: list[str], flag: str = "--checkpoint") -> None:
    for p in paths:
        try:
            resolve_checkpoint(p)
        except ResourceError:
            raise CosimError(f"{flag} {p}: policy checkpoint not found (nor a packaged checkpoint: "
                             f"{', '.join(checkpoints())}; dtcosim policies describes them)") from None


def resolve_policy(value: str) -> str:
    """A --policy value: a reference policy or dpp-opt by name, refinedN:POLICY, a checkpoint file or run folder,
    or a packaged checkpoint by name (``ly-dtmppo_default``), which becomes its path. A name that is none of
    these is one line listing the names; a missing path is left to make_policy's own error."""
    from agents import REFINED, policy_names
    names = policy_names()
    if value in names:
        return value
    m = REFINED.fullmatch(value)
    if m:
        return value[:m.start(2)] + resolve_policy(m.group(2))
    try:
        return resolve_checkpoint(value)
    except ResourceError:
        if "/" in value or value.endswith(".safetensors"):
            return value
        raise CosimError(f"unknown policy '{value}' (choose {', '.join(names)}, a packaged checkpoint: "
                         f"{', '.join(checkpoints())}, refinedN:POLICY, or a checkpoint path)") from None


def add_config_args(ap: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--config and --set, which every command that builds a config takes."""
    ap.add_argument("--config", action=_ConfigAction, default=[], metavar="NAME|YAML",
                    help="a packaged config by name (dtcosim configs lists them: congested, set_policy, ...) or a "
                         "YAML file, merged over the default config (repeatable; default: none)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                    help="override one config value, e.g. --set lyapunov.V=10 (repeatable; default: none)")


class _ListAction(argparse.Action):
    """Values separated by spaces or commas, the flag repeatable: ``--x a b``, ``--x a,b``, ``--x a --x b``.

    ``item_type`` converts each item after the split (argparse's own ``type`` would see "3,5" whole)."""

    def __init__(self, *args: Any, item_type: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.item_type = item_type

    def __call__(self, parser, namespace, values, option_string=None):
        items = [v for raw in values for v in str(raw).split(",") if v.strip()]
        if self.item_type is not None:
            try:
                items = [self.item_type(v.strip()) for v in items]
            except ValueError:
                parser.error(f"{option_string}: expected {self.item_type.__name__} values, got {' '.join(values)}")
        else:
            items = [v.strip() for v in items]
        seen = f"_{self.dest}_given"  # the first use replaces the default, later ones extend it
        before = getattr(namespace, self.dest, None) if getattr(namespace, seen, False) else None
        setattr(namespace, seen, True)
        setattr(namespace, self.dest, [*(before or []), *items])


def add_list_arg(ap: argparse.ArgumentParser, flag: str, help: str, metavar: str = "NAME", type: Any = None,
                 **kwargs: Any) -> None:
    """A list option, the one syntax of every command: values separated by spaces or commas, the flag
    repeatable; the flag with no value is the empty list."""
    ap.add_argument(flag, action=_ListAction, nargs="*", metavar=metavar, help=help, item_type=type, **kwargs)


def add_common_args(ap: argparse.ArgumentParser, backend_default: str | None = None) -> argparse._ArgumentGroup:
    """The "scenario" group: --config, --set and --backend, --cvs, --seed, --traces; and --debug. Returns the
    group, for a command's own scenario flags."""
    g = ap.add_argument_group("scenario")
    add_config_args(g)
    g.add_argument("--backend", choices=tuple(BACKENDS), default=None,
                   help=f"mobility backend (default: {backend_default or 'the config backend'})")
    g.add_argument("--cvs", type=int, default=None, help="number of client vehicles, the agents "
                                                          "(default: the config's scenario.n_cvs, 5)")
    g.add_argument("--seed", type=int, default=None, help="random seed (default: the config seed, 0)")
    add_list_arg(g, "--traces", metavar="DIR", default=None,
                 help="replay SUMO traces recorded by dtcosim traces (backend trace); several folders "
                      "(--traces A,B or --traces A --traces B) are mixed in training, one per episode batch "
                      "(default: none)")
    add_debug_arg(ap)
    return g


def add_map_args(ap: argparse.ArgumentParser) -> None:
    """The map flags of the commands that run SUMO: --map, --sumocfg, --net, --routes, --rsus, --penetration."""
    g = ap.add_argument_group("SUMO map", "default: the paper's road, a 700 m two-way street with 3 RSUs")
    g.add_argument("--map", default=None, metavar="NAME",
                   help="a named map, e.g. resco/ingolstadt21 (dtcosim maps lists them; sumo.map; default: none)")
    g.add_argument("--sumocfg", default=None, metavar="FILE", help="another SUMO map: its .sumocfg (default: none)")
    g.add_argument("--net", default=None, metavar="FILE",
                   help="another SUMO map: its .net.xml (with --routes, or random trips; default: none)")
    g.add_argument("--routes", default=None, metavar="FILE", help="route file for --net (default: random trips)")
    g.add_argument("--rsus", type=int, default=None, metavar="K",
                   help="other maps: place K RSUs where the traffic is (sumo.n_rsus; default: as many as the config's RSUs)")
    g.add_argument("--penetration", type=float, default=None, metavar="P",
                   help="other maps: each vehicle is a CV with probability P, anywhere on the map "
                        "(sumo.cv_pool = penetration, sumo.penetration = P; default: CV slots go to vehicles in RSU coverage)")


def map_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config changes the map flags ask for (empty when none is given)."""
    out = {k: v for k, v in (("sumo.map", args.map), ("sumo.sumocfg", args.sumocfg), ("sumo.net", args.net),
                             ("sumo.routes", args.routes), ("sumo.n_rsus", args.rsus)) if v is not None}
    if args.penetration is not None:
        out.update({"sumo.cv_pool": "penetration", "sumo.penetration": args.penetration})
    return out


def add_debug_arg(ap: argparse.ArgumentParser) -> None:
    """``--debug``: show the full traceback of an error (run_main reads it from the command line)."""
    ap.add_argument("--debug", action="store_true",
                    help="on an error, show the full Python traceback instead of one line")


def config_from_args(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> Config:
    """Config from default.yaml < script defaults < --config files < --set < dedicated flags."""
    check_configs(args.config)
    cfg = load_config(args.config, args.overrides, defaults=defaults)
    changes: dict[str, Any] = {}
    if getattr(args, "backend", None):
        changes["backend"] = args.backend
    if getattr(args, "cvs", None) is not None:
        changes["scenario.n_cvs"] = args.cvs
    if getattr(args, "seed", None) is not None:
        changes["seed"] = args.seed
    if getattr(args, "traces", None) is not None:
        if not args.traces:
            raise CosimError("--traces: name at least one folder recorded by dtcosim traces")
        changes["trace.dir"] = args.traces[0] if len(args.traces) == 1 else list(args.traces)
        changes["backend"] = args.backend or "trace"
    return cfg.replace(**changes) if changes else cfg


def save_run_config(cfg: Config, out_dir: str | Path, *policies: Any,
                    settings: dict[str, Any] | None = None) -> Path:
    """config.yaml in ``out_dir``, with the resolved settings (defaults included) of every policy that has
    them (``policy.settings``, a dataclass read from ``training.extra[policy.SETTINGS_SECTION]``) and of
    ``settings`` (training.extra section -> settings dataclass)."""
    sections = {p.SETTINGS_SECTION: settings_dict(p.settings) for p in policies
                if getattr(p, "SETTINGS_SECTION", None) and getattr(p, "settings", None) is not None}
    sections.update({k: settings_dict(v) for k, v in (settings or {}).items()})
    path = Path(out_dir) / "config.yaml"
    save_config(with_extra(cfg, sections) if sections else cfg, path)
    return path


def _oserror_line(exc: OSError) -> str:
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def run_main(main: Callable[[], int | None]) -> None:
    """Run a script's main: an error caused by the user's input or environment (CosimError, an
    OSError such as a missing or unreadable file or a full disk, MemoryError) -> one line on
    stderr and exit 2; Ctrl-C -> exit 130; SIGTERM or SIGHUP -> the same clean-up (checkpoint, SUMO),
    exit 143 or 129. ``--debug`` on the command line shows the traceback."""
    from .signals import Terminated, install, interrupt_behind
    debug = "--debug" in sys.argv[1:]
    install()  # SIGTERM and SIGHUP end the run as Ctrl-C does (checkpoints saved, SUMO closed), exit 128 + N
    try:
        code = main()
    except (CosimError, OSError, MemoryError) as exc:
        if debug:
            traceback.print_exc()
        if isinstance(exc, CosimError):
            print(f"error: {exc}", file=sys.stderr)
        elif isinstance(exc, MemoryError):
            print("error: out of memory (reduce training.n_envs, episodes or the scenario size)", file=sys.stderr)
        else:
            print(f"error: {_oserror_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, SystemError) as exc:
        # A Ctrl-C that lands inside a compiled (numba) kernel surfaces as a SystemError ("returned a result
        # with an exception set") whose cause is the KeyboardInterrupt.
        stop = interrupt_behind(exc)
        if stop is None:
            raise
        if debug:
            traceback.print_exc()
        if isinstance(stop, Terminated):
            print(f"terminated ({stop.name})", file=sys.stderr)
            sys.exit(128 + stop.signum)
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
