"""Sequence model trained with Adam (paper Appendix A.1.4, Figure 6): a small transformer on review sentences;
variance, loss and error per epoch against b. Inputs → backend → charts."""

from __future__ import annotations

from ui.shell import guard

guard()  # opened by its URL in a fresh session: run inside the app frame

import streamlit as st

import ui


st.title("Sequence model with Adam: variance, loss and error against the batch size")
st.caption("A transformer encoder classifier (own attention, no dropout) on the UCI Sentiment Labelled Sentences, "
           "trained with Adam(W), linear warm-up then decay, gradients clipped at a threshold per replica. The "
           "variance reported is that of the stochastic gradient before clipping and Adam, as in the paper.")
ui.theory_link(3, "what the replicas measure, the variance split, B_simple")

raw0, d, k = ui.field_helpers("seq", "sequence")


sb = st.sidebar
ui.presets_and_upload("seq", "sequence")
c0 = d("corpus") if isinstance(d("corpus"), dict) else {"name": d("corpus")}
names = ["yelp", "amazon", "imdb", "all", "file"]
corpus_name = sb.selectbox("Corpus", names, index=names.index(c0.get("name", "yelp")), key=k("corpus"),
                           help="UCI Sentiment Labelled Sentences (Kotzias et al., 2015), or your own TSV/CSV file")
corpus: dict = {"name": corpus_name}
if corpus_name == "file":
    corpus["path"] = sb.text_input("Path of a TSV (sentence<TAB>label) or CSV (text,label) file", c0.get("path", ""),
                                   key=k("path"))
    corpus["format"] = sb.selectbox("Format", ["tsv", "csv"], index=["tsv", "csv"].index(c0.get("format", "tsv")),
                                    key=k("fmt"))
c1, c2 = sb.columns(2)
tokenizer = c1.selectbox("Tokenizer", ["word", "char"], index=["word", "char"].index(d("tokenizer")), key=k("tok"))
max_len = c2.number_input("Max length", 2, 1024, int(d("max_len")), key=k("len"))
c1, c2, c3 = sb.columns(3)
layers = c1.number_input("Layers", 1, 24, int(d("layers")), key=k("L"))
heads = c2.number_input("Heads", 1, 32, int(d("heads")), key=k("H"))
width = c3.number_input("Width", 2, 2048, int(d("width")), key=k("D"))
c1, c2 = sb.columns(2)
inits = c1.number_input("Initial weights K", 1, 50, int(d("inits")), key=k("K"))
replicas = c2.number_input("Replicas per init R", 2, 10_000, int(d("replicas")), key=k("R"))
epochs = ui.widgets.slider(sb, "Epochs", "epochs", int(d("epochs")), 1, 100, key=k("E"))
o0 = d("optimizer")
c1, c2, c3 = sb.columns(3)
schedule = {"lr": c1.text_input("Peak lr", str(o0["lr"]), key=k("lr")),
            "warmup": ui.widgets.number(c2, "Warm-up steps", "optimizer.warmup", int(o0["warmup"]), 0, 10**6,
                                        key=k("wu")),
            "clip": c3.text_input("Clip", str(o0["clip"]), key=k("clip"))}
optimizer = ui.widgets.optimizer("sequence", o0, k, extra=schedule)  # its lr, warm-up and clip beside the named form
batch_sizes = ui.widgets.batch_sizes(d, k, [8, 16, 32, 64, 128])
seed = sb.number_input("Seed", 0, 2**32 - 1, int(d("seed")), key=k("seed"))
precision = ui.widgets.precision(d, k)
ui.clear_cache_button()

raw = {"setting": "sequence", "corpus": corpus, "tokenizer": tokenizer, "max_len": max_len, "vocab": d("vocab"),
       "layers": layers, "heads": heads, "width": width, "inits": inits, "replicas": replicas, "epochs": epochs,
       "optimizer": optimizer, "batch_sizes": batch_sizes, "sampler": d("sampler"),
       "noise_samples": d("noise_samples"), "eval_size": d("eval_size"), "seed": seed, "device": d("device"),
       "dtype": d("dtype"), "precision": precision}
config = ui.validated(raw)

sim = ui.run_panel("seq", config, f"{config.inits} initial weight(s) × {config.replicas} replicas × "
                                      f"{len(config.batch_sizes)} batch sizes × {config.epochs} epochs "
                                      f"({config.n_train} training sentences)",
                   **ui.RESUMABLE_RUN)
if sim is None:
    st.stop()
st.caption(f"{sim['meta']['device']}; sampler: {sim['meta']['sampler_label']}; vocabulary "
           f"{sim['meta']['vocab_size']} tokens; bands: {sim['band']}."
           + (f" Update: {sim['meta']['update']}." if sim["meta"].get("update") else ""))
ui.divergence_notice(config, sim)
ui.classifier_results(config, sim, with_gap=False)
