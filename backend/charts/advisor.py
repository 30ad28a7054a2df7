"""The batch-size advisor's charts: the loss at the budget against b per scaling rule (and per momentum), B_simple, the
frontier."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from backend.charts.base import (AUTOSIZE, b_axis, CATEGORY, chart_title, dropped_note, log_axis_format, log_safe,
                                 message_chart, rule_color)


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
    color = rule_color(rules)
    x = b_axis(ok["b"])
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
    return alt.layer(*layers).properties(title=chart_title(title, [dropped_note(dropped)]), height=340, autosize=AUTOSIZE)


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
    x = b_axis(ok["b"])
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
    return alt.layer(*layers).properties(title=chart_title(title, [dropped_note(dropped)]), height=340, autosize=AUTOSIZE)


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
    color = rule_color(rules)
    x = b_axis(pd.concat([df["b"], pd.Series(list(best.values()), dtype=float)]))
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
    return alt.layer(*layers).properties(title=chart_title("B_simple beside the best b (dashed)",
                                                      [dropped_note(dropped, "estimates")]), height=260, autosize=AUTOSIZE)


def frontier_chart(points: pd.DataFrame, fit: pd.DataFrame | None) -> alt.LayerChart:
    """Steps against examples to reach a target (log–log), one colour and shape per rule (coinciding points of two
    rules stay visible), McCandlish et al.'s fitted frontier dashed."""
    rules = list(dict.fromkeys(points["rule"]))
    color = rule_color(rules)
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
