"""The documents' links: every relative link in the repository's markdown files names a file that exists and, where
it has one, an anchor that is one of that file's headings. The docs cross-reference each other by section, so a
renamed heading or a moved file breaks them silently otherwise."""
import re
import subprocess
from pathlib import Path

import pytest

from helpers import ROOT

LINK = re.compile(r"\]\(([^()\s]+)\)")  # [text](target): inline links; the docs use no reference-style ones
FENCE = re.compile(r"^(```|~~~)")


def markdown_files() -> list[Path]:
    # the tracked ones (a fresh clone's), not what a virtualenv or a scratch run left beside them
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "*.md"], capture_output=True, text=True, check=True)
    return [ROOT / line for line in out.stdout.splitlines()]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation other than '-' and '_' dropped, spaces to '-'."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a markdown file's headings, with GitHub's -1, -2 ... for repeated ones."""
    seen, found, in_code = {}, set(), False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        base = slug(line.lstrip("#"))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[str]:
    targets, in_code = [], False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code:
            targets += LINK.findall(line)
    return [t for t in targets if not re.match(r"[a-z]+:", t)]  # http:, https:, mailto: are not checked offline


def test_slug_follows_githubs_rules():
    assert slug("FlashAttention-4's lead") == "flashattention-4s-lead"
    assert slug("The decode step compiled before its capture (commit `ac0045b`)") == \
        "the-decode-step-compiled-before-its-capture-commit-ac0045b"
    assert slug("The head-dim-64 T=1024 fwd+bwd, re-timed") == "the-head-dim-64-t1024-fwdbwd-re-timed"


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path):
    broken = []
    for target in links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)
