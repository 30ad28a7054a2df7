"""Deep linear teacher–student networks (paper §3.2, Figure 3): exact polynomials in 1/b beyond t = 0, replicas,
Theorem 4 fits and Theorem 5's b_0. Inputs → backend → charts."""

from __future__ import annotations

from ui.shell import guard

guard()  # opened by its URL in a fresh session: run inside the app frame

import numpy as np
import pandas as pd
import streamlit as st

import ui

from backend import api, charts

st.title("Deep linear networks: variance of SGD against the batch size")
st.caption("A student W_d⋯W_1 learns a teacher W_d*⋯W_1* by online SGD on fresh Gaussian samples x ~ N(0, I_p), "
           "population L2 loss (paper §3.2, Appendix B.3).")
ui.theory_link(2, "Gaussian moments, Theorems 4–5, exact values beyond t = 0, heavy tails")

raw0, d, k = ui.field_helpers("dl", "deep_linear")


sb = st.sidebar
ui.presets_and_upload("dl", "deep_linear")
dims_text = sb.text_input("Widths p, p_1, …, p_d (depth 2 to 4)", ", ".join(map(str, d("dims"))), key=k("dims"),
                          help="e.g. 64, 256, 128 is the paper's teacher; 1, 1, 1 is the scalar network")
try:
    dims = [int(x) for x in dims_text.replace(" ", "").split(",") if x]
except ValueError:
    dims = dims_text  # the validator names the field


def weights_widget(name: str, label: str):
    raw = d(name)
    if isinstance(raw, list):
        if sb.checkbox(f"{label} from the config (matrices)", True, key=k(f"{name}list")):
            return raw
        raw = {}
    raw = raw or {}
    c1, c2 = sb.columns(2)
    return {"seed": c1.number_input(f"{label} seed", 0, 2**32 - 1, int(raw.get("seed", 0 if name == "w0" else 1)),
                                    key=k(f"{name}seed")),
            "scale": ui.widgets.number(c2, f"{label} scale", f"{name}.scale", float(raw.get("scale", 1.0)), 0.0, 100.0,
                                     key=k(f"{name}sc"),
                                     help="entries N(0, scale² / fan-in)")}


teacher = weights_widget("teacher", "Teacher")
w0 = weights_widget("w0", "Student w0")
lr = ui.widgets.schedule(d, k, help="the paper's α_t = 1/(10t) is inverse with c = 1/10", default_c="1/10")
steps = ui.widgets.slider(sb, "Iterations T", "steps", int(d("steps")), 1, 2000, key=k("steps"))
batch_sizes = ui.widgets.batch_sizes(d, k, [2**i for i in range(13)])
batch_schedule = ui.widgets.batch_schedule(raw0, k)  # None: constant batch sizes
replicas, seed = ui.widgets.replicas_and_seed(d, k)
dtype = sb.selectbox("Precision", api.DTYPES, index=api.DTYPES.index(d("dtype")), key=k("dtype"))
record_every = ui.widgets.number(sb, "Record statistics every … steps", "record_every", int(d("record_every")), 1,
                                 10_000, key=k("rec"),
                               help="1 records every step; larger values make long runs of big networks cheaper")
optimizer = ui.widgets.optimizer("deep_linear", raw0.get("optimizer"), k)
ui.clear_cache_button()

raw = {"setting": "deep_linear", "dims": dims, "teacher": teacher, "w0": w0, "lr": lr, "steps": steps,
       "batch_sizes": batch_sizes, "replicas": replicas, "seed": seed, "device": d("device"), "dtype": dtype,
       "record_every": record_every, **({"optimizer": optimizer} if optimizer else {})}
config = ui.validated(ui.widgets.with_batch_schedule(raw, batch_schedule))
schedule = config.batch_schedule  # None: constant batch sizes

theory = api.theory(config)
table = api.quantity_table(config)  # the setting's own quantities (backend/quantities.py): labels, estimators
labels = api.quantity_labels(table)
st.caption(f"dims {list(config.dims)} ({config.n_params:,} weights), {config.lr.describe()}. Exact values at "
           + api.describe_methods(theory["methods"]) + "."
           + (f" With this optimizer: {theory['optimizer_note']}." if theory.get("optimizer_note") else ""))

runs = f"the schedule {schedule.describe()}" if schedule else f"{len(config.batch_sizes)} batch sizes"
sim = ui.run_panel("dl", config, f"{config.replicas:,} replicas × {runs} × {config.steps + 1} steps")
if sim is not None:
    st.caption(f"Replica estimates: {config.replicas:,} replicas per b on {sim['meta']['device']}, SE by batch means "
               f"over {sim['meta']['groups']} groups, 95 % bands; {sim['meta']['sampler']}."
               + ui.reduction_note(list(config.dims), sim["meta"].get("simulated_dims")))
    ui.divergence_notice(config, sim)
    flagged = api.flag_message(api.flagged_points(sim, "var_g", theory["curves"]["var_g"]), config.replicas)
    if flagged:
        st.warning(flagged + " Here the update is polynomial in the Gaussian samples, so rare huge samples dominate "
                   "var(g_t): the exact variance can be orders of magnitude above any feasible replica estimate — a "
                   "finding that fitted Monte Carlo curves (as in the paper) cannot see.")

tab_t, tab_b, tab_poly, tab_z, tab_table, tab_dl = st.tabs(["Against t", "Against b", "Polynomial in 1/b",
                                                            "Agreement", "Per-b table", "Downloads"])
