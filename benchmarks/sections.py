"""How a benchmark writes its results: one `## ...` section of a Markdown file, replaced in place."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, heading: str, text: str) -> None:
    """Replace the section that starts with `heading` in the file (or append it), leaving the others alone."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    start = old.find(heading)
    if start == -1:
        new = old.rstrip() + "\n\n" + text
    else:
        nxt = old.find("\n## ", start + len(heading))
        new = old[:start] + text + (old[nxt + 1:] if nxt != -1 else "")
    path.write_text(new.rstrip() + "\n", encoding="utf-8")
