"""Batch-size advisor: which b for a budget of N gradient evaluations — exact for linear regression (docs/theory.md
§7). Inputs → backend.api.advise_rules → charts."""

from __future__ import annotations

from ui.shell import guard

guard()  # opened by its URL in a fresh session: run inside the app frame

import json

import pandas as pd
import streamlit as st

import ui
from backend import api, charts

st.title("Batch-size advisor: which b for my budget?")
st.caption("For a budget of N gradient evaluations each batch size b takes T_b = ⌊N/b⌋ steps, with the learning "
           "rate's constant scaled as c_b = c·(b/b_ref)^k. Linear regression: the exact expectation over the "
           "mini-batch draws, recomputed as the inputs move (a replica run checks it on demand). The other settings: "
           "one replica run per b and rule (Run), each estimate with its standard error.")
ui.theory_link(7, "the advisor, the frontier of McCandlish et al. and the noise scale")

sb = st.sidebar
pages = {p["name"]: p for p in api.setting_pages()}
setting = sb.selectbox("Setting", list(pages), format_func=lambda name: pages[name]["title"], key="adv_setting")
if not pages[setting]["exact_advice"]:  # replica sweeps: the setting has no exact advisor hook
    import ui.advisor_sweep as sweep_view

    sweep_view.show(setting)
    st.stop()
raw0, d, k = ui.field_helpers("adv", setting)
ds0 = d("dataset") if isinstance(d("dataset"), dict) else {"name": d("dataset")}
source = sb.selectbox("Dataset", ["graduate_admission", "synthetic"],
                      index=1 if ds0.get("name") == "synthetic" else 0, key=k("source"))
dataset: dict = {"name": source}
if source == "synthetic":
    c1, c2 = sb.columns(2)
    dataset.update(n=c1.number_input("n", 2, 100_000, int(ds0.get("n", 200)), key=k("sn")),
                   p=c2.number_input("p", 1, 50, int(ds0.get("p", 5)), key=k("sp")))
lr = ui.widgets.schedule(d, k, c_label="c (e.g. 1/2 or 0.05)")
batch_sizes = ui.widgets.batch_sizes(d, k, api.paper_batch_sizes(500) + [1, 2, 4, 8, 16, 32, 64, 128, 256])
sampler = sb.selectbox("Sampler", ["without_replacement", "with_replacement"],
                       index=0 if d("sampler") != "with_replacement" else 1, key=k("sampler"),
                       format_func=lambda s: s.replace("_", " "))
config = ui.validated({"setting": setting, "dataset": dataset, "lr": lr, "batch_sizes": batch_sizes,
                       "sampler": sampler, "device": d("device")}, remember=False)

sb.divider()
unit = sb.radio("Budget in", ["samples", "epochs"], horizontal=True, key="adv_unit")
if unit == "epochs":
    epochs = sb.slider("Budget (epochs of n samples)", 1, 2000, 200, key="adv_epochs")
    budget = epochs * config.n
else:
    budget = int(sb.number_input("Budget N (samples)", min(config.batch_sizes), 2_000_000, 100_000, step=1000,
                                 key="adv_budget"))
rules = sb.multiselect("Scaling rules", list(api.SCALINGS), default=list(api.SCALINGS), key="adv_rules",
                       help="none: c_b = c; sqrt: c_b = c·√(b/b_ref); linear: c_b = c·b/b_ref")
b_ref = sb.number_input("b_ref", 1, 10**6, int(min(config.batch_sizes)), key="adv_bref")
use_target = sb.checkbox("Target loss (steps and examples to reach it)", False, key="adv_use_target")
momenta, effective_lr, axis = ui.widgets.momentum_axis("adv")  # axis False: the plain advisor, unchanged
if not rules:
    st.info("Pick at least one scaling rule.")
    st.stop()


def advise(target: float | None):
    """The plain advisor per rule, or along the momentum axis ({rule: {β: answer}} under "answers")."""
    if axis:
        return api.advise_momentum(config, budget, momenta, tuple(rules), b_ref, target, effective_lr)
    return api.advise_rules(config, budget, tuple(rules), b_ref, target)


def lines(out) -> dict:
    """Every drawn line's answer: {rule: answer}, or {(β, rule): answer} along the momentum axis."""
    return {(key, r): a for r, per in out["answers"].items() for key, a in per.items()} if axis else out


try:
    with st.spinner("Exact moments for every b and rule" + (" and β…" if axis else "…")):
        result = advise(None)
        target = None
        if use_target:  # starts at a target the exact curves reach (the median final loss over rules and b)
            target = sb.number_input("target E L(w_t)", 0.0, 1e9, api.reachable_target(lines(result)) or 0.0,
                                     format="%.6g", key="adv_target", help="starts at the median exact final loss "
                                     "over the rules and b that do not diverge: at least half of them reach it "
                                     "within the budget")
            result = advise(target)
except api.ConfigError as e:
    st.error(ui.user_text(e))
    st.stop()
answers = result if not axis else None

rows = []
for line, ans in lines(result).items():
    beta, rule = line if axis else (None, line)
    for b, row in ans["curves"].items():
        rows.append({**({"β": float(beta)} if axis else {}), "rule": rule, "b": int(b), "steps": row["steps"],
                     "c_b": row["lr_c"], "loss": row["loss"], "var(∇L)": row["var_full_grad"], "var(g)": row["var_g"],
                     "diverged": row["diverged"], "best": ans["best_b"] == int(b)})
