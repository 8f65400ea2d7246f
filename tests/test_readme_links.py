"""The README is the entry point: every relative link in it must lead to a file of the repository
(the documentation site's own links are checked by `mkdocs build --strict` in CI)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(text: str) -> list[str]:
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z]+:", t) and not t.startswith("#")]


def test_readme_links_exist():
    readme = (ROOT / "README.md").read_text()
    missing = [t for t in relative_links(readme) if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_readme_stays_an_entry_point():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 260


def test_link_pattern_finds_relative_links_only():
    assert relative_links("[a](docs/x.md) [b](https://x.org) [c](#top) [d](y.md#s)") == ["docs/x.md", "y.md#s"]
