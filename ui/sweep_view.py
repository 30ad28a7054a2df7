"""A sweep's results: failed cells named, every quantity at a chosen t (or epoch) against a swept field with 95 %
intervals, one line per combination of the other fields, the exact value drawn where the setting has theory; the
cells' table and the downloads (CSV, JSON)."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from backend import api, charts
from ui.state import user_text


def results(out: dict, fields: tuple[str, ...]) -> None:
    for f in out["failed"]:
        st.warning(f"Cell {user_text(json.dumps(f['overrides']))} did not finish: {user_text(f['error'])}")
    if not out["cells"]:
        st.info("No cell finished.")
        return
    table = pd.DataFrame(api.sweep_table(out, with_theory=True))
    x_name = table["x_name"].iloc[0]
    c1, c2, c3, c4 = st.columns([3, 3, 3, 1])
    declared = api.quantity_table(api.parse_config(out["cells"][0]["config"]))  # each quantity's label and sign
    labels = api.quantity_labels(declared)
    quantity = c1.selectbox("Quantity", list(dict.fromkeys(table["quantity"])), key="sw_q",
                            format_func=lambda q: labels.get(q, q))
    xs = sorted(set(table["x"]))
    at = c2.select_slider(f"At {x_name}", xs, value=xs[-1], key="sw_x")
    axis = c3.selectbox("Against", [*fields, "b"], key="sw_axis")
    sel, others = charts.sweep_frame(table, quantity, at, axis, fields)
    values = pd.to_numeric(sel["value"], errors="coerce")
    spread = bool((values > 0).all()) and values.max() > 20 * values.min()
    log_y = c4.checkbox("Log y", spread, key="sw_logy", help="a log y axis (non-positive values are not drawn)")
    chart = charts.sweep_chart(sel, axis, others, f"{labels.get(quantity, quantity)} at {x_name} = {at}", log_y,
                               nonnegative=charts.is_nonnegative(quantity, declared))
    st.altair_chart(chart, width="stretch")
    st.caption(f"{len(out['cells'])} cells; each point is a replica estimate with its 95 % normal interval "
               "(value ± 1.96 SE); where the setting has exact theory at that step, the dashed line is the exact value.")
    cells = pd.DataFrame([{**{f: _cell_value(c["overrides"][f]) for f in fields}, "cached": c["cached"],
                           "node": c["node"], "seconds": c["seconds"]} for c in out["cells"]])
    st.dataframe(cells, hide_index=True)
    c1, c2 = st.columns(2)
    c1.download_button("Results (CSV)", table.to_csv(index=False), "batchvar_sweep.csv", "text/csv")
    c2.download_button("Sweep (JSON)", json.dumps(out, indent=1), "batchvar_sweep.json", "application/json")


def _cell_value(value):
    """An override as a table cell: numbers and strings as they are, lists and objects as JSON."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value
