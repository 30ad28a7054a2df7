"""Display helpers: the polynomial's line breaks, durations and sizes in the run panel, the exact-method caption."""

from __future__ import annotations

import re

from backend import api
from backend.settings import deep_linear as api_deep
from backend.costs import format_bytes, format_duration


def test_polynomial_equation_breaks_lines_without_losing_terms():
    poly = {"coefficients": [0.0, 1.49178, 0.535682, -0.0738599, 0.0270865, -0.00375, 2e-4, 1e-5]}
    one_line = api.polynomial_latex(poly)
    block = api.polynomial_equation(r"v", poly, line_width=48)
    assert block.startswith(r"\begin{aligned}v &= ") and block.endswith(r"\end{aligned}")
    body = block[len(r"\begin{aligned}v &= "):-len(r"\end{aligned}")]
    lines = body.split(r" \\ &\qquad ")
    assert len(lines) >= 3  # seven terms of ~21 characters do not fit in two lines of 48
    assert " ".join(lines) == one_line  # the same terms, signs and order: only line breaks were added
    # each line but the first starts with a sign; no line holds more terms than its width allows
    assert all(line[0] in "+-" for line in lines[1:])
    assert all(line.count(r"\left(") <= 2 for line in lines)


def test_polynomial_equation_short_polynomial_stays_on_one_line():
    poly = {"coefficients": ["0", "1/3", "-2/5"]}
    block = api.polynomial_equation("v", poly)
    assert r"\\" not in block
    assert r"\frac{1}{3}" in block and r"- \frac{2}{5}" in block


def test_long_fraction_counts_its_longer_part():
    poly = {"coefficients": ["0", "123456789012345678901234567/7", "1/3", "1/3"]}
    lines = api.polynomial_latex(poly, line_width=40).split(r" \\ &\qquad ")
    assert len(lines) == 2 and lines[0].count(r"\left(") == 1


def test_format_duration_and_bytes():
    assert format_duration(0.2) == "under 1 s"
    assert format_duration(42.4) == "about 42 s"
    assert format_duration(210) == "about 3.5 min"
    assert format_duration(1800) == "about 30 min"
    assert format_duration(7200) == "about 2.0 h"
    assert format_bytes(1000) == "under 1 MiB"
    assert format_bytes(350 * 2**20) == "350 MiB"
    assert format_bytes(9.8 * 2**30) == "9.8 GiB"


def test_describe_methods_groups_steps():
    text = api_deep.describe_methods({0: "closed form", 1: "scalar network, χ² moments", 2: "scalar network, χ² moments",
                                      3: "scalar network, χ² moments"})
    assert text == "t = 0 (closed form), t ∈ {1, 2, 3} (scalar network, χ² moments)"
    assert re.search("no exact method", api_deep.describe_methods({}))
