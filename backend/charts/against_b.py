"""A quantity against the batch size b at one step: the exact curve over every b and the replica estimates at the batch
sizes run."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from backend.charts.base import (AUTOSIZE, CATEGORY, chart_title, dropped_note, EXACT_LABEL, log_axis_format,
                                 log_safe, message_chart)


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
    lines = alt.Chart(line_df).encode(x=x, y=alt.Y("value:Q", scale=ys, title=title, axis=y_axis), color=color,
                                      tooltip=["curve", "b", "value"])
    layers = [lines.transform_filter(alt.datum.curve != EXACT_LABEL).mark_line(strokeWidth=2, strokeDash=[6, 3]),
              lines.transform_filter(alt.datum.curve == EXACT_LABEL).mark_line(strokeWidth=2.5)]  # exact on top
    if est is not None and len(est):
        layers.append(alt.Chart(est).mark_errorbar(ticks=True).encode(
            x=x, y=alt.Y("lo:Q", scale=ys, title=title, axis=y_axis), y2="hi:Q", color=color))
        layers.append(alt.Chart(est).mark_point(filled=True, size=45).encode(
            x=x, y=alt.Y("value:Q", scale=ys, title=title, axis=y_axis), color=color,
            tooltip=["b", "value", "lo", "hi", "se"]))
    return alt.layer(*layers).properties(title=chart_title(f"{title} at t = {t} against b (log–log)",
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
