"""Altair chart builders: Result → chart. Only aggregated rows (steps × curves) are sent, never per-replica data.

Every chart of the app is built here (pages and ui/ only call these builders). Theory is a solid line drawn on top,
the replica estimate a dashed line with open markers over its see-through band, one colour per batch size (sequential
over b when there are many); a key names exact / replica estimate / band. Log axes never receive a non-positive value:
such values are dropped and the chart says how many. Colours are explicit, so the page and the exported PNG/SVG agree.
"""

from __future__ import annotations

import json

import altair as alt
import numpy as np
import pandas as pd

from backend.quantities import find

MAX_POINTS_PER_CURVE = 800


def _thin(t: np.ndarray) -> np.ndarray:
    """Indices of at most MAX_POINTS_PER_CURVE steps, always keeping the first and last."""
    if len(t) <= MAX_POINTS_PER_CURVE:
        return np.arange(len(t))
    return np.unique(np.linspace(0, len(t) - 1, MAX_POINTS_PER_CURVE).round().astype(int))


def curves_frame(t: np.ndarray, batch_sizes: list[int], theory_curves: dict | None, sim_curves: dict | None,
                 quantity: str, finite_count: np.ndarray | None = None, x_name: str = "t") -> pd.DataFrame:
    """Long table: x (column ``x_name``: t or epoch), b, source ('exact' | 'estimate'), value, lo, hi, se (and the
    finite replicas behind it). Every setting's results (backend/curves.py) go through here."""
    t = np.asarray(t)
    keep = _thin(t)
    rows = []
    for j, b in enumerate(batch_sizes):
        if theory_curves is not None and quantity in theory_curves:
            rows.append(pd.DataFrame({x_name: t[keep], "b": str(b), "source": "exact",
                                      "value": theory_curves[quantity][j][keep]}))
        if sim_curves is not None and quantity in sim_curves:
            est = sim_curves[quantity]
            frame = pd.DataFrame({x_name: t[keep], "b": str(b), "source": "estimate",
                                  "value": est["value"][j][keep], "lo": est["lo"][j][keep],
                                  "hi": est["hi"][j][keep], "se": est["se"][j][keep]})
            if finite_count is not None:
                frame["replicas"] = finite_count[j][keep]
            rows.append(frame)
    if not rows:
        return pd.DataFrame(columns=[x_name, "b", "source", "value", "lo", "hi", "se"])
    df = pd.concat(rows, ignore_index=True)
    for col in ("lo", "hi", "se", "replicas"):
        if col not in df:
            df[col] = np.nan
    return df


def _positive_floor(df: pd.DataFrame, cols: tuple[str, ...]) -> float:
    vals = pd.concat([df[c] for c in cols if c in df]).to_numpy(dtype=float)
    vals = vals[np.isfinite(vals) & (vals > 0)]
    return float(vals.min()) if len(vals) else 1e-12


def b_sort_key(b) -> tuple:
    """Curves in order of b; a non-numeric curve key (a batch-size schedule's "schedule") after the numbers."""
    s = str(b)
    return (0, int(s), "") if s.lstrip("-").isdigit() else (1, 0, s)


def _b_order(df: pd.DataFrame) -> list[str]:
    return sorted(df["b"].unique(), key=b_sort_key)


# -- shared pieces: colours, log axes, the key ------------------------------------------------------------------------

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


def _title(text: str, notes: list[str]) -> alt.TitleParams:
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


def _y_scale(log: bool, nonnegative: bool) -> alt.Scale:
    if log:
        return alt.Scale(type="log")
    return alt.Scale(zero=False, domainMin=0) if nonnegative else alt.Scale(zero=False)


def _y_axis(log: bool, values) -> alt.Axis:
    return alt.Axis(format=log_axis_format(values)) if log else alt.Axis(format="~g")


# -- against t: the one chart path of every setting ----------------------------------------------------------------


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
        df["lo"] = df["lo"].clip(lower=_positive_floor(df, ("value", "lo")))
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


def drawn_caption(drawn: dict[str, int], ran: bool, band: str = "95 %", shade: bool = True) -> str:
    """The caption under a chart of ``time_chart``: what is drawn (the band only where ``shade``), and what a log
    axis left out."""
    with_band = f" with its band ({band})" if shade else ""
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


def _every_kth(df: pd.DataFrame, x_name: str, per_curve: int = 24) -> pd.Series:
    """Marks about ``per_curve`` evenly spaced finite points of each b's curve (where the estimate gets a marker)."""
    flag = pd.Series(False, index=df.index)
    for _, g in df[np.isfinite(df["value"].to_numpy(dtype=float))].groupby("b"):
        g = g.sort_values(x_name)
        step = max(1, int(np.ceil(len(g) / per_curve)))
        flag.loc[g.index[::step]] = True
    return flag


def _isolated(df: pd.DataFrame, x_name: str) -> pd.Series:
    """Finite points whose neighbours on the same curve are missing: a line cannot draw them, a marker does."""
    flag = pd.Series(False, index=df.index)
    for _, g in df.groupby("b"):
        g = g.sort_values(x_name)
        ok = pd.Series(np.isfinite(g["value"].to_numpy(dtype=float)), index=g.index)
        prev = ok.shift(1, fill_value=False)
        nxt = ok.shift(-1, fill_value=False)
        flag.loc[g.index] = ok & ~prev & ~nxt
    return flag


