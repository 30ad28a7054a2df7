"""Your model: a PyTorch model and its data from a model file in an allowed folder, chosen from a list
(no code and no path from the browser); variance, loss, the variance split and B_simple against the step t.
Inputs → backend → charts."""

from __future__ import annotations

from ui.shell import guard

guard()  # opened by its URL in a fresh session: run inside the app frame

import streamlit as st

import ui

from backend import api

st.title("Your model: the variance of SGD on your own network against the batch size")
st.caption("A model file defines model(seed) → torch.nn.Module, data() → {\"train\": (X, Y), \"val\": (X, Y)}, "
           "optionally loss(output, target) → per-sample losses and checkpoint() → state_dict (every init then "
           "starts from it). K initial weights × R replicas each, trained with the optimizer chosen here; the only "
           "randomness is the mini-batch sampling. No exact theory: replica estimates, each with its standard error.")
ui.theory_link(10, "the model-file contract, what is refused, and what the replicas measure")

raw0, d, k = ui.field_helpers("torch_model", "torch_model")
sb = st.sidebar
ui.presets_and_upload("torch_model", "torch_model")


def shown(path) -> str:
    """A model file as the list shows it: relative to the project where it lies inside it."""
    return str(path.relative_to(api.PROJECT_ROOT)) if path.is_relative_to(api.PROJECT_ROOT) else str(path)


files = [shown(p) for p in api.model_files()]
if not files:
    st.warning("No model file in the allowed folders (examples/models/ and the folders in $BATCHVAR_MODELS).")
    st.stop()
m0 = d("model") if isinstance(d("model"), dict) else {"file": d("model")}
start = m0.get("file") if m0.get("file") in files else files[0]
model_file = sb.selectbox("Model file", files, index=files.index(start), key=k("file"),
                          help="The model files of examples/models/ and of the folders in $BATCHVAR_MODELS "
                               "(set where the app is started); the page takes no other path and no code.")
c1, c2 = sb.columns(2)
inits = c1.number_input("Initial weights K", 1, 50, int(d("inits")), key=k("K"))
replicas = c2.number_input("Replicas per init R", 2, 10_000, int(d("replicas")), key=k("R"))
steps = ui.widgets.slider(sb, "Steps T", "steps", int(d("steps")), 1, 5000, key=k("T"))
record_every = sb.number_input("Record every k steps", 1, 5000, int(d("record_every")), key=k("rec"))
lr = ui.widgets.schedule(d, k, c_label="Learning rate c", default="constant", default_c="0.05")
optimizer = ui.widgets.optimizer("torch_model", raw0.get("optimizer"), k)  # the shared widget (ui/optimizer.py)
batch_sizes = ui.widgets.batch_sizes(d, k, [1, 2, 4, 8, 16, 32, 64, 128, 256])
sampler = sb.selectbox("Sampler", api.SAMPLERS, index=api.SAMPLERS.index(d("sampler")), key=k("sampler"),
                       format_func=api.SAMPLER_LABELS.get)
c1, c2 = sb.columns(2)
noise_samples = c1.number_input("Noise subsample", 2, 100_000, int(d("noise_samples")), key=k("m"),
                                help="Training points for the per-sample gradients of the split and B_simple "
                                     "(all of them: the split is exact)")
seed = c2.number_input("Seed", 0, 2**32 - 1, int(d("seed")), key=k("seed"))
dtype = sb.selectbox("dtype", api.DTYPES, index=api.DTYPES.index(d("dtype")), key=k("dtype"))
precision = ui.widgets.precision(d, k)
ui.clear_cache_button()

raw = {"setting": "torch_model", "model": {"file": model_file}, "batch_sizes": batch_sizes, "replicas": replicas,
       "inits": inits, "steps": steps, "record_every": record_every, "lr": lr, "seed": seed,
       "sampler": sampler, "dtype": dtype, "precision": precision, "noise_samples": noise_samples,
       "device": d("device"), **({"optimizer": optimizer} if optimizer else {})}
config = ui.validated(raw)  # a failing model file: one line naming the file and its function, in a red box

sim = ui.run_panel("torch_model", config, f"{config.inits} initial weight(s) × {config.replicas} replicas × "
                                          f"{len(config.batch_sizes)} batch sizes × {config.steps} steps "
                                          f"({config.n_train} training samples, "
                                          f"{config.sizes['n_params']:,} parameters)",
                   **ui.resumable_run("its last checkpoint (saved every few steps)"))
if sim is None:
    st.stop()
meta = sim["meta"]
st.caption(f"{meta['device']}; sampler: {meta['sampler_label']}; "
           + ("every init starts from the file's checkpoint(); " if meta["checkpoint"] else "")
           + "var(g) is the across-replica variance of the gradient on a fresh uniform mini-batch at the weights "
           f"reached at each recorded step; bands: {sim['band']}.")
ui.divergence_notice(config, sim)
ui.classifier_results(config, sim, with_gap=False)
