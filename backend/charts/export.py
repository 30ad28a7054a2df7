"""A chart as a PNG or SVG file, at a fixed width (vl-convert)."""

from __future__ import annotations

import json

import altair as alt


EXPORT_WIDTH = 900  # pixels, legends included: the page's chart fits its container's width, a file needs one


def _export_spec(chart: alt.TopLevelMixin) -> str:
    """The chart's spec for a file: the same explicit colours as on the page, a fixed width, a white background."""
    spec = chart.to_dict()
    spec.setdefault("width", EXPORT_WIDTH)
    spec.setdefault("background", "white")
    return json.dumps(spec)


def to_png(chart: alt.TopLevelMixin, scale: float = 2.0) -> bytes:
    import vl_convert as vlc

    return vlc.vegalite_to_png(_export_spec(chart), scale=scale)


def to_svg(chart: alt.TopLevelMixin) -> str:
    import vl_convert as vlc

    return vlc.vegalite_to_svg(_export_spec(chart))