def time_chart(df: pd.DataFrame, title: str, log: bool = True, x_name: str = "t", x_title: str = "iteration t",
               band: str = "95 %", nonnegative: bool = True, shade: bool = True) -> alt.LayerChart:
    """Quantity against t (or epoch), one colour per b (sequential over b when there are many): the exact value a
    solid line on top (isolated exact points, e.g. t = 0 alone, as filled dots), the replica estimate a dashed line
    with open-circle markers over its see-through band (``band`` says what it is; shaded only where ``shade``: the
    quantity's ``Quantity.band``, ``draws_band``). A key above the chart names the three; clicking a b in the legend
    highlights it (the band stays ≤ 0.5 opaque either way). The x axis spans the frame's steps, the run's, before a
    run too (where only a few exact points exist). The one chart path of every setting."""
    raw = df
    df, dropped = drawable_frame(df, log, nonnegative)
    band_label = (f"{ESTIMATE_LABEL} ○ (shaded: {band + ' band' if band.endswith('%') else band})" if shade
                  else f"{ESTIMATE_LABEL} ○")
    df["curve"] = df["source"].map({"exact": EXACT_LABEL, "estimate": band_label})
    df["marker"] = False
    df["dot"] = False
    est_rows, ex_rows = df["source"] == "estimate", df["source"] == "exact"
    if est_rows.any():
        df.loc[est_rows, "marker"] = _every_kth(df[est_rows], x_name)
    if ex_rows.any():
        df.loc[ex_rows, "dot"] = _isolated(df[ex_rows], x_name)
    has_exact, has_est = bool(ex_rows.any()), bool(est_rows.any())
    finite = np.isfinite(df["value"].to_numpy(dtype=float))
    exact_dots_only = has_exact and bool(df.loc[ex_rows & finite, "dot"].all())  # no exact segment: key it as a dot
    line_domain = ([EXACT_LABEL] if has_exact and not exact_dots_only else []) + ([band_label] if has_est else [])
    key = alt.StrokeDash("curve:N", title=None, scale=alt.Scale(domain=line_domain, range=[
        [1, 0] if k == EXACT_LABEL else [5, 3] for k in line_domain]), legend=alt.Legend(
        orient="top", symbolType="stroke", symbolStrokeWidth=2, symbolSize=500, symbolStrokeColor="#444",
        labelLimit=400))
    values = pd.concat([df[c] for c in ("value", "lo", "hi")]).to_numpy(dtype=float)
    scale = _y_scale(log, nonnegative)
    y_axis = _y_axis(log, values)
    sel = alt.selection_point(fields=["b"], bind="legend")
    color = b_color(_b_order(df))
    steps = raw[x_name].to_numpy(dtype=float)
    steps = steps[np.isfinite(steps)]  # every recorded step of the run, drawn or not (NaN before a run beyond t = 0)
    x = alt.X(f"{x_name}:Q", title=x_title, axis=step_axis(df[x_name]),
              scale=alt.Scale(domain=[float(steps.min()), float(steps.max())], nice=False) if len(steps) else
              alt.Undefined)

    def opacity(on: float, off: float = 0.15):
        return alt.condition(sel, alt.value(on), alt.value(off))

    base = alt.Chart(df).encode(x=x, color=color)
    layers = []
    if has_est:
        est = base.transform_filter(alt.datum.source == "estimate")
        tooltip = ["b", x_name, "value", "lo", "hi", "se", "replicas"]
        if shade:
            layers.append(est.mark_area(strokeWidth=0).encode(
                y=alt.Y("lo:Q", scale=scale, title=title, axis=y_axis), y2="hi:Q",
                opacity=opacity(BAND_OPACITY, DIM_OPACITY)))
        layers.append(est.mark_line(strokeWidth=1.5).encode(
            y=alt.Y("value:Q", scale=scale, title=title, axis=y_axis), strokeDash=key, opacity=opacity(0.9),
            tooltip=tooltip))
        layers.append(est.transform_filter(alt.datum.marker).mark_point(shape="circle", filled=False, size=30,
                                                                         strokeWidth=1.2).encode(
            y=alt.Y("value:Q", scale=scale, title=title, axis=y_axis), opacity=opacity(0.9), tooltip=tooltip))
    if has_exact:
        ex = base.transform_filter(alt.datum.source == "exact")
        if not exact_dots_only:
            layers.append(ex.mark_line(strokeWidth=2.2).encode(
                y=alt.Y("value:Q", scale=scale, title=title, axis=y_axis), strokeDash=key, opacity=opacity(1.0),
                tooltip=["b", x_name, "value"]))
        dot_key = {} if not exact_dots_only else {"shape": alt.Shape("curve:N", title=None, scale=alt.Scale(
            domain=[EXACT_LABEL], range=["circle"]), legend=alt.Legend(orient="top", symbolFillColor="#444",
                                                                      symbolStrokeColor="#444", symbolSize=70))}
        layers.append(ex.transform_filter(alt.datum.dot).mark_point(shape="circle", filled=True, size=70).encode(
            y=alt.Y("value:Q", scale=scale, title=title, axis=y_axis), opacity=opacity(1.0),
            tooltip=["b", x_name, "value"], **dot_key))
    if not layers:
        return alt.layer(message_chart(f"{title}: nothing to draw yet")).properties(height=120, autosize=AUTOSIZE)
    height = 320 if len(_b_order(df)) <= 12 else 400
    return alt.layer(*layers).add_params(sel).properties(title=_title(title, [zero_note(raw, df, dropped, x_name)]),
                                                         height=height, autosize=AUTOSIZE)


# -- against b -------------------------------------------------------------------------------------------------------

REPLICA_KEY = "replica estimate (95 % interval)"


