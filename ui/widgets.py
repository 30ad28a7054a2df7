"""Sidebar widgets that several setting pages share: the learning-rate schedule, the batch sizes, replicas and seed.

Each takes the page's ``d`` (field → starting value) and ``k`` (widget key) from ui.state.field_helpers and returns
raw config values; validation happens once, in ui.state.validated."""

from __future__ import annotations

from typing import Any, Callable

import streamlit as st

from backend import api
from ui.state import user_text
from ui.optimizer import optimizer  # noqa: F401  (the shared optimizer widget: ui/optimizer.py)


def within(field: str, value, lo, hi):
    """A widget's starting value from the config (a link, a preset or a file): itself when the widget's range
    [lo, hi] holds it, else the nearest bound, with a one-line warning naming the field and the limit (a value the
    page cannot show is never changed silently)."""
    if lo <= value <= hi:
        return value
    bound, side = (hi, "at most") if value > hi else (lo, "at least")
    st.warning(f"{field} = {value:,} is beyond this page's limit ({side} {bound:,}): the page starts at {bound:,}. "
               "The CLI (python -m backend) runs the config as it is.")
    return bound


def number(container, label: str, field: str, value, lo, hi, **kwargs):
    """A number input over [lo, hi] that starts from the config's ``field`` value (``within``)."""
    return container.number_input(label, lo, hi, within(field, value, lo, hi), **kwargs)


def slider(container, label: str, field: str, value, lo, hi, **kwargs):
    """A slider over [lo, hi] that starts from the config's ``field`` value (``within``)."""
    return container.slider(label, lo, hi, within(field, value, lo, hi), **kwargs)


SCHEDULE_HELP = "constant: α_t = c; inverse: α_t = c/(t+1); inverse_offset: α_t = c/(t+1+t0)"


def schedule(d: Callable[[str], Any], k: Callable[[str], str], c_label: str = "c", help: str = SCHEDULE_HELP,
             default: str = "inverse", default_c: str = "1/2") -> dict:
    """The ``lr`` field: schedule, its constant c (exact strings such as 1/2 allowed) and t0 when it needs one."""
    sb = st.sidebar
    lr0 = d("lr") if isinstance(d("lr"), dict) else {"schedule": "constant", "c": d("lr")}
    c1, c2 = sb.columns(2)
    name = c1.selectbox("Schedule", api.SCHEDULES, index=api.SCHEDULES.index(lr0.get("schedule", default)),
                        key=k("sched"), help=help)
    lr: dict = {"schedule": name, "c": c2.text_input(c_label, str(lr0.get("c", default_c)), key=k("c"))}
    if name == "inverse_offset":
        lr["t0"] = sb.number_input("t0", 0, 10**9, int(lr0.get("t0", 0)), key=k("t0"))
    return lr


def batch_sizes(d: Callable[[str], Any], k: Callable[[str], str], options) -> list[int]:
    """The ``batch_sizes`` field: a multiselect over ``options`` and the config's own batch sizes."""
    choices = sorted(set(options) | set(d("batch_sizes")))
    return st.sidebar.multiselect("Batch sizes b", choices, default=list(d("batch_sizes")), key=k("bs")) or []


def batch_schedule(raw0: dict, k: Callable[[str], str]) -> list[list[int]] | None:
    """The optional ``batch_schedule`` field (docs/theory.md §12) of a setting run in SGD steps, as text b:steps,
    b:steps (a loaded config's schedule shown so); None when empty. Text that is not such pairs is one error line
    naming the field (the page stops); the pairs themselves are validated by the config like any field."""
    sched0 = raw0.get("batch_schedule")
    text = st.sidebar.text_input(
        "Batch-size schedule (optional)", ", ".join(f"{s[0]}:{s[1]}" for s in sched0)
        if isinstance(sched0, list) and all(isinstance(s, list) and len(s) == 2 for s in sched0) else "",
        key=k("bsched"), placeholder="b:steps, b:steps — e.g. 8:50, 64:150",
        help="b_i for steps_i steps, in order (docs/theory.md §12): one curve, 'schedule', in place of the batch "
             "sizes, with T = Σ steps_i in place of the iterations above. Leave empty for constant batch sizes.")
    if not text.strip():
        return None
    try:
        return api.parse_batch_schedule_text(text)
    except api.ConfigError as e:
        st.error(f"Check the inputs — {user_text(e)}")
        st.stop()


