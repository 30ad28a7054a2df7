"""Views of the batch-size advisor shared by its exact and replica modes."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from backend import api, charts
from ui.state import user_text


def schedule_comparison(config, key: str = "adv_sched") -> None:
    """A batch-size warm-up against constant b at its own sample budget, exactly (api.compare_schedule;
    docs/theory.md §12): the schedule's final E L beside each constant b's after ⌊N/b⌋ steps, same α_t."""
    st.subheader("A batch-size schedule against constant b")
    text = st.text_input("Schedule b:steps, b:steps (e.g. a warm-up 8:200, 32:300)", "8:200, 32:300", key=key,
                         help="b_i for steps_i steps; its budget N = Σ b_i·steps_i samples. Each constant b of the "
                              "schedule gets ⌊N/b⌋ steps of the same learning-rate schedule (no rescaling).")
    try:
        out = api.compare_schedule(config, api.parse_batch_schedule_text(text))
    except api.ConfigError as e:
        st.error(f"Check the schedule — {user_text(e)}")
        return
    rows = [{"run": f"schedule {text.strip()}", "steps": out["steps"], "E L(w_T)": out["loss"],
             "diverged": out["diverged"]}]
    rows += [{"run": f"constant b = {b}", "steps": r["steps"], "E L(w_T)": r["loss"], "diverged": r["diverged"]}
             for b, r in out["constant"].items()]
    st.dataframe(pd.DataFrame(rows), hide_index=True)
    best = out["best_constant_b"]
    verdict = ("beats every constant b" if out["schedule_better"] else
               f"does not beat constant b = {best}" if best is not None else "diverges like every constant b")
    st.caption(f"Exact, at the same budget N = {out['budget']:,} samples: the schedule {verdict} (E L(w_T) = "
               f"{out['loss']:.6g}" + ("" if best is None else f"; best constant b = {best}: "
                                        f"{out['constant'][str(best)]['loss']:.6g}") + ").")


def frontier(answers: dict, search: str) -> None:
    """Steps against examples to reach the target loss per rule, with McCandlish et al.'s fitted frontier and B_crit."""
    st.subheader("Steps against examples to reach the target")
    fr_rows, fit_rows = [], []
    for rule, ans in answers.items():
        for b, S in ans["steps_to_target"].items():
            if S is not None:
                fr_rows.append({"rule": rule, "b": int(b), "steps": S, "examples": int(b) * S})
        fit = ans["frontier"]
        if fit is not None and fit["B_crit"] is not None:
            for bb in sorted(set(fit["b"])):
                s = fit["S_min"] + fit["E_min"] / bb
                fit_rows.append({"rule": rule, "steps": s, "examples": s * bb})
            st.write(f"**{rule}**: S_min = {fit['S_min']:.4g}, E_min = {fit['E_min']:.4g}, "
                     f"B_crit = E_min/S_min = {fit['B_crit']:.4g} (relative rms of the fit {fit['relative_rms']:.2g}).")
    if not fr_rows:
        st.info(f"No batch size reaches the target {search}.")
        return
    st.altair_chart(charts.frontier_chart(pd.DataFrame(fr_rows), pd.DataFrame(fit_rows) if fit_rows else None),
                    width="stretch")


def momentum_view(result: dict, rules: list[str], y_title: str, title: str, caption: str, loss_name: str,
                  key: str, help: str | None = None) -> tuple[str, dict]:
    """The advisor along the momentum axis (api.advise_momentum's ``result``), both modes: the best (b, β) of each
    rule (``loss_name`` in its help), the best b of each β, the loss against b one line per β (``title``, on a log
    axis), ``caption``; returns the β picked for the details below ("0.9") and its answers ({rule: answer})."""
    for col, rule in zip(st.columns(len(rules)), rules):
        best = result["best"][rule]
        col.metric(f"best (b, β) ({rule})", "none" if best is None else f"b = {best['b']}, β = {best['momentum']:g}",
                   help=None if best is None else f"{loss_name} = {best['loss']:.4g}")
    keys = list(result["answers"][rules[0]])
    st.dataframe(pd.DataFrame([{"β": float(k), **{f"best b ({r})": result["best_b"][r][k] for r in rules}}
                               for k in keys]), hide_index=True)
    st.altair_chart(charts.advisor_momentum_chart(result, y_title, title), width="stretch")
    st.caption(caption)
    beta_key = st.selectbox("β for the details below", keys, key=key, help=help)
    return beta_key, {r: result["answers"][r][beta_key] for r in rules}

