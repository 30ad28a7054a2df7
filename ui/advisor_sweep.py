"""The batch-size advisor for a setting without exact theory: one replica run per b and scaling rule (Run, with the
estimate, progress and Cancel), drawn with standard errors; B_simple at the end of training beside the best b."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from backend import api, charts, costs
from ui.advisor_view import frontier
from ui.run import job_panel
from ui.state import field_helpers, presets_and_upload, user_text, validated
from ui.widgets import batch_sizes, executor


def _header(config, budget: int, rules: list[str], b_ref: float, runner) -> str:
    """The Run box's estimate: the sweep's cells, their summed time and largest memory, where they would run."""
    cells = api.sweep_cells(config, budget, tuple(rules), b_ref)
    ests = [api.estimate(c) for c in cells]
    device = api.resolve_device(config.device) if runner is None else None
    seconds = sum(costs.device_seconds(e, device or runner.device(c)) for e, c in zip(ests, cells))
    return (f"**Sweep**: {len(cells)} replica runs ({len(rules)} rule(s) × {len(config.batch_sizes)} batch sizes) — "
            f"{costs.format_duration(seconds)} and {costs.format_bytes(max(e['memory_bytes'] for e in ests))} "
            + (costs.where(device) if runner is None else f"of device time on Ray ({runner.workers([])} at once)")
            + "; runs already cached are instant.")


def show(setting: str) -> None:
    prefix = f"advs_{setting}"
    raw0, d, k = field_helpers(prefix, setting)
    presets_and_upload(prefix, setting)
    if "batch_schedule" in raw0:  # the page's b axis replaces it (the backend refuses one: advisor.SCHEDULE_REFUSED)
        raw0 = {key: v for key, v in raw0.items() if key not in ("batch_schedule", "steps")}
        st.caption("The loaded config's batch_schedule is not used: the advisor's b axis replaces it (each b below "
                   "runs at constant b for ⌊N/b⌋ steps).")
    sb = st.sidebar
    bs = batch_sizes(d, k, [1, 2, 4, 8, 16, 32, 64, 128, 256])
    config = validated({**api.defaults(setting), **raw0, "setting": setting, "batch_sizes": bs}, remember=False)
    budget = int(sb.number_input("Budget N (samples)", min(config.batch_sizes), 10**9,
                                 max(min(config.batch_sizes), 64 * max(config.batch_sizes)), key=f"{prefix}_budget"))
    rules = sb.multiselect("Scaling rules", list(api.SCALINGS), default=["none"], key=f"{prefix}_rules")
    b_ref = sb.number_input("b_ref", 1, 10**6, int(min(config.batch_sizes)), key=f"{prefix}_bref")
    use_target = sb.checkbox("Target loss", False, key=f"{prefix}_use_target")
    target = sb.number_input("target loss", 0.0, 1e9, 0.5, format="%.6g", key=f"{prefix}_target") if use_target else None
    if not rules:
        st.info("Pick at least one scaling rule.")
        return
    runner = executor(prefix)
    runner = None if runner.name == "local" else runner  # local: through the API, progress per step
    try:  # every cell validated and guarded before Run (as the replica check): the b that fit run, the others named
        plan = api.replica_plan(config, budget, tuple(rules), b_ref, runner)
        for why in plan["refused"].values():
            st.caption(user_text(why) + " — lower the budget to run it.")
        if not plan["seconds"]:
            st.warning("No batch size fits at this budget: lower the budget or pick other batch sizes.")
            return
        config = config.replace(batch_sizes=list(plan["seconds"]))
        header = _header(config, budget, rules, b_ref, runner)
    except api.ConfigError as e:
        st.error(f"Check the inputs — {user_text(e)}")
        return
    key = json.dumps([config.to_json(), budget, rules, b_ref, target, runner is None])
    answers = job_panel(prefix, key, header,
                        lambda: (lambda progress, cancel: api.sweep(config, budget, tuple(rules), b_ref, target,
                                                                     progress, cancel, runner)),
                        idle="Press Run: every (rule, b) is one cached replica run of the budget's length.")
    if answers is None:
        return
    rows = [{"rule": r, "b": int(b), **{q: row.get(q) for q in ("steps", "loss", "loss_se", "var_g", "var_g_se",
                                                                  "b_simple", "diverged")},
             "lo": row["loss"] - 1.96 * row["loss_se"] if row["loss"] is not None and row["loss_se"] else None,
             "hi": row["loss"] + 1.96 * row["loss_se"] if row["loss"] is not None and row["loss_se"] else None}
            for r, ans in answers.items() for b, row in ans["curves"].items()]
    table = pd.DataFrame(rows)
    for col, (rule, ans) in zip(st.columns(len(answers)), answers.items()):
        col.metric(f"best b ({rule})", "none" if ans["best_b"] is None else str(ans["best_b"]))
    st.altair_chart(charts.advisor_chart(answers, f"loss after N = {budget:,} samples",
                                         "Final loss against b (95 % intervals of the replica estimates; ◇ best b)",
                                         log=False), width="stretch")
    st.dataframe(table.drop(columns=["lo", "hi"]), hide_index=True)
    if target is not None:
        frontier(answers, "within its budget (the run's recorded steps)")
    if table["b_simple"].notna().any():
        st.altair_chart(charts.advisor_b_simple_chart(answers), width="stretch")
        st.caption("b_simple: the gradient noise scale B_simple = tr Σ / ‖∇L‖² measured at the end of training, to set "
                   "beside the best b (McCandlish et al.'s critical batch size).")
    st.download_button("Advice (JSON)", json.dumps(answers, indent=2), "batchvar_advice.json", "application/json")