def with_batch_schedule(raw: dict, schedule: list[list[int]] | None) -> dict:
    """The page's raw config with the schedule (``batch_schedule``'s value) in place of batch_sizes and steps;
    ``raw`` itself when there is none."""
    if schedule is None:
        return raw
    return {**{f: v for f, v in raw.items() if f not in ("batch_sizes", "steps")}, "batch_schedule": schedule}


def replicas_and_seed(d: Callable[[str], Any], k: Callable[[str], str]) -> tuple[int, int]:
    """The ``replicas`` and ``seed`` fields of the settings without initial-weight groups."""
    c1, c2 = st.sidebar.columns(2)
    replicas = c1.number_input("Replicas", api.MIN_REPLICAS, api.MAX_REPLICAS, int(d("replicas")), step=100,
                               key=k("R"))
    return replicas, c2.number_input("Seed", 0, 2**32 - 1, int(d("seed")), key=k("seed"))


def precision(d: Callable[[str], Any], k: Callable[[str], str]) -> str:
    """The ``precision`` field of the replica classifiers (forward and backward arithmetic)."""
    return st.sidebar.selectbox(
        "Precision", api.PRECISIONS, index=api.PRECISIONS.index(d("precision")), key=k("precision"),
        help="float32: as is. bf16: autocast forward/backward in bfloat16, float32 weights, statistics in float64. "
             "tf32: TF32 tensor cores for CUDA matrix products (a CPU has none: float32 there). On a GPU bf16 "
             "trains the MLP fastest (paper preset on an H100: 2.0 s per epoch with its statistics, float32 3.4 s); "
             "the variance estimates agree with float32's within their standard errors (tested).")


EXECUTORS = {"this process": "local", "embedded Ray (127.0.0.1)": "ray", "a Ray cluster": "ray"}


def executor(prefix: str):
    """Where replica runs go (Sweeps page, advisor): this process, an embedded Ray on 127.0.0.1, or a Ray cluster's
    address. Returns the executor (connecting to Ray when chosen: a spinner, an error box and stop on failure)."""
    choice = st.sidebar.radio("Run on", list(EXECUTORS), key=f"{prefix}_exec",
                              help="this process: one run after another; Ray: one task per run, in parallel")
    address = None
    if choice == "a Ray cluster":
        address = st.sidebar.text_input("Ray address (HEAD_IP:6379)", key=f"{prefix}_address")
        if not address:
            st.info("Give the Ray cluster's address.")
            st.stop()
    try:
        with st.spinner("Connecting to Ray…"):
            return api.sweep_executor(EXECUTORS[choice], address)
    except api.ConfigError as e:
        st.error(f"Check the inputs — {user_text(e)}")
    except (RuntimeError, ConnectionError) as e:
        st.error(f"Ray: {user_text(e)}")
    st.stop()


def momentum_axis(prefix: str, c_name: str = "c") -> tuple[list[str], bool, bool]:
    """The advisor's momentum axis (both advisor views): the momenta β as typed (comma-separated; "9/10" stays
    exact) and whether α/(1 − β) is held fixed (``c_name``, the step size scaled by 1 − β). Returns (momenta,
    effective_lr, axis); axis is False for β = 0 alone without the effective rate — the plain advisor, unchanged."""
    sb = st.sidebar
    momenta = [part.strip() for part in sb.text_input(
        "Momenta β (comma-separated)", "0", key=f"{prefix}_momenta",
        help="heavy ball β per line, e.g. 0, 0.5, 0.9, 0.99 (each in [0, 1); 9/10 stays exact): one line per β, the "
             "best b of each β and the best (b, β) of each rule (python -m backend advise --momentum …)").split(",")]
    effective_lr = sb.checkbox("Effective learning rate α/(1−β) fixed", False, key=f"{prefix}_effective_lr",
                               help=f"each β runs with {c_name}·(1 − β), so α/(1 − β) is the same for every β "
                                    "(--effective-lr)")
    return momenta, effective_lr, effective_lr or momenta != ["0"]
