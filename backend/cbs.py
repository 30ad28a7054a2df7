"""The critical batch size, by branching from checkpoints (docs/theory.md §11; Merrill et al. 2025).

The reference run is the config with batch B (its schedule and optimizer). At each checkpoint t_c its state branches
into batch k·B with the constant step size α_{t_c}·f(k) (f(k) = 1, √k, k for the scaling rules ``none``, ``sqrt``,
``linear``) for ⌊S/(kB)⌋ steps, the optimizer state carried over; the critical batch size at t_c is the largest k·B
whose branch loss is ≤ (1 + ε) × the k = 1 branch's loss (a diverged branch never qualifies). Beside it, McCandlish
et al.'s noise scales at t_c as ratios of expectations given F_0 — B_simple = E tr Σ / E‖∇L‖² and
B_noise = E tr(HΣ) / E ∇LᵀH∇L — and their one-step optimum ε_opt(b) = E‖∇L‖² / (E ∇LᵀH∇L + c_b E tr(HΣ)) with its
gain ½ (E‖∇L‖²)² / (E ∇LᵀH∇L + c_b E tr(HΣ)). Written against the Setting protocol: a setting with the hooks
``branches`` and ``branch_bounds`` answers exactly (linear regression: the exact distribution of the state branches).
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np

from backend import settings
from backend.advisor import DIVERGENCE_FACTOR, SCALINGS
from backend.errors import ConfigError
from backend.progress import as_progress

DEFAULT_TOLERANCE = 0.01
MAX_STEPS = 100_000  # the longest branch S / B may ask for (≈ 10–30 s of the lanes' recursion on 2 cores)


def _whole(value: Any, option: str, low: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(option, f"expected {what}, got {value!r}")
    return int(value)


def check_request(config, b_ref: Any, checkpoints: Any, samples: Any, scalings: Sequence[str], tolerance: Any,
                  ks: Any) -> tuple[int, list[int], int, float, list[int]]:
    """The inputs validated at the boundary (a ConfigError naming the option); ``ks`` None: powers of two while
    k·B ≤ n. Returns (B, checkpoints sorted without repeats, S, ε, ks), ks sorted with k = 1 first (the branch the
    rule compares with)."""
    setting = settings.for_config(config)
    if not hasattr(setting, "branches") and not hasattr(setting, "replica_branches"):
        raise ConfigError("setting", f"cbs branches exactly where a setting has exact theory and from replicas where "
                                     f"it has the replica hook; the setting {config.setting!r} has neither")
    bounds = setting.branch_bounds(config)
    b_ref = _whole(b_ref, "b_ref", 1, "a whole number ≥ 1")
    if bounds["max_b"] is not None and b_ref > bounds["max_b"]:
        raise ConfigError("b_ref", f"expected a batch size in [1, {bounds['max_b']}] (the n of the data), got {b_ref}")
    if isinstance(checkpoints, (str, bytes)) or not len(checkpoints):
        raise ConfigError("checkpoints", f"expected a non-empty list of steps, got {checkpoints!r}")
    max_t = bounds["max_t"](b_ref) if callable(bounds["max_t"]) else bounds["max_t"]  # per B: epochs × ⌊n/B⌋
    cps = sorted({_whole(t, "checkpoints", 0, f"steps in [0, {max_t}]") for t in checkpoints})
    if max(cps) > max_t:
        raise ConfigError("checkpoints", f"expected steps in [0, {max_t}] (the config's steps at b_ref = {b_ref}), "
                                         f"got {max(cps)}")
    samples = _whole(samples, "samples", b_ref, f"a whole number of samples ≥ b_ref = {b_ref}")
    if samples // b_ref > MAX_STEPS:
        raise ConfigError("samples", f"{samples} samples at b_ref = {b_ref} are {samples // b_ref} steps; the limit "
                                     f"is {MAX_STEPS}")
    for s in scalings:
        if s not in SCALINGS:
            raise ConfigError("scaling", f"expected one of {list(SCALINGS)}, got {s!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.integer, np.floating)) \
            or not np.isfinite(tolerance) or tolerance <= 0:
        raise ConfigError("tolerance", f"expected a positive number, got {tolerance!r}")
    if ks is None:
        limit = bounds["n"] // b_ref
        ks = [2 ** j for j in range(int(np.log2(limit)) + 1)] if limit >= 1 else [1]
    if isinstance(ks, (str, bytes)) or not len(ks):
        raise ConfigError("ks", f"expected a non-empty list of whole numbers ≥ 1, got {ks!r}")
    ks = sorted({1, *(_whole(k, "ks", 1, "whole numbers ≥ 1") for k in ks)})
    if bounds["max_b"] is not None and ks[-1] * b_ref > bounds["max_b"]:
        raise ConfigError("ks", f"k·b_ref = {ks[-1] * b_ref} exceeds the n = {bounds['max_b']} of the data")
    return b_ref, cps, samples, float(tolerance), ks


def cbs(config, b_ref: int, checkpoints: Sequence[int], samples: int, scaling: str = "none",
        tolerance: float = DEFAULT_TOLERANCE, ks: Sequence[int] | None = None, cache=None, executor=None,
        progress=None) -> dict[str, Any]:
    """The CLI's ``cbs`` document for one scaling rule (module doc; docs/theory.md §11)."""
    return cbs_rules(config, b_ref, checkpoints, samples, (scaling,), tolerance, ks, cache, executor,
                     progress)[scaling]


