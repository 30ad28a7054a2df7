"""Altair chart builders: Result → chart. Only aggregated rows (steps × curves) are sent, never per-replica data.

Theory is a solid line, the replica estimate a dashed line over its 95 % band, one colour per batch size; clicking a
legend entry highlights one b. Log scales clip the lower bound above zero.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

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


def drawn_summary(df: pd.DataFrame) -> dict[str, int]:
    """How many finite points each source contributes (shown under the chart; the browser test reads it)."""
    ok = df[np.isfinite(df["value"].to_numpy(dtype=float))]
    return {"exact": int((ok["source"] == "exact").sum()), "estimate": int((ok["source"] == "estimate").sum())}


def _positive_floor(df: pd.DataFrame, cols: tuple[str, ...]) -> float:
    vals = pd.concat([df[c] for c in cols if c in df]).to_numpy(dtype=float)
    vals = vals[np.isfinite(vals) & (vals > 0)]
    return float(vals.min()) if len(vals) else 1e-12


def _b_order(df: pd.DataFrame) -> list[str]:
    return sorted(df["b"].unique(), key=int)


def time_chart(df: pd.DataFrame, title: str, log: bool = True, x_name: str = "t", x_title: str = "iteration t",
               band: str = "95 %") -> alt.Chart:
    """Quantity against t (or epoch): exact line where there is theory, the estimate dashed over its band (``band``
    says what it is), colour = b, legend-bound highlight. The one chart path of every setting."""
    df = df.copy()
    if log:
        # values below 1e-12 of the largest are float64 rounding of an exact zero (e.g. var(∇L(w_0)) = 0): not drawn
        top = np.nanmax(np.abs(df["value"].to_numpy(dtype=float))) if len(df) else 1.0
        for col in ("value", "lo", "hi"):
            df[col] = df[col].where(df[col] > 1e-12 * top)
        floor = _positive_floor(df, ("value", "lo"))
        df["lo"] = df["lo"].clip(lower=floor)
    sel = alt.selection_point(fields=["b"], bind="legend")
    scale = alt.Scale(type="log") if log else alt.Scale(zero=False)
    color = alt.Color("b:N", sort=_b_order(df), title="batch size b")
    axis = alt.Axis(tickMinStep=1, format="d")  # steps and epochs are whole numbers
    base = alt.Chart(df).encode(x=alt.X(f"{x_name}:Q", title=x_title, axis=axis), color=color,
                                opacity=alt.condition(sel, alt.value(1.0), alt.value(0.15)))
    band_layer = base.transform_filter(alt.datum.source == "estimate").mark_area(opacity=0.25).encode(
        y=alt.Y("lo:Q", scale=scale, title=title), y2="hi:Q")
    est = base.transform_filter(alt.datum.source == "estimate").mark_line(strokeDash=[4, 3], strokeWidth=1.5).encode(
        y=alt.Y("value:Q", scale=scale), tooltip=["b", x_name, "value", "lo", "hi", "se", "replicas"])
    exact = base.transform_filter(alt.datum.source == "exact").mark_line(strokeWidth=2).encode(
        y=alt.Y("value:Q", scale=scale), tooltip=["b", x_name, "value"])
    has_exact = bool((df["source"] == "exact").any()) if len(df) else False
    legend = "solid: exact; dashed with band" if has_exact else "dashed with band"
    return (band_layer + est + exact).add_params(sel).properties(
        title=f"{title} ({legend}: replica estimate, {band})", height=320)


def b_chart(b_grid: np.ndarray, exact_values: np.ndarray, t: int, estimates: pd.DataFrame | None = None,
            fits: dict[str, np.ndarray] | None = None, title: str = "var(g_t | F_0)") -> alt.Chart:
    """Log–log quantity against b at step t: exact for every b (line), estimates with intervals, fitted polynomials."""
    layers = []
    ex = pd.DataFrame({"b": b_grid, "value": exact_values, "curve": "exact"})
    lines = [ex]
    for name, vals in (fits or {}).items():
        lines.append(pd.DataFrame({"b": b_grid, "value": vals, "curve": name}))
    line_df = pd.concat(lines, ignore_index=True)
    line_df = line_df[line_df["value"] > 0]
    xs = alt.Scale(type="log")
    ys = alt.Scale(type="log")
    layers.append(alt.Chart(line_df).mark_line().encode(
        x=alt.X("b:Q", scale=xs, title="batch size b"), y=alt.Y("value:Q", scale=ys, title=title),
        color=alt.Color("curve:N", title="curve"),
        strokeDash=alt.condition(alt.datum.curve == "exact", alt.value([1, 0]), alt.value([5, 3])),
        tooltip=["curve", "b", "value"]))
    if estimates is not None and len(estimates):
        est = estimates[estimates["value"] > 0].copy()
        est["lo"] = est["lo"].clip(lower=est["value"].min() * 1e-3)
        layers.append(alt.Chart(est).mark_errorbar().encode(x="b:Q", y=alt.Y("lo:Q", scale=ys), y2="hi:Q"))
        layers.append(alt.Chart(est).mark_point(filled=True, size=40, color="black").encode(
            x="b:Q", y=alt.Y("value:Q", scale=ys), tooltip=["b", "value", "lo", "hi", "se"]))
    return alt.layer(*layers).properties(title=f"{title} at t = {t} against b (log–log)", height=320)


def z_chart(z: np.ndarray, t: np.ndarray, batch_sizes: list[int]) -> alt.Chart:
    """Heat map of z = (estimate − exact)/SE over (t, b); colour clipped to [−4, 4]."""
    keep = _thin(np.asarray(t))
    rows = [pd.DataFrame({"t": t[keep], "b": str(b), "z": z[j][keep]}) for j, b in enumerate(batch_sizes)]
    df = pd.concat(rows, ignore_index=True).dropna()
    return alt.Chart(df).mark_rect().encode(
        x=alt.X("t:O", title="iteration t", axis=alt.Axis(labelOverlap=True)),
        y=alt.Y("b:N", sort=[str(b) for b in batch_sizes], title="b"),
        color=alt.Color("z:Q", scale=alt.Scale(scheme="redblue", domain=[-4, 4], clamp=True), title="z"),
        tooltip=["t", "b", "z"]).properties(title="z = (estimate − exact) / SE", height={"step": 24})


def to_png(chart: alt.TopLevelMixin, scale: float = 2.0) -> bytes:
    import vl_convert as vlc

    return vlc.vegalite_to_png(chart.to_json(), scale=scale)


def to_svg(chart: alt.TopLevelMixin) -> str:
    import vl_convert as vlc

    return vlc.vegalite_to_svg(chart.to_json())
