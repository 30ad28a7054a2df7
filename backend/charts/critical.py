"""The critical batch size page's charts: the critical b along training beside the noise scales, and the branches'
losses."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from backend.charts.base import (AUTOSIZE, b_axis, b_color, chart_title, dropped_note, log_axis_format, log_safe,
                                 message_chart, positive_floor, rule_color, step_axis)


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
        title=chart_title(f"B_simple (solid) and B_noise (dashed) along each b's trajectory ({rule} scaling)", notes),
        height=300, autosize=AUTOSIZE)


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
                .encode(x=x, y=y, color=rule_color(rules), tooltip=["rule", "t", "b"])
                for rule, width, dash in zip(rules, _nested_widths(len(rules)),
                                             [RULE_DASHES[i % len(RULE_DASHES)] for i in range(len(rules))])]]
    notes = [dropped_note(d1 + d2), f"{missing} checkpoint(s) without a critical batch size (the k = 1 branch "
                                    "diverged) left out." if missing else "",
             "Rules at the same b are drawn one inside another (the first widest and solid, then dashed, dotted)."
             if len(rules) > 1 else ""]
    return alt.layer(*layers).properties(
        title=chart_title(f"Critical batch size along training (ε = {first['tolerance']:g}); grey: B_simple (solid), "
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
    x = b_axis(df["b"])
    y = alt.Y("loss:Q", scale=alt.Scale(type="log"), title="E L at the end of the branch",
              axis=alt.Axis(format=log_axis_format(df["loss"])))
    color = rule_color(rules)
    layers = [alt.Chart(df).mark_line(strokeWidth=2, point=alt.OverlayMarkDef(size=40, filled=True)).encode(
        x=x, y=y, color=color, tooltip=["rule", "b", "steps", "lr", "loss", *(["se"] if "se" in df else [])])]
    if "se" in df:  # replica estimates: 95 % intervals
        bars = df.dropna(subset=["se"]).copy()
        bars["lo"] = bars["lo"].clip(lower=positive_floor(df, ("loss",)))
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
    return alt.layer(*layers).properties(title=chart_title(f"Branches from t = {t}: loss against b (◇ critical batch "
                                                      f"size; dotted: (1 + ε) × the k = 1 branch{bars_note})", notes),
                                         height=320, autosize=AUTOSIZE)
