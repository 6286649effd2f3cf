"""The README stays a short front door, and every relative link of the docs resolves."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import PROJECT

README_MAX_LINES = 200

# [text](target) and ![alt](target), with an optional "title" after the target.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
EXTERNAL = ("http://", "https://", "mailto:")


def doc_files() -> list[Path]:
    """README.md, every Markdown file under docs/ and mura/README.md."""
    docs = sorted((PROJECT / "docs").rglob("*.md"))
    return [PROJECT / "README.md", *docs, PROJECT / "mura" / "README.md"]


def relative_links(text: str) -> list[str]:
    """The relative link targets of Markdown ``text``, #fragments stripped, code ignored."""
    text = FENCE.sub("", text)
    # A code span may be a link's text ([`a.md`](a.md)): keep the brackets matchable.
    text = CODE_SPAN.sub("code", text)
    targets = []
    for target in LINK.findall(text):
        if target.startswith(EXTERNAL) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def link_targets() -> list[tuple[Path, str, Path]]:
    """(file, link as written, resolved path) for every relative link of the docs."""
    return [(doc, target, (doc.parent / target).resolve())
            for doc in doc_files() for target in relative_links(doc.read_text())]


def test_link_parser_finds_links_and_skips_the_rest() -> None:
    text = ("[a](one.md) ![img](../two.png \"title\") [b](three.md#part) [c](#anchor)\n"
            "[d](https://example.org/x.md) [e](mailto:x@y.z) [`f`](<four.md>)\n"
            "`[g](in-code.md)`\n```bash\n[h](in-fence.md)\n```\n")
    assert relative_links(text) == ["one.md", "../two.png", "three.md", "four.md"]


def test_readme_is_a_short_front_door() -> None:
    lines = (PROJECT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines, at most {README_MAX_LINES}: move detail to docs/")


def test_readme_links_every_docs_page() -> None:
    linked = {path for doc, _, path in link_targets() if doc == PROJECT / "README.md"}
    pages = sorted((PROJECT / "docs").glob("*.md"))
    assert pages, "docs/ has no pages"
    missing = [p.relative_to(PROJECT).as_posix() for p in pages if p.resolve() not in linked]
    assert not missing, f"README.md does not link: {', '.join(missing)}"


def test_every_relative_link_resolves() -> None:
    broken = [f"{doc.relative_to(PROJECT).as_posix()}: {target}"
              for doc, target, path in link_targets() if not path.exists()]
    assert not broken, "broken relative links:\n" + "\n".join(broken)


def test_no_link_points_at_an_ignored_output() -> None:
    # A link to an untracked pipeline output (models/*.pt …) resolves after `dvc repro` but is
    # broken in a fresh clone.
    if shutil.which("git") is None or not (PROJECT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = sorted({path for _, _, path in link_targets() if path.is_relative_to(PROJECT)})
    proc = subprocess.run(["git", "check-ignore", "--stdin"], cwd=PROJECT, capture_output=True,
                          text=True, input="\n".join(str(p.relative_to(PROJECT)) for p in paths))
    assert proc.returncode in (0, 1), proc.stderr  # 1: none ignored
    ignored = proc.stdout.split()
    assert not ignored, "links to files git ignores (outputs not in a clone):\n" + "\n".join(ignored)