def b_chart(b_grid: np.ndarray, exact_values: np.ndarray, t: int, estimates: pd.DataFrame | None = None,
            fits: dict[str, np.ndarray] | None = None, title: str = "var(g_t | F_0)",
            b_max: float | None = None) -> alt.LayerChart:
    """Log–log quantity against b at step t: the exact value for every b (solid blue line), fitted polynomials
    (dashed, other colours), replica estimates (black dots with 95 % intervals); one key names them. The x axis
    spans exactly the b drawn (at most ``b_max``, e.g. n); values ≤ 0 (var = 0 at b = n without replacement) are
    dropped and counted in the subtitle."""
    lines = [pd.DataFrame({"b": b_grid, "value": exact_values, "curve": EXACT_LABEL})]
    for name, vals in (fits or {}).items():
        lines.append(pd.DataFrame({"b": b_grid, "value": vals, "curve": name}))
    line_df = pd.concat(lines, ignore_index=True)
    if b_max is not None:
        line_df = line_df[line_df["b"] <= b_max]
    finite = np.isfinite(line_df["value"].to_numpy(dtype=float))
    line_df["value"], dropped = log_safe(line_df["value"])
    gone = list(line_df.loc[finite & line_df["value"].isna().to_numpy(), "b"])
    line_df = line_df.dropna(subset=["value"])
    est = None
    if estimates is not None and len(estimates):
        est = estimates.copy()
        finite = np.isfinite(est["value"].to_numpy(dtype=float))
        est["value"], dropped_est = log_safe(est["value"])
        gone += list(est.loc[finite & est["value"].isna().to_numpy(), "b"])
        dropped += dropped_est
        est = est.dropna(subset=["value"])
        est["lo"] = est["lo"].where(est["lo"] > 0, est["value"].min() * 1e-3)
        est["curve"] = REPLICA_KEY
    names = [EXACT_LABEL, *(fits or {})]
    domain = [n for n in names if (line_df["curve"] == n).any()] + ([REPLICA_KEY] if est is not None and len(est)
                                                                     else [])
    palette = {EXACT_LABEL: CATEGORY[0], REPLICA_KEY: "#000000"}
    others = iter(CATEGORY[1:])
    color = alt.Color("curve:N", title=None, scale=alt.Scale(domain=domain, range=[
        palette.get(n) or next(others) for n in domain]), legend=alt.Legend(orient="top", labelLimit=320))
    bs = pd.concat([line_df["b"], est["b"] if est is not None else pd.Series(dtype=float)]).to_numpy(dtype=float)
    if not len(bs):
        return alt.layer(message_chart(f"{title} at t = {t}: no positive value to draw")).properties(height=120, autosize=AUTOSIZE)
    lo_b, hi_b = float(bs.min()), float(bs.max())
    xs = alt.Scale(type="log", domain=[lo_b, hi_b], nice=False)
    x = alt.X("b:Q", scale=xs, title="batch size b", axis=alt.Axis(format=log_axis_format([lo_b, hi_b])))
    yvals = pd.concat([line_df["value"]] + ([est["lo"], est["hi"]] if est is not None else [])).to_numpy(dtype=float)
    ys = alt.Scale(type="log")
    y_axis = alt.Axis(format=log_axis_format(yvals))
    layers = [alt.Chart(line_df).mark_line(strokeWidth=2).encode(
        x=x, y=alt.Y("value:Q", scale=ys, title=title, axis=y_axis), color=color,
        strokeDash=alt.condition(alt.datum.curve == EXACT_LABEL, alt.value([1, 0]), alt.value([6, 3])),
        tooltip=["curve", "b", "value"])]
    if est is not None and len(est):
        layers.append(alt.Chart(est).mark_errorbar(ticks=True).encode(
            x=x, y=alt.Y("lo:Q", scale=ys, title=title, axis=y_axis), y2="hi:Q", color=color))
        layers.append(alt.Chart(est).mark_point(filled=True, size=45).encode(
            x=x, y=alt.Y("value:Q", scale=ys, title=title, axis=y_axis), color=color,
            tooltip=["b", "value", "lo", "hi", "se"]))
    return alt.layer(*layers).properties(title=_title(f"{title} at t = {t} against b (log–log)",
                                                      [b_dropped_note(dropped, gone, b_max)]), height=320,
                                         autosize=AUTOSIZE)


def b_dropped_note(count: int, gone: list, n: float | None) -> str:
    """The against-b chart's subtitle when its log axes left values out, naming the b: "b = n = 500" when it is the
    whole data set (var = 0 there without replacement: every step sees every row)."""
    if not count:
        return ""
    bs = sorted({float(b) for b in gone})
    name = ", ".join(f"{b:g}" for b in bs[:6]) + (" …" if len(bs) > 6 else "")
    if n is not None and bs == [float(n)]:
        return (f"The value at b = n = {n:g} is 0 (a mini-batch of the whole data set has no sampling noise) and is "
                f"not drawn on the log axis ({count} value{'s' if count > 1 else ''}).")
    return dropped_note(count).rstrip(".") + f" (at b = {name})."


def z_chart(z: np.ndarray, t: np.ndarray, batch_sizes: list[int]) -> alt.Chart:
    """Heat map of z = (estimate − exact)/SE over (t, b); colour clipped to [−4, 4]."""
    keep = _thin(np.asarray(t))
    rows = [pd.DataFrame({"t": t[keep], "b": str(b), "z": z[j][keep]}) for j, b in enumerate(batch_sizes)]
    df = pd.concat(rows, ignore_index=True).dropna()
    return alt.Chart(df).mark_rect().encode(
        x=alt.X("t:O", title="iteration t", axis=alt.Axis(labelOverlap=True)),
        y=alt.Y("b:N", sort=[str(b) for b in batch_sizes], title="b"),
        color=alt.Color("z:Q", scale=alt.Scale(scheme="redblue", domain=[-4, 4], clamp=True), title="z"),
        tooltip=["t", "b", "z"]).properties(title="z = (estimate − exact) / SE", height={"step": 24},
                                            autosize=AUTOSIZE)


# -- the classifiers' variance split and noise scale --------------------------------------------------------------

SPLIT_TERMS = {"total var(g)": "var_g", "one-step noise": "noise_one_step", "spread of ∇L": "noise_spread"}
SUM_TERM = "one-step + spread"


