"""Every relative link in README.md, BENCHMARKS.md and docs/ leads to a file that exists, and every
``#anchor`` to a heading of it (GitHub's slugs), so moving a section or a file cannot leave a
newcomer at a dead end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to
    hyphens, ``-1``, ``-2`` … on repeats."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in _without_code_blocks(page.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6} (.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def broken_links(page: Path) -> list[str]:
    """The relative links of ``page`` whose file or heading does not exist, each as ``target: why``."""
    broken = []
    for target in LINK.findall(_without_code_blocks(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.name}")
    return broken


PAGES = sorted([*REPO.glob("*.md"), *(REPO / "docs").glob("*.md")])


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_checker_finds_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## A section: with (punctuation)\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok](other.md#a-section-with-punctuation) [ok](#here) [web](https://example.org/x)\n"
        "[gone](missing.md) [wrong](other.md#no-such-section)\n\n# Here\n\n"
        "```\n[inside code](nowhere.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "missing.md: no such file",
        "other.md#no-such-section: no heading with that anchor in other.md",
    ]
