"""The documentation: README within its size, every relative link resolving, no commit hashes or issue references,
and no citation of documents that are not in the repository."""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# 7-40 hex digits with at least one letter and one digit: what a commit hash looks like
COMMIT = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")


def test_readme_is_short():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200 and len(text.split()) <= 1800


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = page.read_text()
    targets = [t.split("#")[0] for t in LINK.findall(text) if not t.startswith(("http://", "https://", "#"))]
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_commit_hashes_or_issue_references(page):
    text = page.read_text()
    assert not COMMIT.findall(text)
    assert not re.search(r"\bissues?\b", text, re.IGNORECASE)


def test_code_cites_no_document_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    spec = "SPEC " + chr(0xA7)  # the private specification's section sign, spelled so this file does not hold it
    cited = [f for f in files if f.endswith((".py", ".sh", ".txt")) and not f.startswith("datasets/vocab/")
             and spec in (ROOT / f).read_text(errors="ignore")]
    assert not cited
