"""The Run panel (estimate first, then a background job with progress, ETA and Cancel) and the divergence notices."""

from __future__ import annotations

import streamlit as st

from backend import api, costs, jobs
from ui.state import user_text


NOT_CACHED = "The run was cancelled; nothing was cached."


def resumable_run(since: str) -> dict[str, str]:
    """run_panel's messages for a setting whose runs checkpoint in the cache (``since``: where a run resumes)."""
    return {"idle": f"Press Run. A cancelled run resumes from {since}.",
            "cancelled": f"The run was cancelled; Run resumes it from {since} (checkpoints in the cache)."}


RESUMABLE_RUN = resumable_run("its last completed epoch")  # the settings whose runs checkpoint every epoch


LOG_LINES = 12  # finished parts of a run listed under its progress bar (the latest)


def run_panel(prefix: str, config, what: str, idle: str | None = None, cancelled: str = NOT_CACHED) -> dict | None:
    """The Run form (estimate shown first), the background job with progress, ETA and Cancel; returns the result.
    ``idle`` and ``cancelled``: what the panel says before a run and after a cancelled one (see ``job_panel``)."""
    run_key = api.simulation_key(config)
    sim = st.session_state.get(f"{prefix}_results", {}).get(run_key) or api.cached_simulation(config)
    est = api.estimate(config)
    device = api.resolve_device(config.device)
    header = (f"**Replica run**: {what} — {costs.format_duration(costs.device_seconds(est, device))} and "
              f"{costs.format_bytes(est['memory_bytes'])} {costs.where(device, est['precision'])}"
              + (" (cached: instant)" if sim is not None else "") + ".")

    def start():
        api.guard(config, device)
        return lambda progress, cancel: api.simulate(config, progress, cancel)

    return job_panel(prefix, run_key, header, start, idle, cancelled, sim, blocked=api.missing_data(config))


def job_panel(prefix: str, key: str, header: str, start, idle: str | None = None, cancelled: str = NOT_CACHED,
              known: object | None = None, blocked: str | None = None) -> object | None:
    """A Run form under ``header``; Run calls ``start()`` (which may refuse with a ConfigError, shown) for the work
    ``work(progress, cancel)``, run in a background job with a progress bar, ETA and Cancel. Returns the job's result
    once it has finished (kept in the session, by ``key``), else ``known`` (a result found elsewhere, e.g. cached).

    One message for one state, under the form: running → the progress bar; cancelled → ``cancelled``; failed → the
    error; no result yet → ``idle`` (when given); a result → nothing (the caller draws it). A cancelled or failed run
    is said until the next Run or until the inputs change (``key``). ``blocked``: why no run can start here (data not
    installed): Run is disabled and that is the message."""
    job = st.session_state.get(f"{prefix}_job")
    with st.form(f"{prefix}_run"):
        st.write(header)
        run = st.form_submit_button("Run", type="primary", disabled=bool(job and job.running) or bool(blocked))
    if run and not (job and job.running) and not blocked:
        st.session_state.pop(f"{prefix}_outcome", None)
        try:
            job = jobs.start(key, start(), api.Progress(total=1))
            st.session_state[f"{prefix}_job"] = job
        except api.ConfigError as e:
            st.session_state[f"{prefix}_outcome"] = (key, "refused", user_text(e))

    @st.fragment(run_every=0.5)
    def show_progress() -> None:
        j = st.session_state.get(f"{prefix}_job")
        if j is None:
            return
        if j.running:
            eta = j.progress.eta_seconds
            left = f", {costs.format_duration(eta)} left" if eta is not None else ""
            st.progress(j.progress.fraction, text=f"Running… {100 * j.progress.fraction:.0f} %{left}")
            for line in j.progress.log[-LOG_LINES:]:  # the parts that finished (a sweep's cells), with the ETA
                st.caption(user_text(line))
            if j.progress.message:
                st.caption(user_text(j.progress.message))
            if st.button("Cancel run", key=f"{prefix}_cancel"):
                j.cancel.set()
        else:
            st.rerun()

    if job is not None and not job.running:
        if job.state == "done":
            st.session_state.setdefault(f"{prefix}_results", {})[job.key] = job.result
        else:
            st.session_state[f"{prefix}_outcome"] = (job.key, job.state, user_text(job.error))
        st.session_state[f"{prefix}_job"] = job = None
        st.rerun()  # the header above was written while the job ran: draw it again from what is cached now
    result = st.session_state.get(f"{prefix}_results", {}).get(key)
    result = known if result is None else result
    outcome = st.session_state.get(f"{prefix}_outcome")
    if job is not None:
        show_progress()
    elif blocked and result is None:
        st.warning(blocked)  # the setting's own words (no user input in them)
    elif outcome is not None and outcome[0] == key:
        if outcome[1] == "cancelled":
            st.warning(cancelled)
        elif outcome[1] == "refused":
            st.error(outcome[2])
        else:
            st.error(f"The run failed: {outcome[2]}")
    elif result is None and idle:
        st.info(idle)
    return result


def divergence_notice(config, sim: dict) -> None:
    """A warning per batch size whose replicas diverged (any setting: the one result shape's meta)."""
    meta = sim["meta"]
    for j, (b, at, cnt) in enumerate(zip(api.curve_keys(config), meta["diverged_at"], meta["diverged_replicas"])):
        if at is not None:
            st.warning(f"b = {b}: {cnt} replica(s) diverged (non-finite or exploding values), the first at step {at}. "
                       "From that step on, the estimates are conditional on the replicas that stayed finite "
                       f"({int(sim['finite_count'][j][-1]):,} at the end).")


def reduction_note(dims: list[int], simulated: list[int] | None) -> str:
    """One sentence when the engine ran on exactly reduced hidden widths (deep linear networks)."""
    if not simulated or simulated == dims:
        return ""
    return (f" Simulated on hidden widths {simulated[1:-1]} instead of {dims[1:-1]}: every SGD iterate stays in "
            "col(W_k⁰) + row(W_{k+1}⁰), so this is the same process in fewer coordinates (same variances and loss).")
