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


def theory_preamble() -> str:
    """The text before the first section (without the title line)."""
    text = THEORY_PATH.read_text(encoding="utf-8")
    first = _HEADING.search(text)
    body = text[:first.start() if first else len(text)]
    return "\n".join(line for line in body.splitlines() if not line.startswith("# ")).strip()
