"""Widgets shared by the setting pages: config state from the URL, the Run panel with progress/ETA/cancel, the
divergence notice and the downloads. Only Streamlit calls and backend calls; no math here."""

from __future__ import annotations

import re

import streamlit as st

from backend import api, charts, costs, export, jobs
from backend import config as cfg
from backend.cache import default_cache
from backend.errors import ConfigError, one_line

_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#|<>~$])")


def user_text(value) -> str:
    """A message that echoes the user's input, safe to put in st.error/st.warning markdown: one line (control
    characters escaped) and every character that could start Markdown/HTML/LaTeX markup (emphasis, links, images,
    code, tables, tags, math) backslash-escaped, so it shows as typed and loads nothing."""
    return _MARKDOWN.sub(r"\\\1", one_line(str(value)))


def theory_link(section: int, what: str) -> None:
    """A link to the Theory page opened at docs/theory.md §section."""
    st.page_link("pages/theory.py", label=f"Theory §{section}: {what}", icon=":material/functions:",
                 query_params={"section": str(section)})


def initial_raw(prefix: str, setting: str) -> dict:
    """The raw config the widgets start from: the URL's query parameters on first load, then presets/uploads."""
    if f"{prefix}_raw" not in st.session_state:
        try:
            raw = cfg.from_query(dict(st.query_params))
            if raw.get("setting", setting) != setting:
                raw = {}
        except ConfigError as e:
            st.warning(f"Ignoring the link's config: {user_text(e)}")
            raw = {}
        st.session_state[f"{prefix}_raw"] = raw
        st.session_state[f"{prefix}_gen"] = 0
    return st.session_state[f"{prefix}_raw"]


def field_helpers(prefix: str, setting: str, defaults: dict):
    """(raw0, d, k): the starting raw config, d(field) → its value or the default, k(name) → a widget key that
    changes when a preset or file is loaded (so the widgets take the new values)."""
    raw0 = initial_raw(prefix, setting)
    gen = st.session_state[f"{prefix}_gen"]

    def d(key: str):
        return raw0.get(key, defaults[key])

    def k(name: str) -> str:
        return f"{prefix}_{name}_{gen}"

    return raw0, d, k


def load(prefix: str, raw: dict) -> None:
    st.session_state[f"{prefix}_raw"] = raw
    st.session_state[f"{prefix}_gen"] += 1
    st.rerun()


def presets_and_upload(prefix: str, presets: dict, raw0: dict, setting: str) -> None:
    gen = st.session_state[f"{prefix}_gen"]
    with st.sidebar.expander("Presets and saved configs", expanded=False):
        preset = st.selectbox("Preset", list(presets), key=f"{prefix}_preset_{gen}")
        if st.button("Apply preset", key=f"{prefix}_apply_{gen}"):
            load(prefix, {**raw0, "setting": setting, **presets[preset]})
        up = st.file_uploader("Load a config (JSON)", type=["json"], key=f"{prefix}_cfgup_{gen}")
        if up is not None and st.button("Load config", key=f"{prefix}_load_{gen}"):
            try:
                load(prefix, cfg.loads(up.getvalue().decode("utf-8")))
            except (ConfigError, UnicodeDecodeError) as e:
                st.error(f"Cannot load that file: {user_text(e)}")


def clear_cache_button() -> None:
    if st.sidebar.button("Clear cache", help="Delete every cached theory and replica result"):
        removed = default_cache().clear()
        st.sidebar.success(f"Cleared {removed} cached results.")


def validated(raw: dict):
    """The validated config (one boundary for widgets, files and links), or an error box and stop; syncs the URL."""
    try:
        config = cfg.parse_config(raw)
    except ConfigError as e:
        st.error(f"Check the inputs — {user_text(e)}")
        st.stop()
    sync_url(config)
    return config


def classifier_divergence(sim: dict) -> None:
    for row in sim["meta"]["per_b"]:
        if row["diverged_at"] is not None:
            st.warning(f"b = {row['b']}: {row['diverged_replicas']} replica(s) diverged, the first at step "
                       f"{row['diverged_at']}; later statistics use the replicas that stayed finite.")


