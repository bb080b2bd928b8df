"""BENCHMARKS.md is written by several benches, one "## " section each: each replaces its own."""

from __future__ import annotations

import re
from pathlib import Path


def write_section(path: Path, section: list[str]) -> None:
    """Replace the section titled `section[0]` (a whole "## ..." line) in the Markdown file at `path`
    where it stands, or append it; the other sections are kept as they are."""
    title, body = section[0], "\n".join(section).strip("\n") + "\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    found = re.search(rf"^{re.escape(title)}$", text, re.M)  # "## Training" is not "## Training on GPU"
    if found:
        after = text[found.end():]
        following = after.find("\n## ")
        rest = after[following + 1:] if following >= 0 else ""
        text = text[: found.start()] + body + ("\n" + rest if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text)
