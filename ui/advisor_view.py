"""Views of the batch-size advisor shared by its exact and replica modes."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from backend import charts


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