def cbs_rules(config, b_ref: int, checkpoints: Sequence[int], samples: int, scalings: Sequence[str] = tuple(SCALINGS),
              tolerance: float = DEFAULT_TOLERANCE, ks: Sequence[int] | None = None, cache=None, executor=None,
              progress=None, cancel: threading.Event | None = None) -> dict[str, dict[str, Any]]:
    """``cbs`` for several scaling rules in one pass (one lane per rule, checkpoint and k): {scaling: document}.
    Exact where the setting has ``branches``; else its ``replica_branches`` (every replica's state continues; cached
    in ``cache``, the default cache when None). ``executor`` (a sweep executor, backend/sweep.py): the local one (or
    None) computes here; one with ``run_cbs`` (Ray: backend/cluster.py) runs the whole replica request as one task on
    the device it would use and writes its cache entries here first. ``progress`` (a backend/progress.py Progress
    or a callable taking each increment): the replica runs' steps — the reference run's and every branch's — set
    its total and advance it (finished on a cache hit); the exact branches finish it at once. ``cancel`` (an Event):
    once set, the replica runs stop at their next step (here, or the Ray task is cancelled) and raise Cancelled;
    nothing of the cancelled request is cached, what finished before it stays."""
    if isinstance(scalings, str) or not len(scalings):
        raise ConfigError("scaling", f"expected a non-empty list of scaling rules from {list(SCALINGS)}, "
                                     f"got {scalings!r}")
    setting, b_ref, cps, samples, tolerance, bs, factors, steps = _plan(config, b_ref, checkpoints, samples, scalings,
                                                                        tolerance, ks)
    progress = as_progress(progress)
    if cancel is not None:  # every step of the replica runs advances it: they stop at the next one
        progress.cancel = cancel
        progress.check_cancel()
    if hasattr(setting, "branches"):
        res = setting.branches(config, b_ref, cps, bs, factors, steps)
        progress.finish()
    else:
        from backend import core

        device = executor.device(config) if executor is not None else core.resolve_device(config.device)
        _guard(config, setting, b_ref, cps, bs, factors, steps, device)
        cache = core.or_default(cache)
        if hasattr(executor, "run_cbs"):  # elsewhere, into this cache (a worker's other code or config: refused)
            request = {"b_ref": b_ref, "checkpoints": cps, "samples": samples, "scalings": list(scalings),
                       "tolerance": tolerance, "ks": [int(b) // b_ref for b in bs]}
            executor.run_cbs(config, request, cache, progress)  # the task's steps advance ``progress``
        res = setting.replica_branches(config, b_ref, cps, bs, factors, steps, device, cache, progress)
    return {s: _document(config, b_ref, cps, samples, s, tolerance, bs, steps, r, res) for r, s in enumerate(scalings)}


def _plan(config, b_ref, checkpoints, samples, scalings, tolerance, ks):
    """The validated request as the hooks take it: (setting, B, checkpoints, S, ε, bs = k·B, factors f(k) (rules, K),
    steps ⌊S/(kB)⌋)."""
    b_ref, cps, samples, tolerance, ks = check_request(config, b_ref, checkpoints, samples, scalings, tolerance, ks)
    k = np.asarray(ks, dtype=np.float64)
    bs = (k * b_ref).astype(np.int64)
    factors = np.stack([k ** SCALINGS[s] for s in scalings])
    return settings.for_config(config), b_ref, cps, samples, tolerance, bs, factors, samples // bs


def _guard(config, setting, b_ref, cps, bs, factors, steps, device) -> dict[str, Any]:
    """The run core's guard (backend/core.py guard_estimate) on the replica branches' estimate: one hour at most."""
    from backend import core

    est = {**setting.branch_estimate(config, b_ref, cps, bs, factors, steps), "setting": config.setting,
           "precision": getattr(config, "precision", "float32"), "gpu_model": setting.GPU_MODEL}
    return core.guard_estimate(est, device, core.MAX_SIM_SECONDS,
                               "replicas, checkpoints, samples or the number of k's or scaling rules")


def estimate(config, b_ref: Any, checkpoints: Any, samples: Any, scalings: Sequence[str] = ("none",),
             ks: Any = None) -> dict[str, Any] | None:
    """What ``cbs_rules`` with these inputs would cost, before it runs: None where the setting branches exactly
    (instant), else the replica branches' estimate on the config's device (``memory_bytes``, ``seconds`` on that
    device, ``flops``, ``steps``) — a TooExpensive (a ConfigError naming ``replicas``) when the guard refuses it."""
    setting, b_ref, cps, _, _, bs, factors, steps = _plan(config, b_ref, checkpoints, samples, scalings,
                                                          DEFAULT_TOLERANCE, ks)
    if hasattr(setting, "branches"):
        return None
    from backend import core

    return _guard(config, setting, b_ref, cps, bs, factors, steps, core.resolve_device(config.device))


def one_step_optimum(moments: dict[str, np.ndarray], c_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """McCandlish et al.'s ε_opt(b) = E‖G‖² / (E GᵀHG + c_b E tr(HΣ)) and the gain ½ (E‖G‖²)² / (same), G = ∇L:
    the minimiser and the decrease of E L after one plain SGD step of batch b (docs/theory.md §11). Arrays (C, K)."""
    denom = moments["h_grad2"][:, None] + c_b[None, :] * moments["h_trace"][:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return moments["grad2"][:, None] / denom, 0.5 * moments["grad2"][:, None] ** 2 / denom


def critical_batch(bs: np.ndarray, loss: np.ndarray, diverged: np.ndarray, tolerance: float) -> int | None:
    """The largest b whose loss ≤ (1 + ε) × the first (k = 1) branch's; diverged branches never qualify (None when
    the k = 1 branch diverged)."""
    if diverged[0]:
        return None
    ok = ~diverged & (loss <= (1 + tolerance) * loss[0])
    return int(bs[np.flatnonzero(ok)[-1]])


def _document(config, b_ref, cps, samples, scaling, tolerance, bs, steps, r, res) -> dict[str, Any]:
    eps, gain = one_step_optimum(res, res["noise_factor"])
    with np.errstate(divide="ignore", invalid="ignore"):
        b_simple, b_noise = res["trace"] / res["grad2"], res["h_trace"] / res["h_grad2"]
    rows = []
    for i, t in enumerate(cps):
        loss = res["branch_loss"][r, i]
        diverged = ~np.isfinite(loss) | (loss > res["loss0"] * DIVERGENCE_FACTOR)
        if not res["exact"]:  # a replica that diverged makes the branch's E L unbounded
            diverged = diverged | (res["diverged_replicas"][r, i] > 0)
        branches = {str(b): {"steps": int(steps[j]), "lr": float(res["lr"][r, i, j]), "loss": _num(loss[j]),
                             "diverged": bool(diverged[j])} for j, b in enumerate(bs)}
        rows.append({"t": int(t), "loss": _num(res["loss"][i]), "b_simple": _num(b_simple[i]),
                     "b_noise": _num(b_noise[i]),
                     "step_opt": {str(b): _num(eps[i, j]) for j, b in enumerate(bs)},
                     "step_gain": {str(b): _num(gain[i, j]) for j, b in enumerate(bs)},
                     "branches": branches, "cbs": critical_batch(bs, loss, diverged, tolerance)})
        if not res["exact"]:
            _replica_fields(rows[-1], res, r, i, bs)
    doc = {"setting": config.setting, "b_ref": b_ref, "samples": samples, "scaling": scaling,
           "tolerance": tolerance, "exact": bool(res["exact"]), "checkpoints": rows}
    if not res["exact"]:
        doc.update(replicas=int(res["replicas"]), noise_samples=int(res["noise_samples"]))
        if "b_noise_note" in res:  # no Hessian-vector products for this model: b_noise and the one-step optimum null
            doc["b_noise_note"] = res["b_noise_note"]
    return doc


def _replica_fields(row: dict[str, Any], res: dict[str, Any], r: int, i: int, bs: np.ndarray) -> None:
    """The SEs of a replica estimate beside each value of checkpoint ``i``'s row (rule ``r``), and each branch's
    count of diverged replicas (the branch loss is the mean over the others; any makes the branch diverged)."""
    row.update(loss_se=_num(res["loss_se"][i]), b_simple_se=_num(res["b_simple_se"][i]),
               b_noise_se=_num(res["b_noise_se"][i]),
               step_opt_se={str(b): _num(res["step_opt_se"][i, j]) for j, b in enumerate(bs)},
               step_gain_se={str(b): _num(res["step_gain_se"][i, j]) for j, b in enumerate(bs)})
    for j, b in enumerate(bs):
        row["branches"][str(b)].update(loss_se=_num(res["branch_loss_se"][r, i, j]),
                                       diverged_replicas=int(res["diverged_replicas"][r, i, j]))


def _num(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def read_ints(text: str | None, option: str) -> list[int] | None:
    """A comma-separated list of whole numbers as typed (CLI options, page fields); None or blank stays None; a
    ConfigError naming the option otherwise."""
    if text is None or not str(text).strip():
        return None
    out = []
    for part in str(text).split(","):
        try:
            out.append(int(part.strip()))
        except ValueError:
            raise ConfigError(option, f"expected comma-separated whole numbers, got {part.strip()!r}") from None
    return out


def replica_setting(config) -> bool:
    """Whether the config's setting branches from its replicas (the ``replica_branches`` hook)."""
    return hasattr(settings.for_config(config), "replica_branches")


def exact_settings() -> list[str]:
    """The registered settings whose critical batch size is exact (they have the ``branches`` hook)."""
    return [name for name, module in settings.SETTINGS.items() if hasattr(module, "branches")]


def table(docs: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per (rule, checkpoint, branch) of ``cbs_rules``' documents: the long table the page shows and the
    CSV download carries; replica documents add each estimate's SE (``loss_se``, …) and the diverged replicas."""
    out = []
    for rule, doc in docs.items():
        for row in doc["checkpoints"]:
            for b, br in row["branches"].items():
                line = {"rule": rule, "t": row["t"], "b": int(b), "steps": br["steps"], "lr": br["lr"],
                        "loss": br["loss"], "diverged": br["diverged"], "cbs": row["cbs"], "loss_at_t": row["loss"],
                        "b_simple": row["b_simple"], "b_noise": row["b_noise"], "step_opt": row["step_opt"][b],
                        "step_gain": row["step_gain"][b]}
                if not doc["exact"]:
                    line.update(loss_se=br["loss_se"], diverged_replicas=br["diverged_replicas"],
                                loss_at_t_se=row["loss_se"], b_simple_se=row["b_simple_se"],
                                b_noise_se=row["b_noise_se"], step_opt_se=row["step_opt_se"][b],
                                step_gain_se=row["step_gain_se"][b])
                out.append(line)
    return out


def max_checkpoint(config, b_ref: int) -> int:
    """The last step a checkpoint may be at with reference batch ``b_ref`` (the config's steps; the MLP's
    epochs × ⌊n/B⌋)."""
    bounds = settings.for_config(config).branch_bounds(config)
    return int(bounds["max_t"](b_ref) if callable(bounds["max_t"]) else bounds["max_t"])