def sync_url(config) -> None:
    query = cfg.to_query(config)
    if dict(st.query_params) != query:
        st.query_params.from_dict(query)


def run_panel(prefix: str, config, what: str) -> dict | None:
    """The Run form (estimate shown first), the background job with progress, ETA and Cancel; returns the result."""
    run_key = api.simulation_key(config)
    job = st.session_state.get(f"{prefix}_job")
    sim = st.session_state.get(f"{prefix}_results", {}).get(run_key) or api.cached_simulation(config)
    est = api.estimate(config)
    device = api.resolve_device(config.device)
    seconds = costs.device_seconds(est, device)
    where = costs.where(device)
    with st.form(f"{prefix}_run"):
        st.write(f"**Replica run**: {what} — {costs.format_duration(seconds)} and "
                 f"{costs.format_bytes(est['memory_bytes'])} "
                 f"{where}" + (" (cached: instant)" if sim is not None else "") + ".")
        run = st.form_submit_button("Run", type="primary", disabled=bool(job and job.running))
    if run and not (job and job.running):
        try:
            api.guard(config, api.resolve_device(config.device))
            job = jobs.start(run_key, lambda progress, cancel: api.simulate(config, progress, cancel),
                             api.Progress(total=1))
            st.session_state[f"{prefix}_job"] = job
        except ConfigError as e:
            st.error(user_text(e))

    @st.fragment(run_every=0.5)
    def show_progress() -> None:
        j = st.session_state.get(f"{prefix}_job")
        if j is None:
            return
        if j.running:
            eta = j.progress.eta_seconds
            left = f", {costs.format_duration(eta)} left" if eta is not None else ""
            st.progress(j.progress.fraction, text=f"Running… {100 * j.progress.fraction:.0f} %{left}")
            if st.button("Cancel run", key=f"{prefix}_cancel"):
                j.cancel.set()
        else:
            st.rerun()

    if job is not None:
        if job.running:
            show_progress()
        else:
            if job.state == "done":
                st.session_state.setdefault(f"{prefix}_results", {})[job.key] = job.result
                if job.key == run_key:
                    sim = job.result
            elif job.state == "cancelled":
                st.warning("The run was cancelled; nothing was cached.")
            elif job.state == "failed":
                st.error(f"The run failed: {user_text(job.error)}")
            st.session_state[f"{prefix}_job"] = None
    return sim


def polynomial_table(poly: dict, t: int) -> None:
    """The coefficients of a polynomial in 1/b as a table, and its JSON download."""
    import json

    import pandas as pd

    st.dataframe(pd.DataFrame({"power of 1/b": range(len(poly["coefficients"])),
                               "coefficient": [str(c) for c in poly["coefficients"]]}), hide_index=True)
    st.download_button("Download the polynomial (JSON)", json.dumps(poly, indent=2), f"poly_t{t}.json",
                       "application/json")


def divergence_notice(config, sim: dict) -> None:
    meta = sim["meta"]
    for j, (b, at, cnt) in enumerate(zip(config.batch_sizes, meta["diverged_at"], meta["diverged_replicas"])):
        if at is not None:
            st.warning(f"b = {b}: {cnt} replica(s) diverged (non-finite or exploding values), the first at step {at}. "
                       "From that step on, the estimates are conditional on the replicas that stayed finite "
                       f"({int(sim['finite_count'][j][-1]):,} at the end).")


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

    from backend import api
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


def reduction_note(dims: list[int], simulated: list[int] | None) -> str:
    """One sentence when the engine ran on exactly reduced hidden widths (deep linear networks)."""
    if not simulated or simulated == dims:
        return ""
    return (f" Simulated on hidden widths {simulated[1:-1]} instead of {dims[1:-1]}: every SGD iterate stays in "
            "col(W_k⁰) + row(W_{k+1}⁰), so this is the same process in fewer coordinates (same variances and loss).")
