"""Results shared by the setting pages: charts of estimates (with theory where it exists) and their downloads."""

from __future__ import annotations

import numpy as np
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


def time_chart_with_caption(theory: dict | None, sim: dict | None, config, quantity: str, label: str, log: bool,
                            estimate_name: str | None = None):
    """The one chart path (backend/charts/) for every setting: the exact curve where there is theory, the replica
    estimate over its band; ``estimate_name`` draws another estimator of the same quantity (e.g. var_g_rb)."""
    sim_curves = None
    if sim is not None:
        sim_curves = dict(sim["curves"])
        if estimate_name and estimate_name in sim_curves:
            sim_curves[quantity] = sim_curves[estimate_name]
    th_curves = theory["curves"] if theory is not None else None
    x = theory["t"] if theory is not None else sim["x"]
    x_name = sim["x_name"] if sim is not None else "t"
    band = sim.get("band", "95 %") if sim is not None else "95 %"
    df = charts.curves_frame(x, api.curve_keys(config), th_curves, sim_curves, quantity,
                             None if sim is None else sim["finite_count"], x_name=x_name)
    table = api.quantity_table(config)
    shade = charts.draws_band(quantity, table)
    bars = sim is not None and not sim.get("band_is_interval", True)  # the band is the spread over inits: SE bars
    chart = charts.time_chart(df, label, log=log, x_name=x_name,
                              x_title="epoch" if x_name == "epoch" else "iteration t", band=band,
                              nonnegative=charts.is_nonnegative(quantity, table), shade=shade, error_bars=bars)
    st.altair_chart(chart, width="stretch")
    st.caption(charts.drawn_caption(charts.drawn_summary(df, log), sim is not None, band, shade, bars))
    return chart


def downloads(prefix: str, config, theory: dict | None, sim: dict | None, quantities, chart_by_name: dict,
              tables: dict[str, list[dict]] | None = None) -> None:
    """The curves (CSV: exact and estimate with SE and band per b, x and quantity), the config (JSON), a chart, and
    any ``tables`` (name → rows, e.g. the per-b table) as CSV."""
    x, x_name = (theory["t"], "t") if theory is not None else (sim["x"], sim["x_name"])
    st.download_button("Curves (CSV)", export.curves_csv(x, api.curve_keys(config), None if theory is None else
                                                         theory["curves"], sim, tuple(quantities), x_name),
                       "batchvar_curves.csv", "text/csv")
    for i, (name, rows) in enumerate((tables or {}).items()):
        if rows:
            st.download_button(f"{name} (CSV)", export.table_csv(rows), f"batchvar_table{i}.csv", "text/csv",
                               key=f"{prefix}_dltab{i}")
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


SUMMARY_TEXT = {"median": "median over initial weights", "mean": "mean over all replicas"}
SPLIT_TAB = "Variance split"  # drawn by charts.split_chart and charts.b_simple_chart, with the split's table


def classifier_results(config, sim: dict, with_gap: bool) -> None:
    """Tabs for the replica classifiers (MLP, sequence model, your model), from the setting's quantity table
    (backend/quantities.py): one tab per ``tab`` in the table's order, each quantity the result carries drawn with
    its title and axis (log or linear) and captioned with its summary over inits; then the variance split and the
    downloads — over the result's x (epochs, or recorded steps t)."""
    import pandas as pd

    x, x_name = sim["x"], sim["x_name"]
    table = [q for q in api.quantity_table(config)
             if q.name in sim["curves"] and (with_gap or q.name != "gap_distorted")]
    by_tab: dict[str, list] = {}
    for q in table:
        by_tab.setdefault(q.tab, []).append(q)
    names = [*(t for t in by_tab if t != SPLIT_TAB), SPLIT_TAB, "Downloads"]
    tabs = dict(zip(names, st.tabs(names)))
    charts_by_name = {}
    for name, shown in by_tab.items():
        if name == SPLIT_TAB:
            continue
        with tabs[name]:
            for q in shown:
                charts_by_name[q.label] = time_chart_with_caption(None, sim, config, q.name, q.title(), q.log)
            summaries = {SUMMARY_TEXT[q.summary] for q in shown}
            many = len(shown) > 1
            st.caption(f"{'Lines' if many else 'Line'}: {', '.join(sorted(summaries))}; "
                       f"{'bands' if many else 'band'}: {sim['band']}.")
            if name == "Variance":
                share = api.b_ordering_share(sim)
                st.write(f"var(g) decreases with b at {100 * share:.0f} % of the "
                         f"{'epochs' if x_name == 'epoch' else 'recorded steps'} (all batch sizes ordered).")
            if name == "Generalization gap":
                st.caption(f"Elastic distortion α = {config.distortion['alpha']}, σ = {config.distortion['sigma']} "
                           f"(Simard et al.), measured every {config.distortion['every']} epochs.")
    tab_s, tab_dl = tabs[SPLIT_TAB], tabs["Downloads"]
    with tab_s:
        st.markdown("Law of total variance: var(g_t | F_0) = E[var(g_t | F_t)] + var(∇L(w_t) | F_0). The first term "
                    "is the one-step noise of Lemma 1, c_b · tr Σ(w_t), with Σ the **population** covariance of the "
                    "per-sample gradients over the n training points (Lemma 1's convention: the unbiased sample "
                    "covariance would overstate it by n/(n − 1)), estimated without bias from a fixed subsample of "
                    f"{min(config.noise_samples, config.n_train)} training points (exact when it is the whole set); "
                    "the second is the spread of the full gradient across replicas.")
        theory_link(3, "the variance split, the covariance convention and B_simple")
        charts_by_name["variance split"] = charts.split_chart(x, x_name, config.batch_sizes,
                                                              sim["curves"], sim["band"], table=table)
        st.altair_chart(charts_by_name["variance split"], width="stretch")
        charts_by_name["B_simple"] = charts.b_simple_chart(x, x_name, config.batch_sizes,
                                                           sim["curves"]["b_simple"], sim["band"], table=table)
        st.altair_chart(charts_by_name["B_simple"], width="stretch")
        st.caption("B_simple = tr Σ / ‖∇L‖² with the same population Σ as McCandlish et al. (the batch size at which "
                   "the one-step noise tr Σ / b equals the squared signal ‖∇L‖²), ‖∇L‖² estimated without bias from "
                   "the subsample; median over initial weights. Dashed: the batch sizes run.")
        for note in (api.b_simple_note(config, sim), api.split_note(sim)):
            if note:
                st.info(note)
        last = len(x) - 1
        c = sim["curves"]
        split = api.variance_split(sim)

        def pm(value: float, se: float) -> str:
            return f"{value:.4g} ± {se:.2g}" if np.isfinite(value) else "not resolved"

        st.dataframe(pd.DataFrame([{"b": b, **{f"{label} ({x_name} {x[last]})":
                                               pm(c[q]["value"][j, last], c[q]["se"][j, last])
                                               for q, label in (("var_g", "var(g)"), ("noise_one_step", "one-step"),
                                                                ("noise_spread", "spread"), ("b_simple", "B_simple"))},
                                    f"total − one-step ({x_name} {x[last]})": pm(split["difference"][j, last],
                                                                           split["difference_se"][j, last])
                                    + ("" if split["resolved"][j, last] else " (not resolved)")}
                                   for j, b in enumerate(config.batch_sizes)]), hide_index=True)
        st.caption("± one standard error given the initial weights: replica noise and, for the one-step noise and "
                   "B_simple, the sampling error of the noise subsample (docs/theory.md §3–§4).")
    with tab_dl:
        downloads(config.setting, config, None, sim, api.quantities(config), charts_by_name)
