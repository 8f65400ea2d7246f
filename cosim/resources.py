"""Where the project's data lives: the repository's folders, or the same files installed as package data.

``configs/`` and ``checkpoints/`` are top-level folders of the repository; a wheel
(``pip install .``) ships them inside the package as ``cosim/_data/configs`` and
``cosim/_data/checkpoints`` (see pyproject.toml). Code asks here, never for a path
relative to the repository, so both a checkout and an installed package work from any folder.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
REPO_ROOT = _PACKAGE.parent
RESOURCES = ("configs", "checkpoints")


def resource_dir(name: str) -> Path:
    """The folder ``configs`` or ``checkpoints``: installed package data first, else the checkout's."""
    if name not in RESOURCES:
        raise ValueError(f"unknown resource folder {name!r} (one of {', '.join(RESOURCES)})")
    packaged = _PACKAGE / "_data" / name
    return packaged if packaged.is_dir() else REPO_ROOT / name


def config_dir() -> Path:
    return resource_dir("configs")


def checkpoint_dir() -> Path:
    return resource_dir("checkpoints")


def available_memory_mb() -> float | None:
    """The memory this machine has available now (Linux's MemAvailable), MB; None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None
