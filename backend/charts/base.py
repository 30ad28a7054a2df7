"""What every chart shares: thinning, the colour scale over b, log-axis safety (non-positive values dropped and
counted), notes, axes and captions."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from backend.quantities import find


MAX_POINTS_PER_CURVE = 800


def thinned(t: np.ndarray) -> np.ndarray:
    """Indices of at most MAX_POINTS_PER_CURVE steps, always keeping the first and last."""
    if len(t) <= MAX_POINTS_PER_CURVE:
        return np.arange(len(t))
    return np.unique(np.linspace(0, len(t) - 1, MAX_POINTS_PER_CURVE).round().astype(int))


def positive_floor(df: pd.DataFrame, cols: tuple[str, ...]) -> float:
    vals = pd.concat([df[c] for c in cols if c in df]).to_numpy(dtype=float)
    vals = vals[np.isfinite(vals) & (vals > 0)]
    return float(vals.min()) if len(vals) else 1e-12


def b_sort_key(b) -> tuple:
    """Curves in order of b; a non-numeric curve key (a batch-size schedule's "schedule") after the numbers."""
    s = str(b)
    return (0, int(s), "") if s.lstrip("-").isdigit() else (1, 0, s)


def b_order(df: pd.DataFrame) -> list[str]:
    return sorted(df["b"].unique(), key=b_sort_key)


# Explicit palettes: the page (Streamlit's theme) and the exported PNG/SVG (vl-convert) draw the same colours.
CATEGORY = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf"]  # Tableau 10: well separated hues, no two near-identical blues


MAX_CATEGORICAL = len(CATEGORY)  # more batch sizes than this: a sequential scale over b (ordered, never repeating)


SEQUENTIAL = {"name": "viridis", "extent": [0.0, 0.88]}  # the yellow end is left out: it vanishes on white


EXACT_LABEL, ESTIMATE_LABEL = "exact", "replica estimate"


BAND_OPACITY, DIM_OPACITY = 0.25, 0.06  # the band's opacity, its b selected or not: always see-through (≤ 0.5)


LOG_FLOOR_REL = 1e-12  # on a log axis, values below this fraction of the largest are float rounding of an exact zero


# the width fits the page, the height is the plot's (legends and titles come on top of it): Streamlit's default
# "fit" squeezes the plot into the height when there is a key above and a long legend below
AUTOSIZE = alt.AutoSizeParams(type="fit-x", contains="padding")


def is_nonnegative(quantity: str, table) -> bool:
    """Whether ``quantity`` is ≥ 0 by definition, as its setting's quantity table (``api.quantity_table``: each
    Quantity's ``nonnegative``) declares it; a name the table does not list is not assumed to be."""
    return any(q.name == quantity and q.nonnegative for q in table)


def draws_band(quantity: str, table) -> bool:
    """Whether a chart of ``quantity`` shades the 95 % band of its SE around the estimate, as its setting's quantity
    table declares it (``Quantity.band``; a further estimator, e.g. var_g_rb, follows the quantity it estimates); a
    name the table does not list keeps its band (every estimate a result carries has an SE)."""
    q = find(list(table), quantity)
    return True if q is None else q.band


def b_color(order: list[str], title: str = "batch size b", field: str = "b") -> alt.Color:
    """Colour by b: Tableau 10 for up to ten batch sizes, otherwise a sequential (viridis) scale over b in order;
    the legend never drops entries and wraps into two columns when long."""
    if len(order) <= MAX_CATEGORICAL:
        scale = alt.Scale(domain=order, range=CATEGORY[:len(order)])
    else:
        scale = alt.Scale(domain=order, scheme=SEQUENTIAL)
    if len(order) > 12:  # below the plot in rows of up to 11: a long column on the right would be cut off
        legend = alt.Legend(symbolLimit=0, orient="bottom", direction="horizontal", columns=min(len(order), 11),
                            labelLimit=80)
    else:
        legend = alt.Legend(symbolLimit=0, labelLimit=80)
    return alt.Color(f"{field}:O", sort=order, scale=scale, title=title, legend=legend)


def log_axis_format(values) -> str:
    """One number format for every tick of a log axis: plain numbers when the range lies within [1e-4, 1e5],
    exponent notation ("1e+19", "5e-3") otherwise — never a mix of the two."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if not len(v) or (v.min() >= 1e-4 and v.max() <= 1e5):
        return "~g"
    return "~e"


def log_safe(values: pd.Series) -> tuple[pd.Series, int]:
    """Values for a log axis: non-positive ones (and float rounding of an exact zero, below 1e-12 of the largest)
    become missing. Returns the kept series and how many finite values were dropped."""
    v = pd.to_numeric(values, errors="coerce").astype(float)
    finite = np.isfinite(v.to_numpy())
    top = float(np.nanmax(np.abs(v.to_numpy()))) if finite.any() else 1.0
    keep = v > LOG_FLOOR_REL * top
    return v.where(keep), int((finite & ~keep.to_numpy()).sum())


def dropped_note(count: int, what: str = "values") -> str:
    """The sentence a chart carries when a log axis left values out."""
    if not count:
        return ""
    return f"{count} non-positive {what if count > 1 else what.rstrip('s')} not drawn on the log axis."


def zero_note(raw: pd.DataFrame, drawn: pd.DataFrame, dropped: int, x_name: str) -> str:
    """The subtitle of a time chart whose log axis dropped values: the b whose every value is 0 (e.g. b = n
    without replacement), and how many values in all."""
    if not dropped:
        return ""
    had = raw.groupby("b")["value"].apply(lambda v: bool(np.isfinite(v.to_numpy(dtype=float)).any()))
    left = drawn.groupby("b")["value"].apply(lambda v: bool(np.isfinite(v.to_numpy(dtype=float)).any()))
    gone = sorted((b for b in had.index if had[b] and not left[b]), key=b_sort_key)
    note = dropped_note(dropped)
    if gone:
        note = note.rstrip(".") + f": b = {', '.join(gone)} is exactly 0 at every {x_name}."
    return note


def chart_title(text: str, notes: list[str]) -> alt.TitleParams:
    notes = [n for n in notes if n]
    return alt.TitleParams(text, subtitle=notes) if notes else alt.TitleParams(text)


def message_chart(text: str, height: int = 120) -> alt.Chart:
    """A chart that says why there is nothing to draw (instead of an empty frame with no axes)."""
    return alt.Chart(pd.DataFrame({"message": [text]})).mark_text(fontSize=14, color="#b00020").encode(
        text="message:N").properties(height=height)


def step_axis(x) -> alt.Axis:
    """An axis of whole steps or epochs: integer ticks only (every one when there are at most 20)."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) and x.max() - x.min() <= 20:
        return alt.Axis(values=list(range(int(x.min()), int(x.max()) + 1)), format="d")
    return alt.Axis(tickMinStep=1, format="d")


def value_scale(log: bool, nonnegative: bool) -> alt.Scale:
    if log:
        return alt.Scale(type="log")
    return alt.Scale(zero=False, domainMin=0) if nonnegative else alt.Scale(zero=False)


def value_axis(log: bool, values) -> alt.Axis:
    return alt.Axis(format=log_axis_format(values)) if log else alt.Axis(format="~g")


def drawable_frame(df: pd.DataFrame, log: bool, nonnegative: bool = True) -> tuple[pd.DataFrame, int]:
    """What ``time_chart`` draws: on a log axis non-positive values (and rounding of exact zeros) dropped and the band
    clipped at the smallest drawn value; on a linear axis a non-negative quantity's band clipped at 0. Returns the
    frame and how many values were dropped."""
    df = df.copy()
    dropped = 0
    if log:
        df["value"], dropped = log_safe(df["value"])
        top = float(np.nanmax(np.abs(df["value"].to_numpy(dtype=float)))) if df["value"].notna().any() else 1.0
        for col in ("lo", "hi"):
            df[col] = df[col].where(df[col] > LOG_FLOOR_REL * top)
        df["lo"] = df["lo"].clip(lower=positive_floor(df, ("value", "lo")))
    elif nonnegative:
        df["lo"] = df["lo"].clip(lower=0.0)
    return df, dropped


def drawn_summary(df: pd.DataFrame, log: bool = False) -> dict[str, int]:
    """How many finite points each source contributes (shown under the chart; the browser test reads it), and how
    many values a log axis dropped."""
    shown, dropped = drawable_frame(df, log) if log else (df, 0)
    ok = shown[np.isfinite(shown["value"].to_numpy(dtype=float))]
    return {"exact": int((ok["source"] == "exact").sum()), "estimate": int((ok["source"] == "estimate").sum()),
            "dropped": dropped}


def drawn_caption(drawn: dict[str, int], ran: bool, band: str = "95 %", shade: bool = True,
                  error_bars: bool = False) -> str:
    """The caption under a chart of ``time_chart``: what is drawn (the band only where ``shade``; the markers' error
    bars where ``error_bars``), and what a log axis left out."""
    with_band = f" with its band ({band})" if shade else ""
    if error_bars:
        with_band += " and, at its markers, bars of its 95 % interval (± 1.96 SE: the replicas' noise)"
    if drawn["exact"] and ran:
        text = f"Drawn: exact {drawn['exact']} points; replica estimate {drawn['estimate']} points{with_band}."
    elif drawn["exact"]:
        text = f"Drawn: exact {drawn['exact']} points; no replica estimate yet (press Run)."
    elif ran:
        text = f"Drawn: replica estimate {drawn['estimate']} points{with_band}."
    else:
        text = "Nothing to draw yet: press Run."
    note = dropped_note(drawn.get("dropped", 0))
    return f"{text} {note}" if note else text


def every_kth(df: pd.DataFrame, x_name: str, per_curve: int = 24) -> pd.Series:
    """Marks about ``per_curve`` evenly spaced finite points of each b's curve (where the estimate gets a marker)."""
    flag = pd.Series(False, index=df.index)
    for _, g in df[np.isfinite(df["value"].to_numpy(dtype=float))].groupby("b"):
        g = g.sort_values(x_name)
        step = max(1, int(np.ceil(len(g) / per_curve)))
        flag.loc[g.index[::step]] = True
    return flag


def isolated_points(df: pd.DataFrame, x_name: str) -> pd.Series:
    """Finite points whose neighbours on the same curve are missing: a line cannot draw them, a marker does."""
    flag = pd.Series(False, index=df.index)
    for _, g in df.groupby("b"):
        g = g.sort_values(x_name)
        ok = pd.Series(np.isfinite(g["value"].to_numpy(dtype=float)), index=g.index)
        prev = ok.shift(1, fill_value=False)
        nxt = ok.shift(-1, fill_value=False)
        flag.loc[g.index] = ok & ~prev & ~nxt
    return flag


def rule_color(rules: list[str]) -> alt.Color:
    return alt.Color("rule:N", title="scaling rule", sort=rules,
                     scale=alt.Scale(domain=rules, range=[CATEGORY[i % len(CATEGORY)] for i in range(len(rules))]))


B_TICKS = 12  # up to this many distinct batch sizes, each one is a tick (else the log scale's own ticks)


def b_axis(b) -> alt.X:
    """The batch-size x axis (log scale over the b drawn): a tick at every b drawn when there are at most B_TICKS of
    them (the log scale's default ticks leave out, e.g., b = 16 past 10)."""
    b = np.asarray(b, dtype=float)
    drawn = sorted({float(v) for v in b[np.isfinite(b)]})
    ticks = {"values": drawn} if len(drawn) <= B_TICKS else {}
    return alt.X("b:Q", title="batch size b", scale=alt.Scale(type="log", domain=[float(b.min()), float(b.max())],
                                                              nice=False),
                 axis=alt.Axis(format=log_axis_format(b), **ticks))
