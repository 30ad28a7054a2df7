"""Results shared by the setting pages: charts of estimates (with theory where it exists) and their downloads."""

from __future__ import annotations

import streamlit as st

from backend import api, charts, export
from ui.state import theory_link


def polynomial_table(poly: dict, t: int) -> None:
    """The coefficients of a polynomial in 1/b as a table, and its JSON download."""
    import json

    import pandas as pd

    st.dataframe(pd.DataFrame({"power of 1/b": range(len(poly["coefficients"])),
                               "coefficient": [str(c) for c in poly["coefficients"]]}), hide_index=True)
    st.download_button("Download the polynomial (JSON)", json.dumps(poly, indent=2), f"poly_t{t}.json",
                       "application/json")


def time_chart_with_caption(theory: dict, sim: dict | None, config, quantity: str, label: str, log: bool,
                            estimate_name: str | None = None):
    sim_curves = None
    if sim is not None:
        sim_curves = dict(sim["curves"])
        if estimate_name and estimate_name in sim_curves:
            sim_curves[quantity] = sim_curves[estimate_name]
    df = charts.curves_frame(theory["t"], config.batch_sizes, theory["curves"], sim_curves, quantity,
                             None if sim is None else sim["finite_count"])
    chart = charts.time_chart(df, label, log=log)
    st.altair_chart(chart, width="stretch")
    drawn = charts.drawn_summary(df)
    st.caption(f"Drawn: exact {drawn['exact']} points; replica estimate {drawn['estimate']} points with 95 % band.")
    return chart


def downloads(prefix: str, config, theory: dict, sim: dict | None, quantities, chart_by_name: dict) -> None:
    st.download_button("Curves (CSV)", export.curves_csv(theory["t"], config.batch_sizes, theory["curves"], sim,
                                                         tuple(quantities)), "batchvar_curves.csv", "text/csv")
    st.download_button("Config (JSON, reloadable)", export.config_json(config), "batchvar_config.json",
                       "application/json")
    which = st.selectbox("Chart", list(chart_by_name), key=f"{prefix}_dlq")
    if st.button("Prepare the chart as PNG and SVG", key=f"{prefix}_prep"):
        st.session_state[f"{prefix}_png"] = charts.to_png(chart_by_name[which])
        st.session_state[f"{prefix}_svg"] = charts.to_svg(chart_by_name[which])
    if f"{prefix}_png" in st.session_state:
        st.download_button("Chart (PNG)", st.session_state[f"{prefix}_png"], "batchvar_chart.png", "image/png")
        st.download_button("Chart (SVG)", st.session_state[f"{prefix}_svg"], "batchvar_chart.svg", "image/svg+xml")
    st.caption("The page URL carries the config: a link reproduces this view.")


