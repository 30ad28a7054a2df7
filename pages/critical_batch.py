"""Critical batch size: branched runs from checkpoints along training, McCandlish et al.'s B_simple and B_noise beside
it — exact where a setting has the branching hook (docs/theory.md §11). Inputs → backend.api.cbs_rules → charts."""

from __future__ import annotations

from ui.shell import guard

guard()  # opened by its URL in a fresh session: run inside the app frame

import json

import pandas as pd
import streamlit as st

import ui
from backend import api, charts

st.title("Critical batch size: branching from checkpoints")
st.caption("The reference run (batch B, the config's schedule and optimizer) is branched at each checkpoint t: the "
           "state continues with batch k·B and the constant step size α_t·f(k) (f = 1, √k or k) for ⌊S/(kB)⌋ steps, "
           "the optimizer state carried over. The critical batch size is the largest k·B whose loss stays within "
           "(1 + ε) of the k = 1 branch's (Merrill et al. 2025). Where the setting has exact theory the branches are "
           "the exact distribution of the state — no sampling noise — set beside McCandlish et al.'s B_simple and "
           "B_noise at the same t.")
ui.theory_link(11, "B_noise, the branches and the one-step optimum")

sb = st.sidebar
exact = api.cbs_settings()
setting, _, config = ui.base_config("cbs", "Config", exact[0] if exact else None)
pages = {p["name"]: p["title"] for p in api.setting_pages()}

sb.divider()
# the fields below start from this setting's config: keyed by setting, so another setting's values never carry over
exact_here = api.has_theory(config)  # exact branches; else every replica's state branches (replica estimates)
b_ref = int(sb.number_input("Reference batch size B", 1, 10**6, int(min(config.batch_sizes)), key=f"cbs_bref_{setting}"))
try:
    steps = api.cbs_max_checkpoint(config, b_ref)
except (api.ConfigError, AttributeError):  # no branching hook: said below
    steps = int(getattr(config, "steps", 0))
