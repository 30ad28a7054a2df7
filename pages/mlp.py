"""MLP classifier (paper §4.1, Figures 1, 4, 5): variance, loss, error, generalization gap and the variance split per
epoch, over several initial weights. Inputs → backend → charts."""

from __future__ import annotations

from ui.shell import guard

guard()  # opened by its URL in a fresh session: run inside the app frame

import streamlit as st

import ui

from backend import api

st.title("MLP classifier: variance, loss and generalization against the batch size")
st.caption("A fully connected ReLU network trained by mini-batch SGD on the cross-entropy from fixed initial weights; "
           "K initial weights × R replicas each (paper §4.1, Appendix A.1.3). No exact theory here: replica estimates "
           "only, each with its standard error.")
ui.theory_link(3, "what the replicas measure, the variance split, B_simple")

raw0, d, k = ui.field_helpers("mlp", "mlp")


sb = st.sidebar
ui.presets_and_upload("mlp", "mlp")
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
epochs = ui.widgets.slider(sb, "Epochs", "epochs", int(d("epochs")), 1, 1000, key=k("E"))
lr = ui.widgets.schedule(d, k, c_label="Learning rate c", default="constant", default_c="0.05")
batch_sizes = ui.widgets.batch_sizes(d, k, [8, 16, 32, 64, 128, 256, 512])
sampler = sb.selectbox("Sampler", api.MLP_SAMPLERS, index=api.MLP_SAMPLERS.index(d("sampler")), key=k("sampler"),
                       format_func=api.CLASSIFIER_SAMPLER_LABELS.get)
dist0 = d("distortion")
c1, c2, c3 = sb.columns(3)
distortion = {"alpha": ui.widgets.number(c1, "α", "distortion.alpha", float(dist0["alpha"]), 0.0, 100.0,
                                       key=k("da")),
              "sigma": ui.widgets.number(c2, "σ", "distortion.sigma", float(dist0["sigma"]), 0.0, 20.0,
                                       key=k("ds_")),
              "every": c3.number_input("gap every", 1, 100_000, int(dist0["every"]), key=k("de"))}
seed = sb.number_input("Seed", 0, 2**32 - 1, int(d("seed")), key=k("seed"))
precision = ui.widgets.precision(d, k)
optimizer = ui.widgets.optimizer("mlp", raw0.get("optimizer"), k)
ui.clear_cache_button()

raw = {"setting": "mlp", "dataset": dataset, "hidden": hidden, "inits": inits, "replicas": replicas, "epochs": epochs,
       "lr": lr, "batch_sizes": batch_sizes, "sampler": sampler, "distortion": distortion,
       "noise_samples": d("noise_samples"), "eval_size": d("eval_size"), "seed": seed, "device": d("device"),
       "dtype": d("dtype"), "precision": precision, **({"optimizer": optimizer} if optimizer else {})}
config = ui.validated(raw)

sim = ui.run_panel("mlp", config, f"{config.inits} initial weight(s) × {config.replicas} replicas × "
                                      f"{len(config.batch_sizes)} batch sizes × {config.epochs} epochs "
                                      f"(n = {config.n_train} training images)",
                   **ui.RESUMABLE_RUN)
if sim is None:
    st.stop()
meta = sim["meta"]
st.caption(f"{meta['device']}; sampler: {meta['sampler_label']}; var(g) is the across-replica variance of the "
           "gradient on a fresh uniform mini-batch at the weights reached at each epoch; bands: "
           f"{sim['band']}." + (f" Update: {meta['update']}." if meta.get("update") else ""))
ui.divergence_notice(config, sim)

ui.classifier_results(config, sim, with_gap=True)
