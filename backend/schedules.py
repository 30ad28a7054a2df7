"""Batch-size schedules against constant batch sizes at the same sample budget, exactly (docs/theory.md §12).

A schedule [(b_1, s_1), …, (b_k, s_k)] spends N = Σ b_i s_i gradient evaluations in T = Σ s_i steps; a constant b
spends the same N in T_b = ⌊N / b⌋ steps. Both follow the config's learning-rate schedule α_t and optimizer (no
rescaling). The comparison is E L(w_T) of the schedule against E L(w_{T_b}) of each constant b — the exact moment
recursion of §1 (§9 with momentum; b varying with t as in §12) through the setting's ``theory`` — so it answers
exactly where the setting's theory is exact at every t (those with the advisor's exact hook: linear regression).
Written against the Setting protocol; the advisor (backend/advisor.py) re-exports it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backend import core, settings
from backend.errors import ConfigError
from backend.fields import MAX_STEPS, BatchSchedule, read_batch_schedule

DIVERGENCE_FACTOR = 1e6  # as the advisor's: diverged when E L is non-finite or above 10⁶ × L(w_0)


def _base(config) -> dict[str, Any]:
    """The config's JSON without its batches and steps (each comparison run sets its own)."""
    return {k: v for k, v in config.to_json().items() if k not in ("batch_sizes", "batch_schedule", "steps")}


def _schedule(config, schedule) -> BatchSchedule:
    if schedule is None:
        if getattr(config, "batch_schedule", None) is None:
            raise ConfigError("batch_schedule", "give a schedule [[b1, steps1], …] to compare")
        return config.batch_schedule
    return schedule if isinstance(schedule, BatchSchedule) else read_batch_schedule(schedule, config.n)


def _constant_bs(config, sched: BatchSchedule, batch_sizes) -> list[int]:
    bs = sorted({b for b, _ in sched.segments}) if batch_sizes is None else sorted({int(b) for b in batch_sizes})
    N = sched.samples()
    for b in bs:
        if not 1 <= b <= min(config.n, N):
            raise ConfigError("batch_sizes", f"constant batch size {b} is outside [1, min(n, N)] = [1, "
                                             f"{min(config.n, N)}] (N = {N} samples)")
        if N // b > MAX_STEPS:
            raise ConfigError("batch_schedule", f"its budget N = {N:,} samples is {N // b:,} steps at constant "
                                                f"b = {b}; the limit is {MAX_STEPS:,}")
    return bs


def compare_schedule(config, schedule=None, batch_sizes=None) -> dict[str, Any]:
    """The schedule (raw [[b, steps], …], a BatchSchedule, or None: the config's own) against constant b (default:
    each b of the schedule) at its budget N = Σ b_i s_i, exactly. Returns {"budget", "schedule", "steps",
    "loss" (E L(w_T) of the schedule), "loss_path" (E L along its t = 0..T), "constant": {b: {"steps": T_b,
    "loss", "diverged"}}, "best_constant_b", "schedule_better" (its loss below every constant b's that did not
    diverge), "loss_at_w0", "exact"}."""
    setting = settings.for_config(config)
    if not hasattr(setting, "advise") or not core.has_theory(config):
        raise ConfigError("setting", f"the schedule comparison is exact only; the setting {config.setting!r} has no "
                                     "exact theory at every step")
    sched = _schedule(config, schedule)
    bs = _constant_bs(config, sched, batch_sizes)
    base = _base(config)
    sched_cfg = type(config).parse({**base, "batch_schedule": sched.to_json()})
    loss_path = np.asarray(core.theory(sched_cfg)["curves"]["loss"][0], dtype=np.float64)
    N = sched.samples()
    steps = {b: N // b for b in bs}
    const_cfg = type(config).parse({**base, "batch_sizes": bs, "steps": max(steps.values())})
    const = np.asarray(core.theory(const_cfg)["curves"]["loss"], dtype=np.float64)
    loss0 = float(loss_path[0])

    def diverged(v: float) -> bool:
        return bool(not np.isfinite(v) or v > DIVERGENCE_FACTOR * loss0)

    rows = {str(b): {"steps": steps[b], "loss": _num(const[j, steps[b]]), "diverged": diverged(const[j, steps[b]])}
            for j, b in enumerate(bs)}
    ok = {b: r["loss"] for b, r in rows.items() if not r["diverged"]}
    best = min(ok, key=ok.get) if ok else None
    final = float(loss_path[-1])
    return {"setting": config.setting, "exact": True, "budget": N, "schedule": sched.to_json(), "steps": sched.steps,
            "loss": _num(final), "diverged": diverged(final), "loss_path": [_num(v) for v in loss_path],
            "loss_at_w0": loss0, "constant": rows, "best_constant_b": None if best is None else int(best),
            "schedule_better": (not diverged(final)) and all(final < v for v in ok.values())}


def _num(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None
