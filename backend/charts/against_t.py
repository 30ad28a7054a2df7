"""Curves against the step t or the epoch: theory over the replica estimate and its band, the z-scores, the variance
split and B_simple."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from backend.charts.base import (AUTOSIZE, b_color, b_order, BAND_OPACITY, CATEGORY, chart_title, DIM_OPACITY,
                                 drawable_frame, draws_band, dropped_note, ESTIMATE_LABEL, every_kth, EXACT_LABEL,
                                 isolated_points, log_axis_format, log_safe, message_chart, positive_floor, step_axis,
                                 thinned, value_axis, value_scale, zero_note)

Z95 = 1.96  # the normal 97.5 % quantile: the error bars' 95 % interval


def curves_frame(t: np.ndarray, batch_sizes: list[int], theory_curves: dict | None, sim_curves: dict | None,
                 quantity: str, finite_count: np.ndarray | None = None, x_name: str = "t") -> pd.DataFrame:
    """Long table: x (column ``x_name``: t or epoch), b, source ('exact' | 'estimate'), value, lo, hi, se (and the
    finite replicas behind it). Every setting's results (backend/curves.py) go through here."""
    t = np.asarray(t)
    keep = thinned(t)
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


def x_title(x_name: str) -> str:
    """The x axis's title: "iteration t" for the step t, else the name (epoch)."""
    return "iteration t" if x_name == "t" else x_name


def time_chart(df: pd.DataFrame, title: str, log: bool = True, x_name: str = "t", x_title: str = "iteration t",
               band: str = "95 %", nonnegative: bool = True, shade: bool = True,
               error_bars: bool = False) -> alt.LayerChart:
    """Quantity against t (or epoch), one colour per b (sequential over b when there are many): the exact value a
    solid line on top (isolated exact points, e.g. t = 0 alone, as filled dots), the replica estimate a dashed line
    with open-circle markers over its see-through band (``band`` says what it is; shaded only where ``shade``: the
    quantity's ``Quantity.band``, ``draws_band``). A key above the chart names the three; clicking a b in the legend
    highlights it (the band stays ≤ 0.5 opaque either way). ``error_bars``: each marker also gets the line's 95 %
    interval, value ± 1.96 SE (where the band is something else: the spread over initial weights). The x axis spans
    the frame's steps, the run's, before a run too (where only a few exact points exist). The one chart path of
    every setting."""
    raw = df
    df, dropped = drawable_frame(df, log, nonnegative)
    band_label = (f"{ESTIMATE_LABEL} ○ (shaded: {band + ' band' if band.endswith('%') else band})" if shade
                  else f"{ESTIMATE_LABEL} ○")
    df["curve"] = df["source"].map({"exact": EXACT_LABEL, "estimate": band_label})
    df["marker"] = False
    df["dot"] = False
    est_rows, ex_rows = df["source"] == "estimate", df["source"] == "exact"
    if est_rows.any():
        df.loc[est_rows, "marker"] = every_kth(df[est_rows], x_name)
    if ex_rows.any():
        df.loc[ex_rows, "dot"] = isolated_points(df[ex_rows], x_name)
    has_exact, has_est = bool(ex_rows.any()), bool(est_rows.any())
    finite = np.isfinite(df["value"].to_numpy(dtype=float))
    exact_dots_only = has_exact and bool(df.loc[ex_rows & finite, "dot"].all())  # no exact segment: key it as a dot
    line_domain = ([EXACT_LABEL] if has_exact and not exact_dots_only else []) + ([band_label] if has_est else [])
    key = alt.StrokeDash("curve:N", title=None, scale=alt.Scale(domain=line_domain, range=[
        [1, 0] if k == EXACT_LABEL else [5, 3] for k in line_domain]), legend=alt.Legend(
        orient="top", symbolType="stroke", symbolStrokeWidth=2, symbolSize=500, symbolStrokeColor="#444",
        labelLimit=400))
    values = pd.concat([df[c] for c in ("value", "lo", "hi")]).to_numpy(dtype=float)
    scale = value_scale(log, nonnegative)
    y_axis = value_axis(log, values)
    sel = alt.selection_point(fields=["b"], bind="legend")
    color = b_color(b_order(df))
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
        if error_bars:  # on a log axis the lower end is kept above 0 (an SE above half the value: cut at value/100)
            low = f"datum.value - {Z95} * datum.se"
            layers.append(est.transform_filter(alt.datum.marker).transform_calculate(
                err_lo=f"max({low}, datum.value / 100)" if log else low,
                err_hi=f"datum.value + {Z95} * datum.se").mark_rule(strokeWidth=1.2).encode(
                y=alt.Y("err_lo:Q", scale=scale, title=title, axis=y_axis), y2="err_hi:Q", opacity=opacity(0.9),
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
    height = 320 if len(b_order(df)) <= 12 else 400
    return alt.layer(*layers).add_params(sel).properties(title=chart_title(title, [zero_note(raw, df, dropped, x_name)]),
                                                         height=height, autosize=AUTOSIZE)


def z_chart(z: np.ndarray, t: np.ndarray, batch_sizes: list[int]) -> alt.Chart:
    """Heat map of z = (estimate − exact)/SE over (t, b); colour clipped to [−4, 4]."""
    keep = thinned(np.asarray(t))
    rows = [pd.DataFrame({"t": t[keep], "b": str(b), "z": z[j][keep]}) for j, b in enumerate(batch_sizes)]
    df = pd.concat(rows, ignore_index=True).dropna()
    return alt.Chart(df).mark_rect().encode(
        x=alt.X("t:O", title="iteration t", axis=alt.Axis(labelOverlap=True)),
        y=alt.Y("b:N", sort=[str(b) for b in batch_sizes], title="b"),
        color=alt.Color("z:Q", scale=alt.Scale(scheme="redblue", domain=[-4, 4], clamp=True), title="z"),
        tooltip=["t", "b", "z"]).properties(title="z = (estimate − exact) / SE", height={"step": 24},
                                            autosize=AUTOSIZE)


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
    df["lo"] = df["lo"].fillna(df["value"]).clip(lower=positive_floor(df, ("value",)))
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
    base = alt.Chart(df).encode(x=alt.X(f"{x_name}:Q", title=x_title(x_name), axis=step_axis(df[x_name])),
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
        title=chart_title(f"var(g) = one-step noise + spread of ∇L{shaded_note}", [dropped_note(dropped)]),
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
    base = alt.Chart(df).encode(x=alt.X(f"{x_name}:Q", title=x_title(x_name), axis=step_axis(df[x_name])),
                                color=color)
    shade = draws_band("b_simple", table)
    return alt.layer(
        *([base.mark_area(opacity=BAND_OPACITY, strokeWidth=0).encode(y=alt.Y("lo:Q", scale=ys, title=y_title,
                                                                             axis=y_axis), y2="hi:Q")]
          if shade else []),
        base.mark_line(strokeWidth=2, point=alt.OverlayMarkDef(size=25, filled=True)).encode(
            y=alt.Y("value:Q", scale=ys, title=y_title, axis=y_axis), tooltip=["b", x_name, "value", "se"]),
        alt.Chart(rule).mark_rule(strokeDash=[4, 4]).encode(y=alt.Y("b_line:Q", scale=ys, title=y_title), color=color),
    ).properties(title=chart_title(f"gradient noise scale (McCandlish et al.{f'; shaded: {band}' if shade else ''}); "
                              "dashed: the batch sizes run",
                              [dropped_note(dropped, "estimates")]), height=260, autosize=AUTOSIZE)
