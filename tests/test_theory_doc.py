"""docs/theory.md as the Theory page renders it: every formula inside $…$ / $$…$$ (Streamlit's Markdown renders them
with KaTeX), no pseudo-LaTeX left in the prose, delimiters balanced in every section the page shows on its own."""

import re

import pytest

from backend import api

CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)
DISPLAY = re.compile(r"\$\$.+?\$\$", re.DOTALL)
INLINE = re.compile(r"(?<![\\$])\$(?!\$)(.+?)(?<![\\$])\$(?!\$)", re.DOTALL)
# what a formula written as plain text leaves behind: sub/superscripts, TeX commands, Unicode super/subscripts
PSEUDO_LATEX = {"subscript": r"[A-Za-zα-ωΣΔ\)\]]_[A-Za-z0-9{(]", "superscript": r"\^", "TeX command": r"\\[A-Za-z]{2,}",
                "Unicode super/subscript": r"[ᵀ²³⁴⁵⁶⁷⁸⁹⁰¹⁻ⁿ₀₁₂₃ₖ]", "hat or bar": r"[\u0302\u0304]"}


def rendered_parts() -> list[tuple[str, str]]:
    """(name, markdown) of every piece the Theory page passes to st.markdown."""
    return [("preamble", api.theory_preamble())] + [(f"§{n}", body) for n, (_, body) in api.theory_sections().items()]


def prose(markdown: str) -> str:
    """The text outside code and math."""
    return INLINE.sub(" ", DISPLAY.sub(" ", CODE.sub(" ", markdown)))


@pytest.mark.parametrize("name,markdown", rendered_parts())
def test_math_delimiters_balance(name, markdown):
    text = CODE.sub(" ", markdown)
    assert text.count("$$") % 2 == 0, name
    assert re.sub(r"\\\$", "", DISPLAY.sub(" ", text)).count("$") % 2 == 0, name
    for block in DISPLAY.findall(text):  # display math: each $$ alone on its line (else Streamlit draws it inline)
        lines = block.split("\n")
        assert len(lines) >= 3 and lines[0] == "$$" and lines[-1].strip() == "$$", (name, block[:60])
    assert all(line.strip() == "$$" for line in text.splitlines() if "$$" in line), name


@pytest.mark.parametrize("name,markdown", rendered_parts())
def test_no_pseudo_latex_outside_math(name, markdown):
    rest = prose(markdown)
    found = {what: sorted(set(re.findall(rf".{{0,12}}{pattern}.{{0,12}}", rest)))
             for what, pattern in PSEUDO_LATEX.items()}
    assert not any(found.values()), (name, {k: v for k, v in found.items() if v})


def test_the_checks_find_what_the_page_once_showed():
    """The scan itself: the pseudo-LaTeX the Theory page used to show is caught; the same formulas in $…$ pass."""
    broken = "the step ∇{W_l} L_B = (1/b) δ_l^T a{l−1}, ‖G‖²^ and Σ_{k<j}"
    assert all(re.search(p, prose(broken)) for p in (PSEUDO_LATEX["subscript"], PSEUDO_LATEX["superscript"]))
    fixed = r"the step $\nabla_{W_l} L_B = \frac1b \delta_l^\top a_{l-1}$, $\widehat{\|G\|^2}$ and $\sum_{k<j}$"
    assert not any(re.search(p, prose(fixed)) for p in PSEUDO_LATEX.values())
