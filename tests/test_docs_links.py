"""Every document the code cites lives in the repository (docs/), and every such link resolves."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"(?<![\w.])((?:[\w.-]+/)*[\w.-]+\.(?:md|csv))\b")
BARE = re.compile(r"(?<![\w/.])(design|phantoms|peers|style)\.md")


def _python_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / f for f in out.split()]


def test_cited_documents_resolve():
    missing = []
    for path in _python_files():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for m in LINK.finditer(line):
                target = m.group(1)
                if target.startswith("docs/") and not (ROOT / target).is_file():
                    missing.append(f"{path.relative_to(ROOT)}:{n}: {target}")
    assert not missing, "links to documents that are not in the repository:\n" + "\n".join(missing)


def test_design_notes_are_cited_by_their_repository_path():
    bare = [f"{p.relative_to(ROOT)}:{n}" for p in _python_files()
            for n, line in enumerate(p.read_text().splitlines(), 1) if BARE.search(line) and "docs/" not in line]
    assert not bare, "cite the notes as docs/<name>.md:\n" + "\n".join(bare)
