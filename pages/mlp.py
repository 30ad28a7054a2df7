"""MLP classifier (paper §4.1, Figures 1, 4, 5): variance, loss, error, generalization gap and the variance split per
epoch, over several initial weights. Inputs → backend → charts."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from pages import common

from backend import api, api_mlp
from backend import config as cfg
from backend.errors import ConfigError

st.title("MLP classifier: variance, loss and generalization against the batch size")
st.caption("A fully connected ReLU network trained by mini-batch SGD on the cross-entropy from fixed initial weights; "
           "K initial weights × R replicas each (paper §4.1, Appendix A.1.3; theory.md §3–§5). No exact theory here: "
           "replica estimates only.")

raw0: dict = common.initial_raw("mlp", "mlp")
gen = st.session_state.mlp_gen
defaults = cfg.MLPConfig.parse({"setting": "mlp", "preset": "laptop"}).to_json()


def d(key: str):
    return raw0.get(key, defaults[key])


def k(name: str) -> str:
    return f"mlp_{name}_{gen}"


sb = st.sidebar
common.presets_and_upload("mlp", {name: {"preset": name} for name in cfg.MLP_PRESETS}, raw0, "mlp")
ds0 = d("dataset") if isinstance(d("dataset"), dict) else {"name": d("dataset")}
names = ["digits", "fashion_mnist", "idx"]
ds_name = sb.selectbox("Dataset", names, index=names.index(ds0.get("name", "digits")), key=k("ds"),
                       format_func={"digits": "digits (scikit-learn, 8×8)",
                                    "fashion_mnist": "Fashion-MNIST (Debian package)",
                                    "idx": "IDX files in a directory (e.g. MNIST)"}.get)
dataset: dict = {"name": ds_name}
if ds_name == "idx":
    dataset["path"] = sb.text_input("Directory with train-images-idx3-ubyte[.gz] …", ds0.get("path", ""), key=k("p"))
c1, c2 = sb.columns(2)
train_size = c1.number_input("Training subset (0 = all)", 0, 10**7, int(ds0.get("train_size", 0)), key=k("ntr"))
if train_size:
    dataset["train_size"] = train_size
hidden_text = sb.text_input("Hidden widths", ", ".join(map(str, d("hidden"))), key=k("hidden"))
try:
    hidden = [int(x) for x in hidden_text.replace(" ", "").split(",") if x]
except ValueError:
    hidden = hidden_text
c1, c2 = sb.columns(2)
inits = c1.number_input("Initial weights K", 1, 50, int(d("inits")), key=k("K"))
replicas = c2.number_input("Replicas per init R", 2, 10_000, int(d("replicas")), key=k("R"))
epochs = sb.slider("Epochs", 1, 1000, min(int(d("epochs")), 1000), key=k("E"))
lr0 = d("lr") if isinstance(d("lr"), dict) else {"schedule": "constant", "c": d("lr")}
c1, c2 = sb.columns(2)
schedule = c1.selectbox("Schedule", cfg.SCHEDULES, index=cfg.SCHEDULES.index(lr0.get("schedule", "constant")),
                        key=k("sched"))
lr = {"schedule": schedule, "c": c2.text_input("Learning rate c", str(lr0.get("c", "0.05")), key=k("c"))}
b_options = sorted({8, 16, 32, 64, 128, 256, 512} | set(d("batch_sizes")))
batch_sizes = sb.multiselect("Batch sizes b", b_options, default=list(d("batch_sizes")), key=k("bs"))
sampler = sb.selectbox("Sampler", cfg.MLP_SAMPLERS, index=cfg.MLP_SAMPLERS.index(d("sampler")), key=k("sampler"),
                       format_func=api_mlp.SAMPLER_LABELS.get)
dist0 = d("distortion")
c1, c2, c3 = sb.columns(3)
distortion = {"alpha": c1.number_input("α", 0.0, 100.0, float(dist0["alpha"]), key=k("da")),
              "sigma": c2.number_input("σ", 0.0, 20.0, float(dist0["sigma"]), key=k("ds_")),
              "every": c3.number_input("gap every", 1, 100_000, int(dist0["every"]), key=k("de"))}
seed = sb.number_input("Seed", 0, 2**31, int(d("seed")), key=k("seed"))
common.clear_cache_button()

raw = {"setting": "mlp", "dataset": dataset, "hidden": hidden, "inits": inits, "replicas": replicas, "epochs": epochs,
       "lr": lr, "batch_sizes": batch_sizes or [], "sampler": sampler, "distortion": distortion,
       "noise_samples": d("noise_samples"), "eval_size": d("eval_size"), "seed": seed, "device": d("device"),
       "dtype": d("dtype")}
try:
    config = cfg.parse_config(raw)
except ConfigError as e:
    st.error(f"Check the inputs — {e}")
    st.stop()
common.sync_url(config)

sim = common.run_panel("mlp", config, f"{config.inits} inits × {config.replicas} replicas × "
                                      f"{len(config.batch_sizes)} batch sizes × {config.epochs} epochs "
                                      f"(n = {config.n_train} training images)")
if sim is None:
    st.info("Press Run. A cancelled run resumes from its last completed epoch.")
    st.stop()
meta = sim["meta"]
st.caption(f"{meta['device']}; sampler: {meta['sampler_label']}; var(g) is the across-replica variance of the "
           "gradient on a fresh uniform mini-batch at the weights reached at each epoch; medians and min–max bands "
           "over the initial weights.")
for row in meta["per_b"]:
    if row["diverged_at"] is not None:
        st.warning(f"b = {row['b']}: {row['diverged_replicas']} replica(s) diverged, the first at step "
                   f"{row['diverged_at']}; later statistics use the replicas that stayed finite.")


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
        x=alt.X("epoch:Q"), color=alt.Color("b:N", sort=[str(b) for b in config.batch_sizes], title="b"),
        opacity=alt.condition(sel, alt.value(1.0), alt.value(0.15)))
    band = base.mark_area(opacity=0.25).encode(y=alt.Y("lo:Q", scale=scale, title=title), y2="hi:Q")
    line = base.mark_line(point=len(df) < 200).encode(y=alt.Y("value:Q", scale=scale), tooltip=["b", "epoch", "value"])
    out = (band + line).add_params(sel).properties(title=title, height=280)
    st.altair_chart(out, width="stretch")
    st.caption(f"Drawn: replica estimate {int(df['value'].notna().sum())} points.")
    return out


tab_v, tab_l, tab_g, tab_s, tab_dl = st.tabs(["Variance", "Loss and error", "Generalization gap", "Variance split",
                                              "Downloads"])
charts_by_name = {}
with tab_v:
    charts_by_name["var(g)"] = chart(frame("var_g", "var_g_min", "var_g_max"), "var(g) across replicas (log)", True)
    share = api_mlp.b_ordering_share(sim)
    st.write(f"var(g) decreases with b at {100 * share:.0f} % of the epochs (all batch sizes ordered).")
with tab_l:
    for q, title in (("loss_train", "training loss"), ("loss_val", "validation loss"),
                     ("error_train", "training error"), ("error_val", "validation error")):
        charts_by_name[title] = chart(frame(q, f"{q}_min", f"{q}_max"), title + " (mean; band: min–max over inits)")
with tab_g:
    charts_by_name["gap"] = chart(frame("gap_distorted", "gap_distorted_min", "gap_distorted_max"),
                                  "accuracy(train) − accuracy(distorted validation)")
    st.caption(f"Elastic distortion α = {config.distortion['alpha']}, σ = {config.distortion['sigma']} "
               f"(Simard et al.), measured every {config.distortion['every']} epochs.")
with tab_s:
    st.markdown("Law of total variance (theory.md §3): var(g_t | F_0) = E[var(g_t | F_t)] + var(∇L(w_t) | F_0). "
                "The first term is the one-step noise of Lemma 1 from per-sample gradients on a fixed subsample of "
                f"{min(config.noise_samples, config.n_train)} training points (exact when it is the whole set); the "
                "second is the spread of the full gradient across replicas.")
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
with tab_dl:
    rows = []
    for b in config.batch_sizes:
        df = pd.DataFrame({"epoch": sim["epoch"]})
        df["b"] = b
        for f in api.quantities(config):
            df[f] = sim["curves"][b][f]
        rows.append(df)
    st.download_button("Curves (CSV)", pd.concat(rows).to_csv(index=False), "batchvar_mlp.csv", "text/csv")
    st.download_button("Config (JSON, reloadable)", __import__("json").dumps(config.to_json(), indent=2),
                       "batchvar_config.json", "application/json")
    from backend import charts as ch

    which = st.selectbox("Chart", list(charts_by_name), key="mlp_dlq")
    if st.button("Prepare the chart as PNG and SVG", key="mlp_prep"):
        st.session_state.mlp_png = ch.to_png(charts_by_name[which])
        st.session_state.mlp_svg = ch.to_svg(charts_by_name[which])
    if "mlp_png" in st.session_state:
        st.download_button("Chart (PNG)", st.session_state.mlp_png, "batchvar_chart.png", "image/png")
        st.download_button("Chart (SVG)", st.session_state.mlp_svg, "batchvar_chart.svg", "image/svg+xml")
