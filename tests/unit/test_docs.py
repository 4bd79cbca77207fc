"""The docs stay true: the generated reference pages equal what the code
renders now, the README stays a front door (about 200 lines at most), and
every relative link in the README and ``docs/`` names a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from openft.reference import PAGES, rendered

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_generated_reference_pages_match_the_code(page: str) -> None:
    text = (DOCS / "reference" / page).read_text()
    assert rendered(page, text) == text, f"docs/reference/{page} is out of date: run make docs"


def test_the_readme_is_a_front_door() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in [REPO / "README.md", *DOCS.rglob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert broken == []
