"""The README stays a first page; every relative link in it and in docs/ leads somewhere real (a
file in the repository and, for `#anchor`, a heading of that file); examples in docs/ are valid.
(The commands in the docs are run by tests/e2e/test_docs_commands.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.serving.manifests import read_manifest
from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCED = re.compile(r"^```.*?^```", flags=re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
README_MAY_LINK_TO = {REPO / "client" / "README.md"}  # besides docs/


def prose(path: Path) -> str:
    """The page without code: links and headings inside code are not links and headings."""
    return INLINE_CODE.sub("", FENCED.sub("", path.read_text(encoding="utf-8")))


def anchors(path: Path) -> set[str]:
    """The anchors GitHub makes of the page's headings."""
    made = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", FENCED.sub("", path.read_text(encoding="utf-8")), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        made.add(slug)
    return made


def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(prose(page)) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def test_the_pages_are_found() -> None:
    names = {page.name for page in PAGES}
    assert {"README.md", "api.md", "settings.md", "fine-tuning.md", "deploy.md"} <= names
    assert len(relative_links(REPO / "README.md")) > 10


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page: Path) -> None:
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        assert path.is_file() and path.is_relative_to(REPO), f"{page.name}: {target} leads nowhere"
        if anchor:
            assert anchor in anchors(path), f"{page.name}: {target}: no such heading in {path.name}"


def test_the_readme_is_a_first_page_that_links_into_docs() -> None:
    readme = REPO / "README.md"
    assert len(readme.read_text(encoding="utf-8").splitlines()) < 300
    for target in relative_links(readme):
        path = (REPO / target.partition("#")[0]).resolve()
        assert path.parent == REPO / "docs" or path in README_MAY_LINK_TO, target
    linked = {(REPO / t.partition("#")[0]).resolve() for t in relative_links(readme)}
    assert set(PAGES[1:]) <= linked, "a page of docs/ the README does not link to"


def test_the_manifest_example_in_the_docs_is_a_valid_manifest(tmp_path: Path) -> None:
    example = re.findall(r"^```yaml\n(.*?)^```", (REPO / "docs" / "models.md").read_text(), re.M | re.S)
    assert len(example) == 1
    (tmp_path / "vit-base.yaml").write_text(example[0], encoding="utf-8")
    manifest = read_manifest(tmp_path / "vit-base.yaml")
    assert manifest.name == "vit-base" and manifest.price.per_image == 0.0002
