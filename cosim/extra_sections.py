"""The sections of ``training.extra``: a registry the algorithms fill in and config validation consults.

Each algorithm reads its own settings from ``training.extra.<section>`` (:func:`cosim.config.load_settings`)
and registers the section names it reads (``agents`` registers its learners' when imported), so that a
misspelt section fails at once instead of being ignored. The simulation layer registers only its own
(``dpp_opt``, the per-slot optimiser's). Names are checked once an algorithm package has registered:
a process that runs only the simulation never reads the learners' sections and keeps them as they are.
"""

from __future__ import annotations

from typing import Iterable

from .errors import ConfigError

_BUILTIN = ("dpp_opt",)                # read by cosim.optimizer
_REGISTERED: dict[str, str] = {}      # section -> who reads it, in registration order


def register_section(name: str, owner: str) -> None:
    """Declare that ``owner`` (e.g. an algorithm's name) reads ``training.extra.<name>``."""
    _REGISTERED.setdefault(name, owner)


def sections() -> tuple[str, ...]:
    """Every known section: the registered ones, then the simulation layer's own."""
    return tuple(_REGISTERED) + tuple(s for s in _BUILTIN if s not in _REGISTERED)


def check_sections(names: Iterable[str]) -> None:
    """One-line ConfigError for the first section no registered reader knows (none registered: no check)."""
    if not _REGISTERED:
        return
    known = sections()
    unknown = [k for k in names if k not in known]
    if unknown:
        raise ConfigError(f"unknown config key 'training.extra.{unknown[0]}' (allowed in training.extra: "
                          f"{', '.join(known)})")