def split_chart(x: np.ndarray, x_name: str, batch_sizes: list[int], curves: dict, band: str = "95 %", *,
                table=()) -> alt.LayerChart:
    """Law of total variance on a log axis, one colour per term, one dash per b: the measured terms with their bands
    (``curves[q]`` has value, lo, hi; shaded only for the terms whose ``Quantity.band`` the setting's quantity
    ``table`` declares, ``draws_band``), and the sum of the two parts (a line: its SE is not the sum of theirs).
    Exact zeros (the spread of ∇L at epoch 0, where every replica sits at w_0) are dropped and counted."""
    rows = []
    for j, b in enumerate(batch_sizes):
        for term, q in SPLIT_TERMS.items():
            c = curves[q]
            rows.append(pd.DataFrame({x_name: x, "b": str(b), "term": term, "value": c["value"][j],
                                      "lo": c["lo"][j], "hi": c["hi"][j], "se": c["se"][j]}))
        rows.append(pd.DataFrame({x_name: x, "b": str(b), "term": SUM_TERM, "value": curves["noise_one_step"]["value"][j]
                                  + curves["noise_spread"]["value"][j], "lo": np.nan, "hi": np.nan, "se": np.nan}))
    df = pd.concat(rows, ignore_index=True)
    df["value"], dropped = log_safe(df["value"])
    df["lo"] = df["lo"].where(df["lo"] > 0)
    df["lo"] = df["lo"].fillna(df["value"]).clip(lower=_positive_floor(df, ("value",)))
    df["hi"] = df["hi"].where(df["hi"] > 0)
    if not df["value"].notna().any():
        return alt.layer(message_chart("Variance split: no positive value to draw")).properties(height=120, autosize=AUTOSIZE)
    terms = [*SPLIT_TERMS, SUM_TERM]
    color = alt.Color("term:N", title="term", sort=terms, scale=alt.Scale(domain=terms, range=CATEGORY[:len(terms)]),
                      legend=alt.Legend(symbolOpacity=1, symbolType="stroke", symbolStrokeWidth=3))
    dashes = [[1, 0], [6, 3], [2, 2], [8, 2, 2, 2]]
    order = sorted({str(b) for b in batch_sizes}, key=int)
    dash = alt.StrokeDash("b:O", sort=order, title="batch size b", scale=alt.Scale(
        domain=order, range=[dashes[i % len(dashes)] for i in range(len(order))]),
        legend=alt.Legend(symbolType="stroke", symbolStrokeWidth=2, symbolSize=400, symbolStrokeColor="#444"))
    ys = alt.Scale(type="log")
    y_axis = alt.Axis(format=log_axis_format(df["value"]))
    y_title = "variance (log)"
    base = alt.Chart(df).encode(x=alt.X(f"{x_name}:Q", title=x_name, axis=step_axis(df[x_name])),
                                color=color)
    shaded = [term for term, q in SPLIT_TERMS.items() if draws_band(q, table)]
    keep = (alt.datum.term != SUM_TERM if len(shaded) == len(SPLIT_TERMS)
            else alt.FieldOneOfPredicate(field="term", oneOf=shaded))
    shade = [base.transform_filter(keep).mark_area(opacity=BAND_OPACITY * 0.6, strokeWidth=0).encode(
        y=alt.Y("lo:Q", scale=ys, title=y_title, axis=y_axis), y2="hi:Q", detail="b:N")] if shaded else []
    # the sum is a thin line over the thick terms: where it coincides with the one-step noise both stay visible
    lines = base.mark_line().encode(
        y=alt.Y("value:Q", scale=ys, title=y_title, axis=y_axis), strokeDash=dash,
        strokeWidth=alt.condition(alt.datum.term == SUM_TERM, alt.value(1.2), alt.value(2.8)),
        tooltip=["b", "term", x_name, "value", "se"])
    dots = base.mark_point(filled=True, size=22).encode(y=alt.Y("value:Q", scale=ys, title=y_title, axis=y_axis),
                                                        tooltip=["b", "term", x_name, "value", "se"])
    shaded_note = "" if not shaded else (f" (shaded: {band})" if len(shaded) == len(SPLIT_TERMS)
                                         else f" (shaded: {band}, {', '.join(shaded)})")
    return alt.layer(*shade, lines, dots).properties(
        title=_title(f"var(g) = one-step noise + spread of ∇L{shaded_note}", [dropped_note(dropped)]),
        height=300, autosize=AUTOSIZE)


def b_simple_chart(x: np.ndarray, x_name: str, batch_sizes: list[int], curve: dict, band: str = "95 %", *,
                   table=()) -> alt.LayerChart:
    """B_simple = tr Σ / ‖∇L‖² along training on a log axis, one colour per b with its band (shaded only where the
    setting's quantity ``table`` declares b_simple's ``Quantity.band``, ``draws_band``), the batch sizes run
    as dashed horizontal rules of the same colour. Non-positive estimates (‖∇L‖² below its noise) are dropped and
    counted."""
    df = pd.concat([pd.DataFrame({x_name: x, "b": str(b), "value": curve["value"][j], "lo": curve["lo"][j],
                                  "hi": curve["hi"][j], "se": curve["se"][j]}) for j, b in enumerate(batch_sizes)],
                   ignore_index=True)
    df["value"], dropped = log_safe(df["value"])
    df["lo"] = df["lo"].where(df["lo"] > 0).fillna(df["value"])
    df["hi"] = df["hi"].where(df["hi"] > 0)
    order = sorted({str(b) for b in batch_sizes}, key=int)
    color = b_color(order)
    rule = pd.DataFrame({"b_line": [float(b) for b in batch_sizes], "b": [str(b) for b in batch_sizes]})
    if not df["value"].notna().any():
        return alt.layer(message_chart("B_simple: no resolved positive estimate to draw (‖∇L‖² within its noise: "
                                       "raise noise_samples)")).properties(
            height=120, autosize=AUTOSIZE)
    ys = alt.Scale(type="log")
    y_title = "B_simple = tr Σ / ‖∇L‖²"
    y_axis = alt.Axis(format=log_axis_format(pd.concat([df["value"], rule["b_line"]])))
    base = alt.Chart(df).encode(x=alt.X(f"{x_name}:Q", title=x_name, axis=step_axis(df[x_name])),
                                color=color)
    shade = draws_band("b_simple", table)
    return alt.layer(
        *([base.mark_area(opacity=BAND_OPACITY, strokeWidth=0).encode(y=alt.Y("lo:Q", scale=ys, title=y_title,
                                                                             axis=y_axis), y2="hi:Q")]
          if shade else []),
        base.mark_line(strokeWidth=2, point=alt.OverlayMarkDef(size=25, filled=True)).encode(
            y=alt.Y("value:Q", scale=ys, title=y_title, axis=y_axis), tooltip=["b", x_name, "value", "se"]),
        alt.Chart(rule).mark_rule(strokeDash=[4, 4]).encode(y=alt.Y("b_line:Q", scale=ys, title=y_title), color=color),
    ).properties(title=_title(f"gradient noise scale (McCandlish et al.{f'; shaded: {band}' if shade else ''}); "
                              "dashed: the batch sizes run",
                              [dropped_note(dropped, "estimates")]), height=260, autosize=AUTOSIZE)