# exact: from t = steps/8 on (a branch at t keeps α_t constant for its ⌊S/(kB)⌋ steps; under a decaying schedule α_0
# is the largest step, and with the defaults every branch at t = 0 diverges)
marks = {steps // 8, steps // 4, steps // 2, steps} if exact_here else {0, steps // 2, steps}
checkpoints_text = sb.text_input("Checkpoints t (comma-separated)", ",".join(str(t) for t in sorted(marks)),
                                 key=f"cbs_checkpoints_{setting}", help=f"steps of the reference run, at most {steps} (the "
                                                             "config's steps at this B)")
samples = int(sb.number_input("Samples S per branch", 1, 10**8, (1000 if exact_here else 32) * b_ref, step=b_ref,
                              key=f"cbs_samples_{setting}", help="each branch takes ⌊S/(kB)⌋ steps of batch k·B"))
rules = sb.multiselect("Scaling rules", list(api.SCALINGS), default=list(api.SCALINGS), key="cbs_rules",
                       help="the branch's step size α_t·f(k): none f = 1, sqrt f = √k, linear f = k")
tolerance = float(sb.number_input("Tolerance ε", 0.0, 10.0, api.CBS_TOLERANCE, format="%.4g", key="cbs_tol"))
ks_text = sb.text_input("k (comma-separated; blank: powers of two while k·B ≤ n)", "" if exact_here else "1,2,4,8",
                        key=f"cbs_ks_{setting}")
if not rules:
    st.info("Pick at least one scaling rule.")
    st.stop()
if not exact_here and not api.cbs_replica_setting(config):
    st.info(f"{pages[setting]} has no branching from checkpoints (neither exact theory nor replica branches).")
    st.stop()
try:
    request = (config, b_ref, api.read_ints(checkpoints_text, "checkpoints") or [], samples, tuple(rules),
               tolerance, api.read_ints(ks_text, "ks"))
    if exact_here:
        with st.spinner("Branching the exact state at every checkpoint…"):
            docs = api.cbs_rules(*request)
    else:
        runner = ui.widgets.executor("cbs")
        est = api.cbs_estimate(config, b_ref, request[2], samples, tuple(rules), request[6])  # the guard's refusal
except api.ConfigError as e:
    st.error(f"Check the inputs — {ui.user_text(e)}")
    st.stop()
if not exact_here:
    where = "in this process" if runner.name == "local" else "on Ray, as one task"
    header = (f"**Replica branches** of {config.replicas} replicas {where}: estimated "
              f"{api.format_duration(est['seconds'])} and {api.format_bytes(est['memory_bytes'])} "
              f"{api.estimate_where(api.resolve_device(config.device))} (cached afterwards: instant).")
    key = json.dumps([config.to_json(), request[1:], runner.name, st.session_state.get("cbs_address")], default=str)
    docs = ui.job_panel("cbs", key, header, lambda: (lambda progress, cancel: api.cbs_rules(  # the bar and Cancel:
                            *request, executor=runner, progress=progress, cancel=cancel)),  # every replica step
                        idle="Press Run: every replica's state at each checkpoint continues with each k·B.")
    if docs is None:
        st.stop()

first = next(iter(docs.values()))


def _g(x) -> str:
    return "—" if x is None else f"{x:.4g}"


cols = st.columns(len(docs))
for col, (rule, doc) in zip(cols, docs.items()):
    last = doc["checkpoints"][-1]
    col.metric(f"critical b at t = {last['t']} ({rule})", "none" if last["cbs"] is None else str(last["cbs"]),
               help=f"B_simple = {_g(last['b_simple'])}, B_noise = {_g(last['b_noise'])} at t = {last['t']}")
st.altair_chart(charts.cbs_chart(docs), width="stretch")
scales_text = ("B_simple = E tr Σ/E‖∇L‖² and B_noise = E tr(HΣ)/E ∇LᵀH∇L, ratios of expectations given w₀ "
               "(Σ the population covariance of the per-sample gradients, H the Hessian).")
if first["exact"]:
    st.caption("Exact values (the branches continue the exact distribution of the state): no standard error. "
               + scales_text)
else:
    st.caption(f"Replica estimates: each branch's loss is the mean over the {first['replicas']} replicas that "
               "continued from that checkpoint, with its 95 % interval; B_simple and B_noise are ratios of replica "
               "means with delta-method SEs (in the table and the downloads). " + scales_text
               + (f" {first['b_noise_note']}." if "b_noise_note" in first else ""))

ts = [row["t"] for row in first["checkpoints"]]
t_pick = st.select_slider("Checkpoint for the branches", ts, value=ts[len(ts) // 2], key=f"cbs_t_{setting}")
st.altair_chart(charts.branch_loss_chart(docs, t_pick), width="stretch")
row = next(r for r in first["checkpoints"] if r["t"] == t_pick)
st.dataframe(pd.DataFrame([{"b": int(b), "ε_opt(b)": row["step_opt"][b], "one-step gain": row["step_gain"][b]}
                           for b in row["step_opt"]]), hide_index=True)
st.caption(f"McCandlish et al.'s one-step optimum at t = {t_pick}: ε_opt(b) = E‖∇L‖²/(E ∇LᵀH∇L + c_b E tr(HΣ)) and "
           "the decrease of E L it buys in one plain SGD step, ½(E‖∇L‖²)²/(E ∇LᵀH∇L + c_b E tr(HΣ)).")

table = pd.DataFrame(api.cbs_table(docs))
HEADERS = {"steps": "steps ⌊S/(kB)⌋", "lr": "step size", "loss": "branch loss", "cbs": "critical b at t",
           "loss_at_t": "L at t", "b_simple": "B_simple", "b_noise": "B_noise", "step_opt": "ε_opt(b)",
           "step_gain": "one-step gain", "diverged_replicas": "diverged replicas"}


def header(field: str) -> str:
    """A column's heading: the quantity's name, "… SE" for its standard error."""
    if field.endswith("_se"):
        return f"{HEADERS.get(field[:-3], field[:-3])} SE"
    return HEADERS.get(field, field)


st.dataframe(table.rename(columns=header), hide_index=True)
st.caption("Blank cells: a branch loss that is not finite (the branch diverged), a critical b where no branch stays "
           "within the tolerance of the k = 1 branch, a noise scale whose denominator is zero. The CSV keeps the "
           "fields' names.")
st.download_button("Branches (CSV)", table.to_csv(index=False), "batchvar_cbs.csv", "text/csv")
st.download_button("Critical batch size (JSON)", json.dumps({"config": config.to_json(), "answers": docs}, indent=2),
                   "batchvar_cbs.json", "application/json")
