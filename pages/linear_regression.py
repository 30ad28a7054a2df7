"""Linear regression (paper §3.1, Figure 2): exact theory for every t drawn over SGD replicas. Inputs → backend → charts."""

from __future__ import annotations

from ui.shell import guard

guard()  # opened by its URL in a fresh session: run inside the app frame

import pandas as pd
import streamlit as st

import ui

from backend import api, charts

st.title("Linear regression: variance of SGD against the batch size")
st.caption("Finite sum, mini-batches drawn without replacement (paper §3.1).")
ui.theory_link(1, "the exact moment recursion, polynomials in 1/b, Theorems 1–2")

raw0, d, k = ui.field_helpers("lr", "linear_regression")


# -- sidebar: inputs only ----------------------------------------------------------------------------------------
sb = st.sidebar
ui.presets_and_upload("lr", "linear_regression")
dataset = ui.regression_dataset(d, k)
standardize = sb.checkbox("Standardize features (mean, population sd)", bool(d("standardize")), key=k("std"))
intercept = sb.checkbox("Intercept (last weight)", bool(d("intercept")), key=k("icpt"))
w0_raw = d("w0")
if isinstance(w0_raw, list):
    use_list = sb.checkbox(f"Initial weights from the config ({len(w0_raw)} values)", True, key=k("w0list"))
else:
    use_list = False
if use_list:
    w0 = w0_raw
else:
    c1, c2 = sb.columns(2)
    w0s = w0_raw if isinstance(w0_raw, dict) else {}
    w0 = {"seed": c1.number_input("w0 seed", 0, 2**32 - 1, int(w0s.get("seed", 0)), key=k("w0seed")),
          "scale": ui.widgets.number(c2, "w0 scale", "w0.scale", float(w0s.get("scale", 1.0)), 0.0, 1e6,
                                     key=k("w0scale"))}
lr = ui.widgets.schedule(d, k, c_label="c (e.g. 1/2 or 0.05)")
steps = ui.widgets.slider(sb, "Iterations T", "steps", int(d("steps")), 1, 5000, key=k("steps"))
batch_sizes = ui.widgets.batch_sizes(d, k, api.paper_batch_sizes(500) + [1, 2, 4, 8, 16, 32, 64, 128, 256])
batch_schedule = ui.widgets.batch_schedule(raw0, k)  # None: constant batch sizes
replicas, seed = ui.widgets.replicas_and_seed(d, k)
sampler = sb.selectbox("Sampler", api.SAMPLERS, index=api.SAMPLERS.index(d("sampler")), key=k("sampler"),
                       format_func=lambda s: s.replace("_", " "), help="\n\n".join(api.SAMPLER_LABELS.values()))
optimizer = ui.widgets.optimizer("linear_regression", raw0.get("optimizer"), k)  # the exact curves follow it live
ui.clear_cache_button()

raw = {"setting": "linear_regression", "dataset": dataset, "standardize": standardize, "intercept": intercept,
       "w0": w0, "lr": lr, "steps": steps, "batch_sizes": batch_sizes, "replicas": replicas, "seed": seed,
       "sampler": sampler, "device": d("device"), **({"optimizer": optimizer} if optimizer else {})}
config = ui.validated(ui.widgets.with_batch_schedule(raw, batch_schedule))
schedule = config.batch_schedule  # None: constant batch sizes

# -- theory (live) -------------------------------------------------------------------------------------------------
theory = api.theory(config)
st.caption(f"n = {config.n} samples, p = {config.p} weights ({', '.join(config.feature_names)}); "
           f"{config.lr.describe()}; sampler: {api.SAMPLER_LABELS[config.sampler]}.")
if not theory["available"]:
    st.info(f"{theory['note']}: only replica estimates are shown.")

# -- replica run (Run button, progress with ETA, cancel) -------------------------------------------------------------
runs = f"the schedule {schedule.describe()}" if schedule else f"{len(config.batch_sizes)} batch sizes"
sim = ui.run_panel("lr", config, f"{config.replicas:,} replicas × {runs} × "
                                     f"{config.steps + 1} steps")
if sim is not None:
    meta = sim["meta"]
    st.caption(f"Replica estimates: {config.replicas:,} replicas per b on {meta['device']}, SE by batch means over "
               f"{meta['groups']} groups, 95 % bands; sampler: {meta['sampler_label']}.")
    ui.divergence_notice(config, sim)
    flagged = api.flag_message(api.flagged_points(sim, "var_g", None if theory["curves"] is None else
                                                  theory["curves"]["var_g"]), config.replicas)
    if flagged:
        st.warning(flagged)

tab_t, tab_b, tab_poly, tab_z, tab_table, tab_thm, tab_dl = st.tabs(
    ["Against t", "Against b", "Polynomial in 1/b", "Agreement", "Per-b table", "Theorems 1–2", "Downloads"])