# -- the batch-size advisor -----------------------------------------------------------------------------------------


def _rule_color(rules: list[str]) -> alt.Color:
    return alt.Color("rule:N", title="scaling rule", sort=rules,
                     scale=alt.Scale(domain=rules, range=[CATEGORY[i % len(CATEGORY)] for i in range(len(rules))]))


def _b_axis(b) -> alt.X:
    b = np.asarray(b, dtype=float)
    return alt.X("b:Q", title="batch size b", scale=alt.Scale(type="log", domain=[float(b.min()), float(b.max())],
                                                              nice=False),
                 axis=alt.Axis(format=log_axis_format(b)))


ALL_DIVERGED = "Every rule diverged at every b: nothing to draw. Lower the learning rate's constant or the budget."


def advisor_frame(answers: dict) -> pd.DataFrame:
    """The rows the advisor's charts draw from ``api.advise_rules`` / ``api.sweep`` answers: rule, b, steps, loss,
    its SE and 95 % interval where it is a replica estimate, B_simple where measured, diverged, best."""
    rows = []
    for rule, ans in answers.items():
        for b, row in ans["curves"].items():
            loss, se = row.get("loss"), row.get("loss_se")
            rows.append({"rule": rule, "b": int(b), "steps": row.get("steps"), "c_b": row.get("lr_c"),
                         "loss": np.nan if loss is None else loss, "loss_se": np.nan if se is None else se,
                         "lo": loss - 1.96 * se if loss is not None and se else np.nan,
                         "hi": loss + 1.96 * se if loss is not None and se else np.nan,
                         "b_simple": row.get("b_simple"), "diverged": bool(row.get("diverged")),
                         "best": ans.get("best_b") == int(b)})
    return pd.DataFrame(rows)


def advisor_chart(answers: dict, y_title: str, title: str, log: bool = True) -> alt.LayerChart:
    """Final loss against b at a fixed budget, one colour per scaling rule, the rows that did not diverge; 95 %
    error bars where the loss is a replica estimate; the best b of each rule an open diamond — several rules' best
    at the same point as concentric diamonds with one tooltip naming them all. When every rule diverged at every b
    the chart says so."""
    table = advisor_frame(answers)
    rules = list(dict.fromkeys(table["rule"])) if len(table) else []
    ok, dropped = _drawn_losses(table, log)
    if not len(ok):
        return alt.layer(message_chart(ALL_DIVERGED)).properties(title=title, height=120, autosize=AUTOSIZE)
    color = _rule_color(rules)
    x = _b_axis(ok["b"])
    vals = [ok["loss"], ok["lo"], ok["hi"]]
    yvals = pd.concat(vals).to_numpy(dtype=float)
    ys = alt.Scale(type="log") if log else alt.Scale(zero=False)
    y_axis = alt.Axis(format=log_axis_format(yvals) if log else "~g")
    tooltip = [c for c in ("rule", "b", "steps", "c_b", "loss", "loss_se") if ok[c].notna().any()]
    layers = [alt.Chart(ok).mark_line(point=alt.OverlayMarkDef(size=30, filled=True)).encode(
        x=x, y=alt.Y("loss:Q", scale=ys, title=y_title, axis=y_axis), color=color, tooltip=tooltip)]
    if ok["lo"].notna().any():
        bars = ok.dropna(subset=["lo", "hi"])
        if log:
            bars = bars.assign(lo=bars["lo"].where(bars["lo"] > 0, bars["loss"] * 1e-3))
        layers.append(alt.Chart(bars).mark_errorbar(ticks=True).encode(
            x=x, y=alt.Y("lo:Q", scale=ys, title=y_title, axis=y_axis), y2="hi:Q", color=color))
    if ok["best"].any():
        best = ok[ok["best"]].copy()
        spot = best["b"].astype(str) + "|" + best["loss"].map(lambda v: f"{v:.6g}")
        best["best for"] = spot.map(best.groupby(spot)["rule"].agg(", ".join))
        best["size"] = 170 + 150 * best.groupby(spot).cumcount()  # the second rule's diamond rings the first's
        layers.append(alt.Chart(best).mark_point(shape="diamond", filled=False, strokeWidth=2.5).encode(
            x=x, y=alt.Y("loss:Q", scale=ys, title=y_title, axis=y_axis), color=color,
            size=alt.Size("size:Q", scale=None, legend=None), tooltip=["best for", "b", "loss"]))
    return alt.layer(*layers).properties(title=_title(title, [dropped_note(dropped)]), height=340, autosize=AUTOSIZE)


def _drawn_losses(table: pd.DataFrame, log: bool) -> tuple[pd.DataFrame, int]:
    """The advisor rows a loss chart draws: not diverged, with a loss, and on a log axis a positive one (the count
    of the non-positive ones left out beside)."""
    ok = table[~table["diverged"].astype(bool)].copy() if len(table) else table
    ok = ok[pd.to_numeric(ok["loss"], errors="coerce").notna()] if len(ok) else ok
    dropped = 0
    if log and len(ok):
        ok["loss"], dropped = log_safe(ok["loss"])
        ok = ok.dropna(subset=["loss"])
    return ok, dropped


