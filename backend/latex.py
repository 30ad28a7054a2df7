"""LaTeX of exact polynomials in 1/b, for the pages (st.latex) and downloads."""

from __future__ import annotations

from fractions import Fraction
from typing import Any


def polynomial_latex(poly: dict[str, Any], variable: str = r"\frac{1}{b}", digits: int = 6,
                     max_digits: int | None = None, line_width: int | None = None) -> str:
    """LaTeX of Σ_k β_k (1/b)^k: exact fractions as \\frac, floats with ``digits`` significant digits.

    When an exact coefficient has more than ``max_digits`` characters the whole polynomial is shown rounded, prefixed
    by ``\\approx`` (the exact coefficients stay in ``poly["coefficients"]``). With ``line_width``, a line break
    ``\\\\ &\\qquad`` (for an aligned block) goes before a term that would take a line past about that many
    characters (a fraction counts its longer part, a power of 1/b five).
    """
    coeffs = poly["coefficients"]
    prefix = ""
    if max_digits is not None and any(isinstance(c, str) and len(c) > max_digits for c in coeffs):
        coeffs = [float(Fraction(c)) for c in coeffs]
        prefix = r"\approx "
    terms = []
    for k, beta in enumerate(coeffs):
        if isinstance(beta, str):
            val = Fraction(beta)
            if val == 0:
                continue
            num, den = abs(val.numerator), val.denominator
            mag = str(num) if den == 1 else rf"\frac{{{num}}}{{{den}}}"
            width = max(len(str(num)), len(str(den)))
            neg = val < 0
        else:
            if beta == 0:
                continue
            neg = beta < 0
            mant, _, exp = f"{abs(beta):.{digits - 1}e}".partition("e")
            e = int(exp)
            mag = mant if e == 0 else rf"{mant}\times 10^{{{e}}}"
            width = len(mant) + (0 if e == 0 else 4 + len(exp))
        power = "" if k == 0 else (rf"\left({variable}\right)" if k == 1 else rf"\left({variable}\right)^{{{k}}}")
        terms.append(("-" if neg else "+", mag + (r"\," + power if power else ""), width + 2 + (5 if power else 0)))
    if not terms:
        return prefix + "0"
    text = ("-" if terms[0][0] == "-" else "") + terms[0][1]
    used = terms[0][2]
    for sign, body, width in terms[1:]:
        if line_width is not None and used + width > line_width:
            text += rf" \\ &\qquad {sign} {body}"
            used = width
        else:
            text += f" {sign} {body}"
            used += width
    return prefix + text


def polynomial_equation(lhs: str, poly: dict[str, Any], max_digits: int | None = 40, line_width: int = 48) -> str:
    """``lhs = Σ_k β_k (1/b)^k`` as an aligned LaTeX block, broken into lines of about ``line_width`` characters so a
    long polynomial does not run off the page."""
    return (r"\begin{aligned}" + lhs + " &= " + polynomial_latex(poly, max_digits=max_digits, line_width=line_width)
            + r"\end{aligned}")