table = pd.DataFrame(rows)
y_title = f"E L(w_T) after N = {budget:,} samples"
if axis:
    beta_key, answers = ui.momentum_view(
        result, rules, y_title, "Expected final loss against b at a fixed budget, one line per β (◇ best b of β, ★ "
        "best (b, β))" + (", α/(1 − β) fixed" if effective_lr else ""),
        "Heavy ball β on every line (the exact moments of (w_t, v_t), docs/theory.md §9)"
        + (": each β runs with c·(1 − β), the same effective step α/(1 − β) as c at β = 0." if effective_lr
           else ", the same c for every β (tick α/(1 − β) fixed to compare at one effective step)."),
        "E L(w_T)", "adv_beta", "the noise scales, the target frontier, the schedule comparison and the replica "
                                "check for this β")
    beta = dict(zip(result["answers"][rules[0]], api.check_momenta(momenta)))[beta_key]  # as typed: exact for 9/10
    config = api.momentum_config(config, beta, effective_lr)
else:
    cols = st.columns(len(answers))
    for col, (rule, ans) in zip(cols, answers.items()):
        best = ans["best_b"]
        col.metric(f"best b ({rule})", "none" if best is None else str(best),
                   help=None if best is None else f"E L(w_T) = {ans['curves'][str(best)]['loss']:.4g}")
    st.altair_chart(charts.advisor_chart(answers, y_title, "Expected final loss against b at a fixed budget (◇ best b)"),
                    width="stretch")
diverged = table[table["diverged"]]
if len(diverged):
    st.warning("Diverged (expected loss non-finite or above 10⁶ × the loss at w₀): "
               + "; ".join(f"{r} at b = {', '.join(map(str, g['b']))}" for r, g in diverged.groupby("rule"))
               if not axis else "Diverged (expected loss non-finite or above 10⁶ × the loss at w₀): "
               + "; ".join(f"{r}, β = {beta:g} at b = {', '.join(map(str, g['b']))}"
                           for (beta, r), g in diverged.groupby(["β", "rule"])))
st.dataframe(table, hide_index=True)

if target is not None:
    ui.frontier(answers, "within twice its budget of steps")

st.subheader("The exact gradient noise scales along training")
rule0 = next(iter(answers))
st.altair_chart(charts.b_noise_chart(answers[rule0]["b_simple"], answers[rule0]["b_noise"], config.batch_sizes,
                                     rule0), width="stretch")
st.caption("McCandlish et al.'s noise scales, exact ratios of expectations given w₀, with Σ the population covariance "
           "of the per-sample gradients and H = XᵀX/n the Hessian: B_simple = E tr Σ(w_t)/E‖∇L(w_t)‖² (solid), the "
           "batch size at which the one-step noise equals the squared signal, and B_noise = E tr(HΣ)/E ∇LᵀH∇L "
           "(dashed), the batch size at which the optimal step gains half of its noiseless value — the critical batch "
           "sizes the gradient noise predicts, to set beside the exact optimum above (the *Critical batch size* page "
           "measures it by branching).")
ui.schedule_comparison(config)
st.subheader("Replica check")
replicas = st.number_input("Replicas per b and rule", 100, 100_000, 1000, step=100, key="adv_check_R")
try:  # every cell validated and guarded before Run: the b whose runs fit are offered, the others named
    plan = api.replica_plan(config.replace(replicas=replicas), budget, tuple(rules), b_ref)
except api.ConfigError as e:
    st.error(f"Check the inputs — {ui.user_text(e)}")
    st.stop()
for why in plan["refused"].values():
    st.caption(ui.user_text(why) + " — lower the budget to check it.")
fits = list(plan["seconds"])
stable = [b for b in fits if not all(answers[r]["curves"][str(b)]["diverged"] for r in rules)]
check_bs = st.multiselect("Batch sizes to check", fits, default=stable, key="adv_check_bs",
                          help="the b whose replica runs fit the engine's limits and the resource guard at this "
                               "budget; those where every rule diverges are left out at first (no z is meaningful there)")
if not check_bs:
    st.info("No batch size to check: pick one, or lower the budget so that a run of every b fits.")
    st.stop()
check_device = api.resolve_device(config.device)
checked = ui.job_panel("adv_check", json.dumps([config.to_json(), budget, rules, b_ref, target, replicas, check_bs]),
                       f"Run {replicas:,} replicas of SGD{f' with momentum β = {beta_key}' if axis else ''} for b = "
                       f"{', '.join(map(str, check_bs))} and each rule with its budget and learning rate, and compare "
                       "their final loss with the exact value above — "
                       f"{api.format_duration(sum(plan['seconds'][b] for b in check_bs))} "
                       f"{api.estimate_where(check_device)}; runs already cached are instant.",
                       lambda: (lambda progress, cancel: api.sweep(config.replace(replicas=replicas,
                                                                                  batch_sizes=check_bs), budget,
                                                                    tuple(rules), b_ref, target, progress, cancel)))
if checked is not None:
    st.dataframe(pd.DataFrame(api.compare_replicas(answers, checked)), hide_index=True)
    st.caption("z = (replica estimate − exact) / SE: |z| ≤ 4 is agreement. No z where the exact loss or the "
               "replicas diverged (blank).")
st.download_button("Advice (JSON)", json.dumps(result, indent=2), "batchvar_advice.json", "application/json")
st.download_button("Table (CSV)", table.to_csv(index=False), "batchvar_advice.csv", "text/csv")