def advisor_momentum_frame(result: dict) -> pd.DataFrame:
    """``advisor_frame`` of every (rule, β) of an ``api.advise_momentum`` result, with the column β ("0.9") and
    ``best_overall``: the rule's best (b, β)."""
    parts = []
    for rule, per_beta in result["answers"].items():
        best = result["best"].get(rule) or {}
        for key, ans in per_beta.items():
            part = advisor_frame({rule: ans}).assign(**{"β": key})
            part["best_overall"] = part["best"] & (float(key) == best.get("momentum")) & (part["b"] == best.get("b"))
            parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def advisor_momentum_chart(result: dict, y_title: str, title: str, log: bool = True) -> alt.LayerChart:
    """Final loss against b at a fixed budget, one line per momentum β (colour; one dash per scaling rule when there
    are several), the rows that did not diverge; 95 % error bars where the loss is a replica estimate; the best b of
    each β an open diamond, the best (b, β) of each rule a star. When every lane diverged the chart says so."""
    table = advisor_momentum_frame(result)
    betas = [f"{float(m):g}" for m in result["momentum"]]
    rules = list(result["answers"])
    ok, dropped = _drawn_losses(table, log)
    if not len(ok):
        return alt.layer(message_chart(ALL_DIVERGED)).properties(title=title, height=120, autosize=AUTOSIZE)
    ok["line"] = ok["β"] + " | " + ok["rule"]
    color = alt.Color("β:N", title="momentum β", sort=betas,
                      scale=alt.Scale(domain=betas, range=[CATEGORY[i % len(CATEGORY)] for i in range(len(betas))]))
    dash = ([alt.StrokeDash("rule:N", title="scaling rule", sort=rules)] if len(rules) > 1 else [])
    x = _b_axis(ok["b"])
    ys = alt.Scale(type="log") if log else alt.Scale(zero=False)
    y_axis = alt.Axis(format=log_axis_format(pd.concat([ok["loss"], ok["lo"], ok["hi"]]).to_numpy(dtype=float))
                      if log else "~g")
    y = alt.Y("loss:Q", scale=ys, title=y_title, axis=y_axis)
    tooltip = [c for c in ("β", "rule", "b", "steps", "c_b", "loss", "loss_se") if ok[c].notna().any()]
    layers = [alt.Chart(ok).mark_line(point=alt.OverlayMarkDef(size=30, filled=True)).encode(
        x=x, y=y, color=color, detail="line:N", tooltip=tooltip, **({"strokeDash": dash[0]} if dash else {}))]
    if ok["lo"].notna().any():
        bars = ok.dropna(subset=["lo", "hi"])
        if log:
            bars = bars.assign(lo=bars["lo"].where(bars["lo"] > 0, bars["loss"] * 1e-3))
        layers.append(alt.Chart(bars).mark_errorbar(ticks=True).encode(
            x=x, y=alt.Y("lo:Q", scale=ys, title=y_title, axis=y_axis), y2="hi:Q", color=color, detail="line:N"))
    if ok["best"].any():
        layers.append(alt.Chart(ok[ok["best"]]).mark_point(shape="diamond", filled=False, size=170, strokeWidth=2.5
                                                            ).encode(x=x, y=y, color=color,
                                                                     tooltip=["β", "rule", "b", "loss"]))
    if ok["best_overall"].any():
        stars = ok[ok["best_overall"]].assign(**{"best (b, β) for": lambda f: f["rule"]})
        layers.append(alt.Chart(stars).mark_point(shape="M0,-1L0.24,-0.33L0.95,-0.31L0.39,0.12L0.59,0.81L0,0.4"
                                                        "L-0.59,0.81L-0.39,0.12L-0.95,-0.31L-0.24,-0.33Z",
                                                  filled=True, size=420, stroke="black", strokeWidth=1).encode(
            x=x, y=y, color=color, tooltip=["best (b, β) for", "β", "b", "loss"]))
    return alt.layer(*layers).properties(title=_title(title, [dropped_note(dropped)]), height=340, autosize=AUTOSIZE)


def advisor_b_simple_chart(answers: dict) -> alt.LayerChart:
    """B_simple at the end of training against b per rule (log–log), the best b of the rules as dashed vertical
    rules, one per distinct b, labelled with every rule whose best it is."""
    table = advisor_frame(answers)
    best = {r: a["best_b"] for r, a in answers.items() if a.get("best_b")}
    rules = list(dict.fromkeys(table["rule"]))
    df = table[["rule", "b", "b_simple"]].copy() if len(table) else pd.DataFrame(columns=["rule", "b", "b_simple"])
    df["b_simple"], dropped = log_safe(df["b_simple"])
    df = df.dropna(subset=["b_simple"])
    if not len(df):
        return alt.layer(message_chart("B_simple: no positive estimate to draw")).properties(height=120, autosize=AUTOSIZE)
    color = _rule_color(rules)
    x = _b_axis(pd.concat([df["b"], pd.Series(list(best.values()), dtype=float)]))
    ys = alt.Scale(type="log")
    y_axis = alt.Axis(format=log_axis_format(df["b_simple"]))
    layers = [alt.Chart(df).mark_line(point=alt.OverlayMarkDef(size=30, filled=True)).encode(
        x=x, y=alt.Y("b_simple:Q", scale=ys, title="B_simple at the end of training", axis=y_axis), color=color,
        tooltip=["rule", "b", "b_simple"])]
    marks = pd.DataFrame([{"b": b, "best for": ", ".join(r for r, bb in best.items() if bb == b)}
                          for b in sorted(set(best.values()))])
    if len(marks):
        marks["label"] = "best b: " + marks["best for"]
        layers.append(alt.Chart(marks).mark_rule(strokeDash=[4, 4], color="#444").encode(x=x, tooltip=["best for",
                                                                                                           "b"]))
        layers.append(alt.Chart(marks).mark_text(align="left", dx=4, dy=-4, baseline="top", color="#444",
                                                 y=0).encode(x=x, text="label:N"))
    return alt.layer(*layers).properties(title=_title("B_simple beside the best b (dashed)",
                                                      [dropped_note(dropped, "estimates")]), height=260, autosize=AUTOSIZE)


