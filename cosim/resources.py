"""Where the project's data lives: the repository's folders, or the same files installed as package data.

``configs/`` and ``checkpoints/`` are top-level folders of the repository; a wheel
(``pip install .``) ships them inside the package as ``cosim/_data/configs`` and
``cosim/_data/checkpoints`` (see pyproject.toml). Code asks here, never for a path
relative to the repository, so both a checkout and an installed package work from any folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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


# One line each for `dtcosim configs` / `dtcosim policies` (a file missing here falls back to the first
# sentence of its leading comment or of its checkpoints/README.md row; tests check every shipped file has one).
CONFIG_ABOUT = {
    "default": "every parameter of the model, the paper's Table II (always loaded first)",
    "shipped": "the action options the shipped policies use: full bandwidth, balanced split, the twin's global view",
    "set_policy": "how ly-dtmppo_set was trained: any fleet and RSU layout, across scenarios",
    "dagger_policy": "how ly-dagger_set was trained: 2-32 CVs, 2-8 RSUs with coverage gaps, contention",
    "congested": "scenario: 10 CVs on a quarter of the RSU compute; RSU queues build up",
    "heavy-sensing": "scenario: 10x the sensing data at few cycles per bit; the twin's instruction pays",
    "rsu2": "transfer layout: 2 RSUs, 300 m apart, 200 m coverage",
    "rsu5": "transfer layout: 5 RSUs at other positions and radii than the paper's 3",
}
CHECKPOINT_ABOUT = {
    "ly-dtmppo_set": "set-structured Ly-DTMPPO for any fleet and RSU layout",
    "ly-dtmppo_default": "the paper's MLP, default road (5 CVs, 3 RSUs), shipped action options",
    "ly-mappo_default": "the same without the twin (Ly-MAPPO): with ly-dtmppo_default, what the twin is worth",
    "ly-dtmppo_paper": "the paper's MLP with the paper's own actions (5 CVs, 3 RSUs): the reproduction table",
    "ly-dagger_set": "set-structured actor imitating the per-slot optimiser; better under contention",
}

# Config files that are not a --config overlay: the experiment grids reproduce reads.
_NOT_OVERLAYS = ("experiments",)


class ResourceError(ValueError):
    """A --config or --policy value that is neither a file nor a packaged name (one line, names allowed)."""


@dataclass(frozen=True)
class Resource:
    """A packaged config or checkpoint: the name a user types, its file and a one-line description."""

    name: str
    path: Path
    description: str


def _first_sentence(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    m = re.search(r"[.;](\s|$)", text)
    text = text[:m.start()] if m else text
    return text if len(text) <= limit else text[:limit - 1].rstrip(" ,(") + "…"


def _comment_head(path: Path) -> str:
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return _first_sentence(" ".join(lines)) if lines else ""


def configs() -> dict[str, Resource]:
    """The packaged --config overlays by name (the file's stem: ``congested``, ``set_policy``, ``rsu5``), each
    with the first sentence of its leading comment."""
    root = config_dir()
    out: dict[str, Resource] = {}
    for path in sorted(root.rglob("*.yaml"), key=lambda p: (len(p.relative_to(root).parts), str(p))):
        rel = path.relative_to(root)
        if rel.parts[0] in _NOT_OVERLAYS:
            continue
        out.setdefault(path.stem, Resource(path.stem, path, CONFIG_ABOUT.get(path.stem) or _comment_head(path)))
    return out


def _checkpoint_descriptions(root: Path) -> dict[str, str]:
    """name -> the first clause of its row in checkpoints/README.md's table."""
    readme = root / "README.md"
    out: dict[str, str] = {}
    if readme.is_file():
        for m in re.finditer(r"^\| `([\w.-]+)\.safetensors` \| (.+?) \|$", readme.read_text(encoding="utf-8"), re.M):
            text = re.sub(r"`([^`]*)`", r"\1", m.group(2))
            out[m.group(1)] = _first_sentence(text.split(":")[0].split(", trained")[0])
    return out


def checkpoints() -> dict[str, Resource]:
    """The packaged checkpoints by name (``ly-dtmppo_set``, ``ly-dtmppo_default``, ...)."""
    root = checkpoint_dir()
    about = _checkpoint_descriptions(root)
    return {p.stem: Resource(p.stem, p, CHECKPOINT_ABOUT.get(p.stem) or about.get(p.stem, ""))
            for p in sorted(root.glob("*.safetensors"))}


def _packaged(value: str, folder: str, suffix: str, named: dict[str, Resource]) -> Path | None:
    """The packaged file a name or a repository-relative path (``configs/transfer/rsu5.yaml``) stands for."""
    v = value.strip()
    if v in named:
        return named[v].path
    if v.endswith(suffix) and v[:-len(suffix)] in named and "/" not in v:
        return named[v[:-len(suffix)]].path
    parts = Path(v).parts
    if len(parts) > 1 and parts[0] == folder:  # a path the README wrote from the repository root
        inside = resource_dir(folder).joinpath(*parts[1:])
        if inside.is_file():
            return inside
    return None


def resolve_config(value: str) -> str:
    """A --config value: an existing file as given, else a packaged config by name (or by its path from the
    repository root); anything else is a ResourceError listing the names."""
    if Path(value).is_file():
        return value
    named = configs()
    found = _packaged(value, "configs", ".yaml", named)
    if found is not None:
        return str(found)
    raise ResourceError(f"'{value}' is neither a file nor a packaged config "
                        f"(one of {', '.join(named)}; dtcosim configs describes them)")


def resolve_checkpoint(value: str) -> str:
    """A checkpoint value: an existing file or run folder as given, else a packaged checkpoint by name."""
    if Path(value).exists():
        return value
    named = checkpoints()
    found = _packaged(value, "checkpoints", ".safetensors", named)
    if found is not None:
        return str(found)
    raise ResourceError(f"'{value}' is neither a checkpoint file, a run folder nor a packaged checkpoint "
                        f"(one of {', '.join(named)}; dtcosim policies describes them)")


def short_name(policy: str) -> str:
    """A policy's label for progress bars and titles: a packaged checkpoint's name, a run folder's name for
    runs/X/policy.safetensors, a file's stem, a reference policy's own name."""
    head, sep, rest = policy.partition(":")
    if sep and re.fullmatch(r"refined\d*", head):
        return f"{head}:{short_name(rest)}"
    p = Path(policy)
    if p.suffix != ".safetensors" and not p.is_dir():
        return policy
    if p.is_dir() or p.name == "policy.safetensors":
        return (p if p.is_dir() else p.parent).name
    return p.stem


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
