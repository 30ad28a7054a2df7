"""Views that the pages with exact theory share: the agreement of estimates with the exact values (z-scores) and
the check of Theorems 1–2 on the exact values (docs/theory.md §1, §5)."""

from __future__ import annotations

import streamlit as st

from backend import api, charts


def agreement_view(config, theory: dict, sim: dict, quantity: str, estimate_name: str | None = None) -> None:
    """|z| = |estimate − exact| / SE over every (b, t) with an exact value: the shares within 2 and 4, the largest,
    and the z chart (api.agreement)."""
    agr = api.agreement(theory, sim, quantity, estimate_name=estimate_name)
    c1, c2, c3 = st.columns(3)
    c1.metric("|z| ≤ 2", f"{100 * agr['within_2']:.1f} %", help="expect about 95 %")
    c2.metric("|z| ≤ 4", f"{100 * agr['within_4']:.1f} %", help="expect about 100 %")
    c3.metric("max |z|", f"{agr['max_abs']:.2f}", help=f"over {agr['count']} (b, t) pairs with exact values")
    st.altair_chart(charts.z_chart(agr["z"], theory["t"], api.curve_keys(config)), width="stretch")
    st.caption("z is NaN (blank) where the quantity is deterministic (t = 0 for var(∇L), b = n) or has no exact "
               "value. Neighbouring t share replicas, so z is correlated along t.")


def theorem_checks(config, labels: dict[str, str]) -> None:
    """Theorems 1–2 on the exact values at every b in [1, n] (api.check_monotone): a green line per quantity that
    is non-increasing in b at every t, a red line with the first violation otherwise."""
    for q, res in api.check_monotone(config).items():
        if res["holds"]:
            st.success(f"{labels[q]} is non-increasing in b at every t = 0..{res['checked_t'] - 1}, checked on "
                       f"{res['checked_b']} batch sizes.")
        else:
            v = res["first_violation"]
            st.error(f"{labels[q]} increases from b = {v['b']} to b = {v['b_next']} at t = {v['t']} "
                     f"({v['value']:.6g} → {v['value_next']:.6g}).")
