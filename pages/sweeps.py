"""Sweeps: a grid of replica runs (up to three fields × their values) from a setting's config, run here or on Ray,
each cell one cached ``simulate``; results as a table and charts against the swept fields. Inputs → backend.api
(sweep_spec, sweep_executor, sweep_estimate, run_sweep, sweep_table) → charts."""

from __future__ import annotations

from ui.shell import guard

guard()  # opened by its URL in a fresh session: run inside the app frame

import json

import streamlit as st

import ui
from backend import api
from ui.sweep_view import results

st.title("Sweeps: a grid of replica runs")
st.caption("Vary up to three config fields (a top-level field or a dotted path such as lr.c) over lists of values; "
           "every combination is one replica run, cached like any run — a cell computed once (here, on another "
           "page, from the CLI or on a Ray cluster) is served again. Run them one after another in this process, "
           "on an embedded Ray on this machine, or on a Ray cluster.")

sb = st.sidebar
setting, base, base_config = ui.base_config("sw", "Base config", presets=True)

sb.divider()
fields = api.sweep_fields(base_config)
suggest = {"seed": "[0, 1, 2]", "batch_sizes": "[[2], [16], [64]]", "lr.c": "[0.05, 0.1, 0.2]",
           "optimizer.momentum": "[0, 0.5, 0.9]"}
grid: dict = {}
plain: dict = {}  # the values as typed (decimals as numbers), for the tables and charts
for i in range(3):
    c1, c2 = sb.columns([2, 3])
    field = c1.selectbox(f"Field {i + 1}", ["", *fields], index=1 + fields.index("seed") if i == 0 else 0,
                         key=f"sw_field{i}_{setting}")
    if not field:
        continue
    current = base_config.to_json()
    for part in field.split("."):
        current = current.get(part) if isinstance(current, dict) else None
    text = c2.text_input(f"Values {i + 1} (JSON list)", suggest.get(field, json.dumps([current])),
                         key=f"sw_values{i}_{setting}_{field}")
    try:
        grid[field] = api.loads(text)
        plain[field] = json.loads(text)
    except api.ConfigError as e:
        st.error(f"Values of {ui.user_text(field)}: {ui.user_text(e.message)}")
        st.stop()
try:
    spec = api.sweep_spec({"base": base, "grid": grid}, {"base": base, "grid": plain})
except api.ConfigError as e:
    st.error(f"Check the sweep — {ui.user_text(e)}")
    st.stop()
executor = ui.widgets.executor("sw")
try:
    est = api.sweep_estimate(spec, executor)
except api.ConfigError as e:
    st.error(f"Check the sweep — {ui.user_text(e)}")
    st.stop()

where = {"local": "in this process"}.get(executor.name, f"on Ray ({est['workers']} worker(s) at once)")
header = (f"**Sweep**: {est['cells']} cells ({est['cached']} cached) {where} — "
          f"{api.format_duration(est['seconds'])} of device time, "
          f"{api.format_duration(est['seconds_per_worker'])} per worker.")
key = json.dumps([spec.base, {f: [c.overrides[f] for c in spec.cells] for f in spec.fields}, executor.name,
                  st.session_state.get("sw_address")])
out = ui.job_panel("sw", key, header, lambda: (lambda progress, cancel: api.run_sweep(spec, executor, progress,
                                                                                        cancel)),
                   idle="Press Run: each cell is one replica run; cells already cached are instant.")
if out is None:
    st.stop()
results(out, spec.fields)