def frontier_chart(points: pd.DataFrame, fit: pd.DataFrame | None) -> alt.LayerChart:
    """Steps against examples to reach a target (log–log), one colour and shape per rule (coinciding points of two
    rules stay visible), McCandlish et al.'s fitted frontier dashed."""
    rules = list(dict.fromkeys(points["rule"]))
    color = _rule_color(rules)
    shape = alt.Shape("rule:N", sort=rules, title="scaling rule", scale=alt.Scale(
        domain=rules, range=["circle", "square", "triangle-up", "diamond", "cross"][:len(rules)] or ["circle"]))
    xs, ys = alt.Scale(type="log"), alt.Scale(type="log")
    x = alt.X("examples:Q", scale=xs, title="examples b·S to reach the target",
              axis=alt.Axis(format=log_axis_format(points["examples"])))
    y = alt.Y("steps:Q", scale=ys, title="steps S to reach the target",
              axis=alt.Axis(format=log_axis_format(points["steps"])))
    layers = [alt.Chart(points).mark_point(filled=False, size=80, strokeWidth=2).encode(
        x=x, y=y, color=color, shape=shape, tooltip=["rule", "b", "steps", "examples"])]
    if fit is not None and len(fit):
        layers.append(alt.Chart(fit).mark_line(strokeDash=[5, 3]).encode(x=x, y=y, color=color))
    return alt.layer(*layers).properties(title="(S/S_min − 1)(E/E_min − 1) = 1 fitted (dashed)", height=300, autosize=AUTOSIZE)


NOISE_SCALES = ("B_simple", "B_noise")  # McCandlish et al.'s two noise scales (docs/theory.md §11)
NOISE_SCALE_DASH = alt.StrokeDash("scale:N", sort=list(NOISE_SCALES), title="noise scale", scale=alt.Scale(
    domain=list(NOISE_SCALES), range=[[1, 0], [6, 3]]), legend=alt.Legend(symbolType="stroke", symbolStrokeWidth=2,
                                                                        symbolStrokeColor="#444"))


def b_noise_chart(b_simple: dict, b_noise: dict, batch_sizes: list[int], rule: str) -> alt.LayerChart:
    """The exact noise scales along each b's trajectory (``b_simple`` and ``b_noise`` of an ``api.advise_rules``
    answer), log–log: B_simple = E tr Σ/E‖∇L‖² solid, B_noise = E tr(HΣ)/E ∇LᵀH∇L dashed, one colour per b; t = 0 and
    non-positive values cannot be drawn there and are counted."""
    df = pd.concat([pd.DataFrame({"t": curves["t"], "b": str(b), "scale": name,
                                  "value": pd.to_numeric(pd.Series(vals), errors="coerce")})
                    for name, curves in zip(NOISE_SCALES, (b_simple, b_noise)) for b, vals in curves["curves"].items()],
                   ignore_index=True)
    df["value"], dropped = log_safe(df["value"])
    at_zero = int((df["t"] <= 0).sum())
    df = df[df["value"].notna() & (df["t"] > 0)]
    if not len(df):
        return alt.layer(message_chart("B_simple, B_noise: no positive value to draw")).properties(
            height=120, autosize=AUTOSIZE)
    order = [str(b) for b in sorted(batch_sizes)]
    df["b"] = df["b"].astype(str)
    notes = [dropped_note(dropped), "t = 0 is not on the log t axis." if at_zero else ""]
    return alt.Chart(df).mark_line(strokeWidth=2).encode(
        x=alt.X("t:Q", scale=alt.Scale(type="log"), title="iteration t", axis=alt.Axis(format=log_axis_format(df["t"]))),
        y=alt.Y("value:Q", scale=alt.Scale(type="log"), title="noise scale (batch size)",
                axis=alt.Axis(format=log_axis_format(df["value"]))),
        color=b_color(order), strokeDash=NOISE_SCALE_DASH, detail="scale:N",
        tooltip=["b", "scale", "t", "value"]).properties(
        title=_title(f"B_simple (solid) and B_noise (dashed) along each b's trajectory ({rule} scaling)", notes),
        height=300, autosize=AUTOSIZE)


# -- sweeps ---------------------------------------------------------------------------------------------------------


def _as_number(value) -> float | None:
    """A sweep value as a number: ints, floats and fraction strings ("1/4"); None for anything else."""
    from fractions import Fraction

    if isinstance(value, bool):
        return None
    try:
        return float(Fraction(str(value)))
    except (ValueError, ZeroDivisionError):
        return None


DISCRETE_FIELDS = ("momentum", "nesterov", "betas")  # optimizer settings: a few levels (0, 0.5, 0.9, 0.99), ordinal


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
    return alt.layer(*layers).properties(title=_title(title, [dropped_note(dropped)]), height=340, autosize=AUTOSIZE)


# -- the critical batch size (backend/cbs.py) -----------------------------------------------------------------------


RULE_DASHES = [[1, 0], [8, 4], [2, 3]]  # solid, dashed, dotted: a later rule over an earlier one shows both


def _nested_widths(n: int) -> list[float]:
    """Line widths of n rules drawn one over another, widest first: where two rules give the same value the later
    one (narrower, dashed) is drawn inside the earlier, so both stay visible."""
    return [round(6.0 - 3.5 * i / max(n - 1, 1), 2) for i in range(n)]