def classifier_results(config, sim: dict, with_gap: bool) -> None:
    """Tabs for the replica classifiers (MLP, sequence model): variance, loss/error, gap, the split, downloads."""
    import json

    import altair as alt
    import numpy as np
    import pandas as pd

    from backend import charts as ch

    def frame(quantity: str, lo: str | None, hi: str | None) -> pd.DataFrame:
        rows = []
        for b in config.batch_sizes:
            c = sim["curves"][b]
            df = pd.DataFrame({"epoch": sim["epoch"], "b": str(b), "value": c[quantity]})
            df["lo"] = c[lo] if lo else np.nan
            df["hi"] = c[hi] if hi else np.nan
            rows.append(df)
        return pd.concat(rows, ignore_index=True)

    def chart(df: pd.DataFrame, title: str, log: bool = False) -> alt.Chart:
        df = df.copy()
        if log:
            for col in ("value", "lo", "hi"):
                df[col] = df[col].where(df[col] > 0)
        scale = alt.Scale(type="log") if log else alt.Scale(zero=False)
        sel = alt.selection_point(fields=["b"], bind="legend")
        base = alt.Chart(df.dropna(subset=["value"])).encode(
            x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1, format="d")), color=alt.Color("b:N", sort=[str(b) for b in config.batch_sizes], title="b"),
            opacity=alt.condition(sel, alt.value(1.0), alt.value(0.15)))
        band = base.mark_area(opacity=0.25).encode(y=alt.Y("lo:Q", scale=scale, title=title), y2="hi:Q")
        line = base.mark_line(point=len(df) < 200).encode(y=alt.Y("value:Q", scale=scale),
                                                          tooltip=["b", "epoch", "value"])
        out = (band + line).add_params(sel).properties(title=title, height=280)
        st.altair_chart(out, width="stretch")
        st.caption(f"Drawn: replica estimate {int(df['value'].notna().sum())} points.")
        return out

    names = ["Variance", "Loss and error"] + (["Generalization gap"] if with_gap else []) + ["Variance split",
                                                                                              "Downloads"]
    tabs = dict(zip(names, st.tabs(names)))
    tab_v, tab_l, tab_s, tab_dl = tabs["Variance"], tabs["Loss and error"], tabs["Variance split"], tabs["Downloads"]
    tab_g = tabs.get("Generalization gap")
    charts_by_name = {}
    with tab_v:
        charts_by_name["var(g)"] = chart(frame("var_g", "var_g_lo", "var_g_hi"), "var(g) across replicas (log)",
                                         True)
        st.caption(f"Line: median over initial weights; band: {sim['band']}.")
        share = api.b_ordering_share(sim)
        st.write(f"var(g) decreases with b at {100 * share:.0f} % of the epochs (all batch sizes ordered).")
    with tab_l:
        for q, title in (("loss_train", "training loss"), ("loss_val", "validation loss"),
                         ("error_train", "training error"), ("error_val", "validation error")):
            charts_by_name[title] = chart(frame(q, f"{q}_lo", f"{q}_hi"), title)
        st.caption(f"Lines: mean over all replicas; bands: {sim['band']}.")
    if tab_g is not None:
        with tab_g:
            charts_by_name["gap"] = chart(frame("gap_distorted", "gap_distorted_lo", "gap_distorted_hi"),
                                          "accuracy(train) − accuracy(distorted validation)")
            st.caption(f"Elastic distortion α = {config.distortion['alpha']}, σ = {config.distortion['sigma']} "
                       f"(Simard et al.), measured every {config.distortion['every']} epochs.")
    with tab_s:
        st.markdown("Law of total variance: var(g_t | F_0) = E[var(g_t | F_t)] + var(∇L(w_t) | F_0). The first term "
                    "is the one-step noise of Lemma 1, c_b · tr Σ(w_t), with Σ the **population** covariance of the "
                    "per-sample gradients over the n training points (Lemma 1's convention: the unbiased sample "
                    "covariance would overstate it by n/(n − 1)), estimated without bias from a fixed subsample of "
                    f"{min(config.noise_samples, config.n_train)} training points (exact when it is the whole set); "
                    "the second is the spread of the full gradient across replicas.")
        theory_link(3, "the variance split, the covariance convention and B_simple")
        rows = []
        for b in config.batch_sizes:
            c = sim["curves"][b]
            for name, vals in (("total var(g)", c["var_g"]), ("one-step noise", c["noise_one_step"]),
                               ("spread of ∇L", c["noise_spread"]),
                               ("one-step + spread", c["noise_one_step"] + c["noise_spread"])):
                rows.append(pd.DataFrame({"epoch": sim["epoch"], "b": str(b), "term": name, "value": vals}))
        split = pd.concat(rows, ignore_index=True)
        split = split[split["value"] > 0]
        st.altair_chart(alt.Chart(split).mark_line().encode(
            x="epoch:Q", y=alt.Y("value:Q", scale=alt.Scale(type="log")), color="term:N", strokeDash="b:N",
            tooltip=["b", "term", "epoch", "value"]).properties(height=300), width="stretch")
        ns = pd.concat([pd.DataFrame({"epoch": sim["epoch"], "b": str(b), "B_simple": sim["curves"][b]["b_simple"]})
                        for b in config.batch_sizes])
        rule = pd.DataFrame({"b_line": [float(b) for b in config.batch_sizes], "b": [str(b) for b in config.batch_sizes]})
        st.altair_chart((alt.Chart(ns).mark_line().encode(x="epoch:Q", y=alt.Y("B_simple:Q", scale=alt.Scale(type="log"),
                                                                              title="B_simple = tr Σ / ‖G‖²"), color="b:N")
                         + alt.Chart(rule).mark_rule(strokeDash=[4, 4]).encode(y="b_line:Q", color="b:N"))
                        .properties(title="gradient noise scale (McCandlish et al.) with the batch sizes", height=260),
                        width="stretch")
        st.caption("B_simple = tr Σ / ‖∇L‖² with the same population Σ as McCandlish et al. (the batch size at which "
                   "the one-step noise tr Σ / b equals the squared signal ‖∇L‖²), ‖∇L‖² estimated without bias from "
                   "the subsample; median over initial weights. Dashed: the batch sizes run.")
        last = len(sim["epoch"]) - 1
        st.dataframe(pd.DataFrame([{"b": b, **{f"{label} (epoch {last})": f"{c[q][last]:.4g} ± {c[q + '_se'][last]:.2g}"
                                               for q, label in (("var_g", "var(g)"), ("noise_one_step", "one-step"),
                                                                ("noise_spread", "spread"), ("b_simple", "B_simple"))}}
                                   for b, c in ((b, sim["curves"][b]) for b in config.batch_sizes)]),
                     hide_index=True)
        st.caption("± one standard error given the initial weights (replica noise; docs/theory.md §4).")
    with tab_dl:
        rows = []
        for b in config.batch_sizes:
            df = pd.DataFrame({"epoch": sim["epoch"]})
            df["b"] = b
            for f in api.quantities(config):
                df[f] = sim["curves"][b][f]
                if f"{f}_se" in sim["curves"][b]:
                    df[f"{f}_se"] = sim["curves"][b][f"{f}_se"]
            rows.append(df)
        st.download_button("Curves (CSV)", pd.concat(rows).to_csv(index=False), "batchvar_mlp.csv", "text/csv")
        st.download_button("Config (JSON, reloadable)", json.dumps(config.to_json(), indent=2),
                           "batchvar_config.json", "application/json")
        which = st.selectbox("Chart", list(charts_by_name), key="mlp_dlq")
        if st.button("Prepare the chart as PNG and SVG", key="mlp_prep"):
            st.session_state.mlp_png = ch.to_png(charts_by_name[which])
            st.session_state.mlp_svg = ch.to_svg(charts_by_name[which])
        if "mlp_png" in st.session_state:
            st.download_button("Chart (PNG)", st.session_state.mlp_png, "batchvar_chart.png", "image/png")
            st.download_button("Chart (SVG)", st.session_state.mlp_svg, "batchvar_chart.svg", "image/svg+xml")
