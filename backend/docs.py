"""The project's own mathematics, docs/theory.md, split into its numbered sections for the app's Theory page."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

THEORY_PATH = Path(__file__).resolve().parent.parent / "docs" / "theory.md"
_HEADING = re.compile(r"^## §(\d+) (.+)$", re.MULTILINE)


@lru_cache(maxsize=1)
def theory_sections() -> dict[int, tuple[str, str]]:
    """{n: (title, markdown body)} for every '## §n title' heading of docs/theory.md, in order; 0 ↦ the preamble
    is not included (the page shows it above the sections)."""
    text = THEORY_PATH.read_text(encoding="utf-8")
    heads = list(_HEADING.finditer(text))
    return {int(h.group(1)): (h.group(2), text[h.end():heads[i + 1].start() if i + 1 < len(heads) else len(text)]
                              .strip())
            for i, h in enumerate(heads)}


_DISPLAY_MATH = re.compile(r"^[ \t]*\$\$[ \t]*\n(.*?)\n[ \t]*\$\$[ \t]*$", re.MULTILINE | re.DOTALL)


def display_math_pieces(markdown: str) -> list[tuple[str, str]]:
    """``markdown`` cut at its display formulas (``$$`` alone on the lines before and after): ("markdown", text)
    and ("latex", formula) pieces in order, so a page can draw each formula in display style (Streamlit's
    Markdown draws ``$$`` blocks inline)."""
    pieces: list[tuple[str, str]] = []
    at = 0
    for m in _DISPLAY_MATH.finditer(markdown):
        if markdown[at:m.start()].strip():
            pieces.append(("markdown", markdown[at:m.start()].strip("\n")))
        pieces.append(("latex", "\n".join(line.strip() for line in m.group(1).splitlines())))
        at = m.end()
    if markdown[at:].strip():
        pieces.append(("markdown", markdown[at:].strip("\n")))
    return pieces


def theory_preamble() -> str:
    """The text before the first section (without the title line)."""
    text = THEORY_PATH.read_text(encoding="utf-8")
    first = _HEADING.search(text)
    body = text[:first.start() if first else len(text)]
    return "\n".join(line for line in body.splitlines() if not line.startswith("# ")).strip()