def cbs_chart(docs: dict[str, dict]) -> alt.LayerChart:
    """The critical batch size at each checkpoint, one colour per scaling rule (``api.cbs_rules``' documents), with
    B_simple(t) (grey, solid) and B_noise(t) (grey, dashed) on the same log axis; None values are left out and
    counted."""
    rules = list(docs)
    first = next(iter(docs.values()))
    cbs_rows = pd.DataFrame([{"t": row["t"], "rule": rule, "b": row["cbs"]} for rule, doc in docs.items()
                             for row in doc["checkpoints"]])
    scale_rows = pd.DataFrame([{"t": row["t"], "scale": name, "b": row[key]} for row in first["checkpoints"]
                               for name, key in zip(NOISE_SCALES, ("b_simple", "b_noise"))])
    cbs_rows["b"], d1 = log_safe(cbs_rows["b"])
    scale_rows["b"], d2 = log_safe(scale_rows["b"])
    missing = int(cbs_rows["b"].isna().sum())
    drawn = pd.concat([cbs_rows["b"], scale_rows["b"]]).dropna()
    if not len(drawn):
        return alt.layer(message_chart("Critical batch size: nothing to draw")).properties(height=120, autosize=AUTOSIZE)
    x = alt.X("t:Q", title="checkpoint t (steps of the reference run)", axis=step_axis(cbs_rows["t"]))
    y = alt.Y("b:Q", scale=alt.Scale(type="log"), title="batch size", axis=alt.Axis(format=log_axis_format(drawn)))
    layers = [alt.Chart(scale_rows.dropna()).mark_line(color="#555", strokeWidth=1.5).encode(
                  x=x, y=y, strokeDash=NOISE_SCALE_DASH, tooltip=["scale", "t", "b"]),
              *[alt.Chart(cbs_rows[cbs_rows["rule"] == rule].dropna())  # one layer per rule, widest first
                .mark_line(strokeWidth=width, strokeDash=dash, point=alt.OverlayMarkDef(size=60, filled=True))
                .encode(x=x, y=y, color=_rule_color(rules), tooltip=["rule", "t", "b"])
                for rule, width, dash in zip(rules, _nested_widths(len(rules)),
                                             [RULE_DASHES[i % len(RULE_DASHES)] for i in range(len(rules))])]]
    notes = [dropped_note(d1 + d2), f"{missing} checkpoint(s) without a critical batch size (the k = 1 branch "
                                    "diverged) left out." if missing else "",
             "Rules at the same b are drawn one inside another (the first widest and solid, then dashed, dotted)."
             if len(rules) > 1 else ""]
    return alt.layer(*layers).properties(
        title=_title(f"Critical batch size along training (ε = {first['tolerance']:g}); grey: B_simple (solid), "
                     "B_noise (dashed)", notes), height=320, autosize=AUTOSIZE)


def branch_loss_chart(docs: dict[str, dict], t: int) -> alt.LayerChart:
    """E L at the end of each branch from checkpoint ``t`` against its batch size b = k·B, one colour per rule
    (log–log); the threshold (1 + ε) × the k = 1 branch's loss dotted, each rule's critical batch size a diamond;
    diverged branches are left out and named in the subtitle. Replica documents: each branch's 95 % interval
    loss ± t_{0.975, R−1} · loss_se (R its live replicas), its lower end clipped at the smallest drawn value."""
    from backend.stats import t_quantile

    rules = list(docs)
    rows, cbs_rows, threshold, diverged = [], [], None, []
    for rule, doc in docs.items():
        row = next(r for r in doc["checkpoints"] if r["t"] == t)
        for b, br in row["branches"].items():
            if br["diverged"] or br["loss"] is None:
                diverged.append(f"{rule} b = {b}")
                continue
            rows.append({"rule": rule, "b": int(b), "loss": br["loss"], "steps": br["steps"], "lr": br["lr"]})
            if br.get("loss_se") is not None:
                half = float(t_quantile(0.95, np.asarray(max(doc["replicas"] - br["diverged_replicas"] - 1, 1)))
                             ) * br["loss_se"]
                rows[-1].update(se=br["loss_se"], lo=br["loss"] - half, hi=br["loss"] + half)
            if row["cbs"] == int(b):
                cbs_rows.append(rows[-1])
        first = row["branches"][str(min(int(b) for b in row["branches"]))]
        if first["loss"] is not None and not first["diverged"]:
            threshold = (1 + doc["tolerance"]) * first["loss"]
    df = pd.DataFrame(rows)
    if not len(df):
        return alt.layer(message_chart(f"Every branch from t = {t} diverged")).properties(height=120, autosize=AUTOSIZE)
    df["loss"], dropped = log_safe(df["loss"])
    df = df.dropna(subset=["loss"])
    x = _b_axis(df["b"])
    y = alt.Y("loss:Q", scale=alt.Scale(type="log"), title="E L at the end of the branch",
              axis=alt.Axis(format=log_axis_format(df["loss"])))
    color = _rule_color(rules)
    layers = [alt.Chart(df).mark_line(strokeWidth=2, point=alt.OverlayMarkDef(size=40, filled=True)).encode(
        x=x, y=y, color=color, tooltip=["rule", "b", "steps", "lr", "loss", *(["se"] if "se" in df else [])])]
    if "se" in df:  # replica estimates: 95 % intervals
        bars = df.dropna(subset=["se"]).copy()
        bars["lo"] = bars["lo"].clip(lower=_positive_floor(df, ("loss",)))
        layers.append(alt.Chart(bars).mark_errorbar(ticks=True).encode(
            x=x, y=alt.Y("lo:Q", scale=alt.Scale(type="log"), title="E L at the end of the branch"), y2="hi:Q",
            color=color, tooltip=["rule", "b", "loss", "se", "lo", "hi"]))
    if cbs_rows:
        layers.append(alt.Chart(pd.DataFrame(cbs_rows)).mark_point(shape="diamond", size=220, filled=False,
                                                                   strokeWidth=2.5).encode(x=x, y=y, color=color))
    if threshold is not None and threshold > 0:
        layers.append(alt.Chart(pd.DataFrame({"loss": [threshold]})).mark_rule(strokeDash=[2, 3], color="#444")
                      .encode(y=alt.Y("loss:Q", scale=alt.Scale(type="log"))))
    notes = [dropped_note(dropped), ("diverged (not drawn): " + ", ".join(diverged)) if diverged else ""]
    bars_note = "; bars: 95 % intervals over the replicas" if "se" in df else ""
    return alt.layer(*layers).properties(title=_title(f"Branches from t = {t}: loss against b (◇ critical batch "
                                                      f"size; dotted: (1 + ε) × the k = 1 branch{bars_note})", notes),
                                         height=320, autosize=AUTOSIZE)


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
