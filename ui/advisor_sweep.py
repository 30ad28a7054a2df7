"""The batch-size advisor for a setting without exact theory: one replica run per b and scaling rule — and per momentum
β along the momentum axis — (Run, with the estimate, progress and Cancel), drawn with standard errors; B_simple at the
end of training beside the best b."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from backend import api, charts, costs
from ui.advisor_view import frontier, momentum_view
from ui.run import job_panel
from ui.state import field_helpers, presets_and_upload, user_text, validated
from ui.widgets import batch_sizes, executor, momentum_axis


def _header(config, budget: int, rules: list[str], b_ref: float, runner, betas: int = 1) -> str:
    """The Run box's estimate: the sweep's cells (``betas`` momenta × rules × b), their summed time and largest
    memory, where they would run."""
    cells = api.sweep_cells(config, budget, tuple(rules), b_ref)
    ests = [api.estimate(c) for c in cells]
    device = api.resolve_device(config.device) if runner is None else None
    seconds = betas * sum(costs.device_seconds(e, device or runner.device(c)) for e, c in zip(ests, cells))
    axis = f"{betas} momenta × " if betas > 1 else ""
    return (f"**Sweep**: {betas * len(cells)} replica runs ({axis}{len(rules)} rule(s) × {len(config.batch_sizes)} "
            f"batch sizes) — {costs.format_duration(seconds)} and "
            f"{costs.format_bytes(max(e['memory_bytes'] for e in ests))} "
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
    momenta, effective_lr, axis = momentum_axis(prefix, "the step size")
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
        for beta in api.check_momenta(momenta) if axis else ():  # each β's config before Run: an Adam-family
            api.momentum_config(config, beta, effective_lr)         # optimizer or a bad β is one red line here
        header = _header(config, budget, rules, b_ref, runner, len(momenta) if axis else 1)
    except api.ConfigError as e:
        st.error(f"Check the inputs — {user_text(e)}")
        return
    key = json.dumps([config.to_json(), budget, rules, b_ref, target, runner is None, momenta, effective_lr])

    def work(progress, cancel):
        if axis:
            return api.advise_momentum(config, budget, momenta, tuple(rules), b_ref, target, effective_lr, progress,
                                       cancel, runner)
        return api.sweep(config, budget, tuple(rules), b_ref, target, progress, cancel, runner)

    result = job_panel(prefix, key, header, lambda: work,
                       idle="Press Run: every (rule, b" + (", β" if axis else "") + ") is one cached replica run of "
                            "the budget's length.")
    if result is None:
        return
    answers = result
    if axis:  # a log loss axis: the momenta's losses differ by orders of magnitude
        _, answers = momentum_view(
            result, rules, f"loss after N = {budget:,} samples", "Final loss against b, one line per β (95 % "
            "intervals of the replica estimates; ◇ best b of β, ★ best (b, β))"
            + (", α/(1 − β) fixed" if effective_lr else ""),
            "SGD with heavy-ball momentum β on every line, one replica run per (β, rule, b)"
            + (": each β runs with its step size times (1 − β), the same effective step α/(1 − β)." if effective_lr
               else ", the same step size for every β (tick α/(1 − β) fixed to compare at one effective step)."),
            "final loss", f"{prefix}_beta")
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
    st.download_button("Advice (JSON)", json.dumps(result, indent=2), "batchvar_advice.json", "application/json")

