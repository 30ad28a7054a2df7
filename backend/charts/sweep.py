"""Sweeps: any quantity against any swept field, with 95 % intervals, the other fields as colour and dodge."""

from __future__ import annotations

import altair as alt
import pandas as pd

from backend.charts.base import (AUTOSIZE, CATEGORY, chart_title, dropped_note, log_axis_format, log_safe,
                                 MAX_CATEGORICAL, SEQUENTIAL)
from backend.optim import LEVEL_FIELDS


def _as_number(value) -> float | None:
    """A sweep value as a number: ints, floats and fraction strings ("1/4"); None for anything else."""
    from fractions import Fraction

    if isinstance(value, bool):
        return None
    try:
        return float(Fraction(str(value)))
    except (ValueError, ZeroDivisionError):
        return None


DISCRETE_FIELDS = LEVEL_FIELDS  # optimizer settings with a few levels (backend/optim.py: Hyper.levels, flags), ordinal


def is_discrete_field(field: str) -> bool:
    """Fields whose numbers are labels, not magnitudes (seeds), or a few levels (a momentum): drawn on an ordinal
    axis in value order."""
    last = field.split(".")[-1]
    return last.endswith("seed") or last in DISCRETE_FIELDS


def _natural_order(labels) -> list[str]:
    """Labels ordered by their numbers ("2, 16, 64, 256"; "1/4, 1/2, 1"), text last."""
    def key(label: str):
        parts = [p.strip() for p in str(label).split(",")]
        return tuple((0, n, "") if (n := _as_number(p)) is not None else (1, 0.0, p) for p in parts)
    return sorted(dict.fromkeys(str(v) for v in labels), key=key)


def sweep_frame(table: pd.DataFrame, quantity: str, at, axis: str, fields: tuple[str, ...]
                ) -> tuple[pd.DataFrame, list[str]]:
    """The rows of a sweep's table (``api.sweep_table``) that ``sweep_chart`` draws: one quantity at one x, the
    swept ``axis`` as column "axis", each combination of the other fields (and b) a "line" label."""
    sel = table[(table["quantity"] == quantity) & (table["x"] == at)].copy()
    others = [f for f in (*fields, "b") if f != axis]
    sel["line"] = sel[others].astype(str).agg(", ".join, axis=1) if others else "all"
    sel["axis"] = sel[axis]
    return sel, others


DODGE_PX, DODGE_SPAN_PX = 8, 64  # a sweep's lines side by side at one x: pixels apart, at most this span in all


def _dodge(line: pd.Series, order: list[str]) -> pd.Series:
    """Each line's horizontal offset in pixels (centred on the x value), so that error bars of cells sharing an x
    (e.g. one seed, every other field's combination) stand side by side instead of on top of each other."""
    k = len(order)
    step = min(DODGE_PX, DODGE_SPAN_PX / (k - 1)) if k > 1 else 0.0
    rank = {name: i for i, name in enumerate(order)}
    return line.map(lambda v: (rank[v] - (k - 1) / 2) * step).astype(float)


def sweep_chart(sel: pd.DataFrame, axis: str, others: list[str], y_title: str, log_y: bool,
                nonnegative: bool = True) -> alt.LayerChart:
    """A sweep's quantity against one field: one line per combination of the others (legend in numeric order),
    95 % error bars, the exact value dashed where there is theory. A seed or a text/fraction field is an ordinal axis
    ordered by value; other numbers a continuous axis (log when positive and spanning ≥ 4×). ``log_y`` draws y on a
    log axis (non-positive values dropped and counted); a linear y of a non-negative quantity starts at 0."""
    df = sel.copy()
    nums = df["axis"].map(_as_number)
    continuous = (not is_discrete_field(axis) and nums.notna().all()
                  and pd.api.types.is_numeric_dtype(df["axis"]) and df["axis"].nunique() > 1)
    if continuous:
        positive = bool((nums > 0).all()) and nums.max() / nums.min() >= 4
        x = alt.X("axis:Q", title=axis, scale=alt.Scale(type="log" if positive else "linear", nice=not positive,
                                                        domain=[float(nums.min()), float(nums.max())]),
                  axis=alt.Axis(format=log_axis_format(nums) if positive else "~g"))
    else:
        df["axis"] = df["axis"].map(str)
        x = alt.X("axis:O", title=axis, sort=_natural_order(df["axis"]), axis=alt.Axis(labelAngle=0),
                  scale=alt.Scale(type="point", padding=0.5))
    order = _natural_order(df["line"])
    df["dodge"] = _dodge(df["line"], order)
    color = alt.Color("line:N", title=" · ".join(others) or None, sort=order, scale=alt.Scale(
        domain=order, range=[CATEGORY[i % len(CATEGORY)] for i in range(len(order))] if len(order) <= MAX_CATEGORICAL
        else alt.Undefined, scheme=alt.Undefined if len(order) <= MAX_CATEGORICAL else SEQUENTIAL),
        legend=alt.Legend(symbolLimit=0, labelLimit=300))
    dropped = 0
    if log_y:
        df["value"], dropped = log_safe(df["value"])
        df["exact"], dropped_ex = log_safe(df["exact"])
        dropped += dropped_ex
        df["lo"] = df["lo"].where(df["lo"] > 0, df["value"] * 1e-3)
        ys = alt.Scale(type="log")
        vals = pd.concat([df["value"], df["lo"], df["hi"], df["exact"]]).to_numpy(dtype=float)
        y_axis = alt.Axis(format=log_axis_format(vals))
    else:
        if nonnegative:
            df["lo"] = df["lo"].clip(lower=0)
        ys = alt.Scale(zero=nonnegative)
        y_axis = alt.Axis(format="~g")
    base = alt.Chart(df).encode(x=x, color=color, xOffset=alt.XOffset("dodge:Q", scale=None))
    tooltip = ["line", alt.Tooltip("axis:N", title=axis), "value", "se", "lo", "hi", "exact"]
    layers = [base.mark_line(point=alt.OverlayMarkDef(size=40, filled=True)).encode(
                  y=alt.Y("value:Q", title=y_title, scale=ys, axis=y_axis), tooltip=tooltip),
              base.mark_rule(strokeWidth=1.5).encode(y=alt.Y("lo:Q", title=y_title, scale=ys, axis=y_axis), y2="hi:Q",
                                                     tooltip=tooltip),
              *(base.mark_tick(orient="horizontal", size=8, thickness=1.5).encode(
                  y=alt.Y(f"{end}:Q", title=y_title, scale=ys, axis=y_axis)) for end in ("lo", "hi"))]
    has_exact = bool(df["exact"].notna().any())
    if has_exact:
        layers.append(base.transform_filter("isValid(datum.exact)").mark_line(strokeDash=[5, 3], strokeWidth=2).encode(
            y=alt.Y("exact:Q", title=y_title, scale=ys, axis=y_axis)))
    title = f"{y_title} against {axis} (95 % intervals" + ("; dashed: exact" if has_exact else "") + ")"
    return alt.layer(*layers).properties(title=chart_title(title, [dropped_note(dropped)]), height=340, autosize=AUTOSIZE)