with tab_t:
    use_rb = st.checkbox("Rao–Blackwellised estimator (conditional variance in closed form; smaller SE)", key="dl_rb",
                         disabled=sim is None)
    log = st.checkbox("Log scale", True, key="dl_log")
    time_charts = {}
    for quantity in table:
        q = quantity.name
        est_name = quantity.estimators[0][0] if use_rb and quantity.estimators else None
        time_charts[labels[q]] = ui.time_chart_with_caption(theory, sim, config, q, labels[q], log, est_name)

with tab_b:
    if schedule:
        st.info("The view against b is over constant batch sizes; clear the batch-size schedule to see it.")
    else:
        if sim is None:
            st.info("Run the replicas to fit Theorem 4's polynomial to the estimates.")
        recorded = [int(x) for x in theory["t"]]
        t_sel = st.select_slider("Iteration t", recorded, value=recorded[min(1, len(recorded) - 1)], key="dl_tsel")
        slot = recorded.index(t_sel)
        q = st.selectbox("Quantity", [x for x in api.quantities(config) if x != "loss"], format_func=labels.get,
                         key="dl_bq")
        bs = np.array(config.batch_sizes, dtype=float)
        grid = np.unique(np.geomspace(1, max(bs.max(), 2) * 2, 200))
        fits, est_df = {}, None
        if t_sel in theory["polynomials"]:
            coeffs = theory["polynomials"][t_sel][q]
            exact_grid = api.eval_inv_b(coeffs, grid)
            b0 = api.decrease_threshold(coeffs)
            st.write(f"**Exact** ({theory['methods'][t_sel]}): degree {len(coeffs) - 1} in 1/b, constant term "
                     f"{'zero' if coeffs[0] == 0 else coeffs[0]}; Theorem 5: decreasing for every b > b₀ = {b0:.4g}.")
        else:
            exact_grid = np.full_like(grid, np.nan)
        if sim is not None and len(bs) >= 2:
            e = sim["curves"][q]
            est_df = pd.DataFrame({"b": bs, "value": e["value"][:, slot], "lo": e["lo"][:, slot],
                                   "hi": e["hi"][:, slot], "se": e["se"][:, slot]})
            r = st.number_input("Fit degree r", 1, max(1, len(bs) - 1), min(3, max(1, len(bs) - 1)), key="dl_r")
            fit = api.fit_theorem4(bs, e["value"][:, slot], e["se"][:, slot], int(r))
            fits[f"Theorem 4 fit, r = {fit['degree']}"] = api.eval_theorem4(fit["beta"], grid)
            st.dataframe(pd.DataFrame({"j": range(1, fit["degree"] + 1), "β_j": fit["beta"], "95 % low": fit["beta_lo"],
                                       "95 % high": fit["beta_hi"]}), hide_index=True)
            st.write(f"Weighted fit Σ_j β_j b^(−j), β₁ ≥ 0{' (at the bound)' if fit['beta1_at_bound'] else ''}: "
                     f"χ²/dof = {fit['chi2_per_dof']:.3g} (p = {fit['p_value']:.3g}); b₀ from the fit = {fit['b0']:.4g}. "
                     f"Estimates decrease at every b tried: "
                     f"{'yes' if api.decreasing_everywhere(e['value'][:, slot]) else 'no'}.")
        if np.isfinite(exact_grid).any() or est_df is not None:
            shown = exact_grid if np.isfinite(exact_grid).any() else np.full_like(grid, np.nan)
            st.altair_chart(charts.b_chart(grid, shown, t_sel, est_df, fits, title=labels[q]), width="stretch")

with tab_poly:
    if not theory["exact_t"]:
        st.info("No exact method applies to this configuration.")
    elif schedule:
        st.info("A batch-size schedule has no polynomial in 1/b (b changes along t); clear it to see one.")
    else:
        tp = st.selectbox("t", theory["exact_t"], index=min(1, len(theory["exact_t"]) - 1), key="dl_tp")
        qp = st.selectbox("Quantity", api.quantities(config), format_func=labels.get, key="dl_qp")
        try:
            poly = api.polynomial(config, int(tp), qp)
            lhs = (rf"\operatorname{{var}}(g_{{t,{qp[-1]}}}\mid\mathcal F_0)" if qp.startswith("var_g_layer") else
                   r"\operatorname{var}(g_t\mid\mathcal F_0)" if qp == "var_g" else r"\mathbb E\,L(W_t)")
            st.latex(api.polynomial_equation(lhs, poly))
            st.write(f"Degree {poly['degree']} in 1/b; method: {poly['method']}; "
                     + (f"b₀ = {poly['b0']:.4g}." if poly["b0"] is not None else ""))
            ui.polynomial_table(poly, int(tp))
        except api.ConfigError as e:
            st.error(ui.user_text(e))

with tab_z:
    if sim is None or not theory["exact_t"]:
        st.info("Run the replicas; z-scores need exact values (t = 0, t = 1 for small inputs, or the scalar network).")
    else:
        qz = st.selectbox("Quantity", api.quantities(config), format_func=labels.get, key="dl_zq")
        ui.agreement_view(config, theory, sim, qz)

with tab_table:
    table_rows = ui.per_b_table("dl", theory, sim, table, default_x=1)

with tab_dl:
    ui.downloads("dl", config, theory, sim, api.quantities(config), time_charts,
                 {"Per-b table": table_rows} if table_rows else None)