tcurves = theory["curves"]
table = api.quantity_table(config)  # the setting's quantities (backend/quantities.py): labels, further estimators
labels = api.quantity_labels(table)
better = {q.name: q.estimators[0][0] for q in table if q.estimators}  # quantity → its Rao–Blackwellised estimator
estimates = {e: q for q, e in better.items()}
with tab_t:
    use_rb = st.checkbox("Use the Rao–Blackwellised estimator for var(g_t | F_0) (same expectation, smaller SE)",
                         key="lr_rb", disabled=sim is None or not any(e in sim["curves"] for e in estimates))
    log = st.checkbox("Log scale", True, key="lr_log")
    time_charts = {q: ui.time_chart_with_caption(theory, sim, config, q, labels[q], log,
                                                     better.get(q) if use_rb else None)
                   for q in api.quantities(config)}

with tab_b:
    if tcurves is None:
        st.info("Needs exact theory (pick a sampler with independent steps).")
    elif schedule:
        st.info("The view against b is over constant batch sizes; clear the batch-size schedule to see it.")
    else:
        t_sel = st.slider("Iteration t", 0, config.steps, min(10, config.steps), key="lr_tsel")
        view = api.against_b(config, int(t_sel), sim)
        fit, est = view["fit"], view["estimates"]
        est_df = None if est is None else pd.DataFrame(est)
        fits = {f"paper's degree-{fit['degree']} fit ({fit['source']})": fit["curve"]}
        st.altair_chart(charts.b_chart(view["b"], view["exact"], t_sel, est_df, fits, b_max=config.n),
                        width="stretch")
        shown = ", ".join(f"{c:.4g}" + (f" ± {s:.2g}" if s > 0 else "")
                          for c, s in zip(fit["coefficients"], fit["coefficients_se"]))
        st.caption(f"The paper fits a degree-{fit['degree']} polynomial in 1/b (with a constant term) to Monte Carlo "
                   f"values at its 21 batch sizes (here fit to {len(fit['b'])} values); the exact variance at t = {t_sel} is a polynomial of degree "
                   f"{t_sel + 1} with no constant term. Fit coefficients (lowest power first"
                   + (", ± one SE propagated from the estimates' SEs" if fit["source"] == "estimates" else
                      "; fit to exact values, so no sampling error") + "): " + shown)

with tab_poly:
    if tcurves is None:
        st.info("Needs exact theory.")
    elif schedule:
        st.info("A batch-size schedule has no polynomial in 1/b (b changes along t); clear it to see one.")
    else:
        t_poly = st.number_input("t", 0, min(config.steps, api.FLOAT_POLY_MAX_T), min(5, config.steps), key="lr_tpoly")
        want_exact = st.checkbox("Exact rational coefficients", config.exact and t_poly <= api.EXACT_MAX_T,
                                 disabled=not config.exact, key="lr_exact",
                                 help="Needs rational data (not standardized), rational w0 and c, and t ≤ "
                                      f"{api.EXACT_MAX_T}. Graduate Admission's standardization involves square roots.")
        try:
            with st.spinner("Computing the polynomial…"):
                poly = api.polynomial(config, int(t_poly), "var_g", exact=bool(want_exact and config.exact))
            st.latex(api.polynomial_equation(r"\operatorname{var}(g_t\mid\mathcal F_0)", poly))
            st.write(f"Degree {poly['degree']} in 1/b (bound t + 1 = {poly['degree_bound']}); method: {poly['method']}. "
                     "In the noise factor c it has no constant term; "
                     + ("without replacement c_b = (n−b)/(b(n−1)), so the polynomial vanishes at b = n and has a "
                        "constant term in 1/b." if config.sampler == "without_replacement" else "here c = 1/b."))
            ui.polynomial_table(poly, int(t_poly))
        except api.ConfigError as e:
            st.error(ui.user_text(e))

with tab_z:
    if sim is None or tcurves is None:
        st.info("Run the replicas (and use a sampler with exact theory) to compare estimates with the exact values.")
    else:
        q = st.selectbox("Quantity", [*api.quantities(config), *(e for e in estimates if e in sim["curves"])],
                         format_func=labels.get, key="lr_zq")
        ui.agreement_view(config, theory, sim, estimates.get(q, q), estimate_name=q)

with tab_table:
    table_rows = ui.per_b_table("lr", theory, sim, table)

with tab_thm:
    if tcurves is None:
        st.info("Needs exact theory.")
    elif schedule:
        st.info("Theorems 1–2 compare constant batch sizes; clear the batch-size schedule to check them.")
    else:
        ui.theorem_checks(config, labels)

with tab_dl:
    ui.downloads("lr", config, theory, sim, api.quantities(config),
                     {labels[q]: c for q, c in time_charts.items()},
                     {"Per-b table": table_rows} if table_rows else None)
