"""The batch-size advisor: which b for a budget of N gradient evaluations (docs/theory.md §7).

For each b of the config: T_b = ⌊N / b⌋ steps, the schedule's constant scaled as c_b = c · (b / b_ref)^k (k = 0, ½, 1
for the scaling rules ``none``, ``sqrt``, ``linear``; the schedule's shape is the config's), and the quantities at
t = T_b. Written once, for every setting, against the Setting protocol: a setting with ``advise`` answers exactly
(linear regression); one with ``advise_cell`` (the config of the run for one b), ``ADVISOR_QUANTITIES`` and
``advisor_steps`` answers from a sweep of replica runs over b — one cached ``simulate`` per b, run here one after
another — with standard errors.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backend import core, settings
from backend.errors import ConfigError
from backend.exact import parse_number
from backend.optim import optimizer_of
from backend.progress import Progress, as_progress
from backend.schedules import compare_schedule  # noqa: F401  (a batch-size schedule against constant b, exactly)

SCALINGS = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}
DIVERGENCE_FACTOR = 1e6  # a b diverges when its expected loss is non-finite or above the loss at w0 times this
TARGET_HORIZON = 2  # steps_to_target is searched up to TARGET_HORIZON × T_b steps for each b
MAX_STEPS = 2_000_000  # the longest run a budget may ask for (N / smallest b)
GRID_POINTS = 60  # points of the noise-scale curve along t
# the advisor's b axis (each b of batch_sizes at constant b for ⌊N / b⌋ steps) replaces a batch-size schedule: a config
# carrying one is refused by every entry point, for every setting, in this one line (docs/theory.md §7, §12)
SCHEDULE_REFUSED = ("the advisor runs each b of batch_sizes at constant b for ⌊N/b⌋ steps, which replaces a "
                    "batch-size schedule: give batch_sizes instead of a batch_schedule (compare_schedule compares a "
                    "schedule against constant b)")


def refuse_schedule(config) -> None:
    """A config with a batch_schedule is refused in one line naming the field (SCHEDULE_REFUSED)."""
    if getattr(config, "batch_schedule", None) is not None:
        raise ConfigError("batch_schedule", SCHEDULE_REFUSED)


def check_request(config, budget: Any, scaling: Any, b_ref: Any, target_loss: Any) -> tuple[int, str, float, float | None]:
    """The advisor's inputs, validated at the boundary (a ConfigError naming the option; a config with a
    batch_schedule is refused: ``refuse_schedule``)."""
    setting = settings.for_config(config)
    refuse_schedule(config)
    if not (hasattr(setting, "advise") or hasattr(setting, "advise_cell")):
        raise ConfigError("setting", f"the batch-size advisor cannot run the setting {config.setting!r}")
    b_min = min(config.batch_sizes)
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < b_min:
        raise ConfigError("budget", f"expected a whole number of samples ≥ the smallest batch size {b_min}, "
                                    f"got {budget!r}")
    if budget // b_min > MAX_STEPS:
        raise ConfigError("budget", f"{budget} samples at b = {b_min} are {budget // b_min} steps; the limit is "
                                    f"{MAX_STEPS}")
    if scaling not in SCALINGS:
        raise ConfigError("scaling", f"expected one of {list(SCALINGS)}, got {scaling!r}")
    b_ref = b_min if b_ref is None else b_ref
    if isinstance(b_ref, bool) or not isinstance(b_ref, (int, float, np.integer, np.floating)) or not b_ref > 0 \
            or not np.isfinite(b_ref):
        raise ConfigError("b_ref", f"expected a positive number, got {b_ref!r}")
    if target_loss is not None and (isinstance(target_loss, bool) or not isinstance(target_loss, (int, float))
                                    or not np.isfinite(target_loss) or target_loss < 0):
        raise ConfigError("target_loss", f"expected a non-negative number, got {target_loss!r}")
    return int(budget), scaling, float(b_ref), None if target_loss is None else float(target_loss)


def check_scalings(scalings) -> None:
    """At least one scaling rule is asked for (each is validated by check_request)."""
    if isinstance(scalings, str) or not len(scalings):
        raise ConfigError("scaling", f"expected a non-empty list of scaling rules from {list(SCALINGS)}, "
                                     f"got {scalings!r}")


def advise(config, budget: int, scaling: str = "none", b_ref: float | None = None,
           target_loss: float | None = None, progress=None, cancel=None, executor=None) -> dict[str, Any]:
    """The advisor's answer (the CLI's ``advise`` output; see the module doc and docs/theory.md §7)."""
    return advise_rules(config, budget, (scaling,), b_ref, target_loss, progress, cancel, executor)[scaling]


def advise_rules(config, budget: int, scalings=tuple(SCALINGS), b_ref: float | None = None,
                 target_loss: float | None = None, progress=None, cancel=None, executor=None
                 ) -> dict[str, dict[str, Any]]:
    """``advise`` for several scaling rules in one pass (one lane per rule and b): {scaling: answer}. ``executor``
    (a sweep executor) runs the replica cells of a setting without exact theory (``sweep``)."""
    check_scalings(scalings)
    for scaling in scalings:
        budget, _, b_ref_checked, target_loss = check_request(config, budget, scaling, b_ref, target_loss)
    b_ref = b_ref_checked
    if not hasattr(settings.for_config(config), "advise"):
        return sweep(config, budget, scalings, b_ref, target_loss, progress, cancel, executor)
    bs = np.asarray(config.batch_sizes)
    steps = budget // bs
    lr_c = np.concatenate([float(config.lr.c) * (bs / b_ref) ** SCALINGS[s] for s in scalings])
    grid = np.unique(np.round(np.geomspace(1, steps.max(), GRID_POINTS)).astype(int)) if steps.max() else [0]
    grid = np.unique(np.concatenate([[0], grid]))
    lanes = np.tile(steps, len(scalings))
    horizon = lanes * TARGET_HORIZON if target_loss is not None else lanes
    res = settings.for_config(config).advise(config, np.tile(bs, len(scalings)), lanes, lr_c, horizon, target_loss, grid)
    B = len(bs)
    return {s: _answer(config, budget, s, b_ref, target_loss, steps, lr_c[i * B:(i + 1) * B], horizon[i * B:(i + 1) * B],
                       grid, {k: (v[i * B:(i + 1) * B] if isinstance(v, np.ndarray) else v) for k, v in res.items()})
            for i, s in enumerate(scalings)}


def _answer(config, budget, scaling, b_ref, target_loss, steps, lr_c, horizon, grid, res) -> dict[str, Any]:
    bs = np.asarray(config.batch_sizes)
    loss0 = res["loss0"]
    # |·|: a blown-up recursion's float loss can come out hugely negative (cancellation) before it overflows
    diverged = ~np.isfinite(res["loss"]) | (np.abs(res["loss"]) > loss0 * DIVERGENCE_FACTOR)
    ok = np.flatnonzero(~diverged)
    best = int(bs[ok[np.argmin(res["loss"][ok])]]) if ok.size else None
    out: dict[str, Any] = {
        "setting": config.setting, "budget": budget, "scaling": scaling, "b_ref": b_ref, "exact": res["exact"],
        "schedule": config.lr.kind, "loss_at_w0": loss0,
        "curves": {str(b): {"steps": int(steps[j]), "lr_c": float(lr_c[j]), "loss": _num(res["loss"][j]),
                            "var_full_grad": _num(res["var_full_grad"][j]), "var_g": _num(res["var_g"][j]),
                            "diverged": bool(diverged[j])} for j, b in enumerate(bs)},
        "best_b": best,
        # McCandlish et al.'s B_simple = E tr Σ / E‖∇L‖² and B_noise = E tr(HΣ) / E ∇LᵀH∇L (docs/theory.md §11)
        **{key: {"t": [int(t) for t in grid],
                 "curves": {str(b): [_num(v) for v in res[f"grid_{name}"][j]] for j, b in enumerate(bs)},
                 "at_budget": {str(b): _num(res[name][j]) for j, b in enumerate(bs)}}
           for key, name in (("b_simple", "noise_scale"), ("b_noise", "hessian_noise_scale"))},
    }
    if target_loss is not None:
        first = res["first_below"]
        S = {str(b): (int(first[j]) if first[j] >= 0 else None) for j, b in enumerate(bs)}
        out["target_loss"] = target_loss
        out["target_search_steps"] = {str(b): int(horizon[j]) for j, b in enumerate(bs)}
        out["steps_to_target"] = S
        out["examples_to_target"] = {k: (None if v is None else int(k) * v) for k, v in S.items()}
        reached = [(int(k), v) for k, v in S.items() if v is not None and v > 0]
        out["frontier"] = fit_frontier(np.array([b for b, _ in reached]), np.array([s for _, s in reached]))
    return out


def sweep(config, budget: int, scalings=tuple(SCALINGS), b_ref: float | None = None,
          target_loss: float | None = None, progress=None, cancel=None, executor=None) -> dict[str, dict[str, Any]]:
    """The advisor from replica runs for every rule (any setting with ``advise_cell``; for linear regression it is
    the replica check of the exact answer): {scaling: answer}. With an ``executor`` (backend/sweep.py: local or
    Ray) every (rule, b) cell first runs as one sweep there — in parallel on a cluster — and the answers are read
    from the cache; a cell that fails raises a ConfigError naming it."""
    check_scalings(scalings)
    for scaling in scalings:
        budget, _, b_ref, target_loss = check_request(config, budget, scaling, b_ref, target_loss)
    fetch = None
    if executor is not None:
        fetch = _run_cells(config, budget, scalings, b_ref, executor, progress, cancel)
    return {s: replica_answer(config, budget, s, b_ref, target_loss, progress, cancel, fetch) for s in scalings}


def _run_cells(config, budget, scalings, b_ref, executor, progress, cancel):
    """Run the advisor's cells as one sweep on ``executor``; returns how to read a cell's result (from the cache,
    under the key of the device it ran on)."""
    from backend import sweep as sweeps

    cells = tuple(sweeps.Cell(i, {"scaling": s, "b": int(b)}, cell) for i, ((s, b), cell) in enumerate(zip(
        [(s, b) for s in scalings for b in config.batch_sizes], sweep_cells(config, budget, scalings, b_ref))))
    spec = sweeps.Sweep(config.setting, config.to_json(), ("scaling", "b"), cells)
    progress = as_progress(progress)
    progress.total = len(cells)
    out = sweeps.run(spec, executor, None, lambda done, total, entry: progress.advance(1), cancel)
    if out["failed"]:
        first = out["failed"][0]
        raise ConfigError("sweep", f"{len(out['failed'])} cell(s) did not finish; the first "
                                   f"{first['overrides']}: {first['error']}")
    return lambda cell: core.cached_simulation(cell, device=executor.device(cell))


def sweep_cells(config, budget: int, scalings=tuple(SCALINGS), b_ref: float | None = None) -> list:
    """The run configs of a sweep (one per rule and b), e.g. for its cost estimate."""
    refuse_schedule(config)
    setting = settings.for_config(config)
    b_ref = float(b_ref or min(config.batch_sizes))
    return [setting.advise_cell(config, b, budget, (b / b_ref) ** SCALINGS[s]) for s in scalings
            for b in config.batch_sizes]


def replica_plan(config, budget: int, scalings=tuple(SCALINGS), b_ref: float | None = None,
                 executor=None) -> dict[str, Any]:
    """What a replica run of the advisor (the replica check, or the sweep of a setting without exact theory) can run,
    before anything runs: each b's cells (one per rule: ``advise_cell``) validated and passed through the resource
    guard on the device they would run on (``executor.device(cell)`` for a sweep executor such as Ray's, else this
    process's device). Returns {"seconds": {b: estimated seconds of its cells} for the b that fit,
    "refused": {b: one line — why, and the largest budget at which that b would fit}}."""
    budget, _, b_ref, _ = check_request(config, budget, scalings[0] if scalings else "none", b_ref, None)
    setting = settings.for_config(config)

    def cost(b: int, n: int) -> float:
        """Estimated seconds of b's cells at budget n (a ConfigError when one is refused)."""
        total = 0.0
        for s in scalings:
            cell = setting.advise_cell(config, b, n, (b / b_ref) ** SCALINGS[s])
            device = executor.device(cell) if executor is not None else core.resolve_device(cell.device)
            total += core.guard(cell, device)["seconds"]  # the run core's guard
        return total

    seconds: dict[int, float] = {}
    refused: dict[int, str] = {}
    for b in config.batch_sizes:
        try:
            seconds[int(b)] = cost(b, budget)
        except ConfigError as e:
            lo, hi = int(b), budget  # the largest budget that fits, by bisection (the cost grows with the budget)
            try:
                cost(b, lo)
            except ConfigError:
                lo = None
            while lo is not None and hi - lo > 1:
                mid = (lo + hi) // 2
                try:
                    cost(b, mid)
                    lo = mid
                except ConfigError:
                    hi = mid
            refused[int(b)] = (f"b = {b} left out: {e}" + ("" if lo is None else
                               f" (b = {b} fits a budget of up to {lo:,} samples)"))
    return {"seconds": seconds, "refused": refused}


def reachable_target(answers: dict[str, dict[str, Any]]) -> float | None:
    """A target loss the exact curves reach within the budget: the median final loss E L(w_{T_b}) over the rules and
    b that did not diverge, rounded up to two significant digits — so at least half of those (rule, b) reach it
    (None when every one diverged)."""
    finals = [row["loss"] for ans in answers.values() for row in ans["curves"].values()
              if not row["diverged"] and row["loss"] is not None and row["loss"] > 0]
    if not finals:
        return None
    median = float(np.median(finals))
    scale = 10.0 ** (np.floor(np.log10(median)) - 1)
    return float(f"{np.ceil(median / scale) * scale:.2g}")


def replica_answer(config, budget: int, scaling: str, b_ref: float, target_loss: float | None, progress=None,
                   cancel=None, fetch=None) -> dict[str, Any]:
    """The advisor from replica runs: one ``simulate`` per b of the cell config ``advise_cell`` gives (cached like
    any run: a cell computed once is served again; ``fetch(cell)``, if given, reads a cell run elsewhere), its
    quantities at the end of the budget with their SEs."""
    setting = settings.for_config(config)
    names = setting.ADVISOR_QUANTITIES
    bs = list(config.batch_sizes)
    curves, losses, loss0 = {}, [], None
    first_below: dict[str, int | None] = {}
    for b in bs:
        cell = setting.advise_cell(config, b, budget, (b / b_ref) ** SCALINGS[scaling])
        # a run goes through the core: guard, device, cache
        res = (fetch(cell) if fetch is not None else None) or core.simulate(cell, progress, cancel)
        row: dict[str, Any] = {"steps": int(setting.advisor_steps(cell, b, res["x"])[-1]), "config": cell.to_json(),
                               "cached": bool(res["cached"])}
        for out_name, q in names.items():
            row[out_name] = _num(res["curves"][q]["value"][0, -1])
            row[f"{out_name}_se"] = _num(res["curves"][q]["se"][0, -1])
        if "b_simple" in res["curves"]:
            row["b_simple"], row["b_simple_se"] = (_num(res["curves"]["b_simple"][k][0, -1]) for k in ("value", "se"))
        loss_path = res["curves"][names["loss"]]["value"][0]
        loss0 = float(loss_path[0]) if loss0 is None else loss0
        if target_loss is not None:
            hit = np.flatnonzero(loss_path <= target_loss)
            first_below[str(b)] = int(setting.advisor_steps(cell, b, res["x"][hit[0]])) if hit.size else None
        losses.append(row["loss"])
        curves[str(b)] = row
    loss = np.array([np.nan if v is None else v for v in losses])
    diverged = ~np.isfinite(loss) | (loss > loss0 * DIVERGENCE_FACTOR)
    for j, b in enumerate(bs):
        curves[str(b)]["diverged"] = bool(diverged[j])
    ok = np.flatnonzero(~diverged)
    out: dict[str, Any] = {"setting": config.setting, "budget": budget, "scaling": scaling, "b_ref": b_ref,
                           "exact": False, "loss_at_w0": loss0, "curves": curves,
                           "best_b": int(bs[ok[np.argmin(loss[ok])]]) if ok.size else None}
    if target_loss is not None:
        out["target_loss"] = target_loss
        out["steps_to_target"] = first_below
        out["examples_to_target"] = {k: (None if v is None else int(k) * v) for k, v in first_below.items()}
        reached = [(int(k), v) for k, v in first_below.items() if v]
        out["frontier"] = fit_frontier(np.array([b for b, _ in reached]), np.array([v for _, v in reached]))
    return out


AGREEMENT_Z = 4.0  # the replica check's agreement: |z| ≤ 4


def compare_replicas(exact: dict[str, dict], replicas: dict[str, dict]) -> list[dict[str, Any]]:
    """The replica check of the exact advisor, one row per (rule, b) run: the exact E L(w_T), the replica estimate
    and its SE, z = (estimate − exact) / SE, and a note — "agrees" (|z| ≤ 4), "disagrees" (|z| > 4), or why there is
    no z: the exact loss diverged (its mean is then dominated by rare runs: no z is meaningful), the replicas
    diverged (a non-finite or 10⁶-fold loss), or a zero or non-finite SE. ``exact``, ``replicas``: {rule: answer} (advise_rules,
    sweep)."""
    rows = []
    for rule, ans in replicas.items():
        for b, row in ans["curves"].items():
            ref = exact[rule]["curves"][b]
            z, note = None, None
            if ref["diverged"]:
                note = "diverged (exact): no z"
            elif row["diverged"] or row["loss"] is None:
                note = "replicas diverged"
            elif row["loss_se"] is None:
                note = "no finite SE: no z"
            elif not row["loss_se"]:
                note = "zero SE: no z"
            else:
                z = (row["loss"] - ref["loss"]) / row["loss_se"]
                note = "agrees" if abs(z) <= AGREEMENT_Z else "disagrees"
            rows.append({"rule": rule, "b": int(b), "exact": ref["loss"], "replicas": row["loss"],
                         "SE": row["loss_se"], "z": z, "note": note})
    return rows


def fit_frontier(b: np.ndarray, steps: np.ndarray) -> dict[str, Any] | None:
    """McCandlish et al.'s model (S/S_min − 1)(E/E_min − 1) = 1 with E = b·S, fitted to the (b, S_b) pairs.

    The model is S = S_min + E_min / b (then E = E_min + S_min·b, and B_crit = E_min / S_min): linear in (1, 1/b),
    fitted by least squares on the relative residuals (weights 1/S_b). Needs two distinct b."""
    b, steps = np.asarray(b, dtype=np.float64), np.asarray(steps, dtype=np.float64)
    if len(np.unique(b)) < 2:
        return None
    A = np.stack([np.ones_like(b), 1.0 / b], axis=1) / steps[:, None]
    (s_min, e_min), *_ = np.linalg.lstsq(A, np.ones_like(b), rcond=None)
    fitted = s_min + e_min / b
    return {"S_min": float(s_min), "E_min": float(e_min),
            "B_crit": float(e_min / s_min) if s_min > 0 else None,
            "b": [int(v) for v in b], "steps_fitted": [float(v) for v in fitted],
            "residuals": [float(v) for v in steps - fitted],
            "relative_rms": float(np.sqrt(np.mean(((steps - fitted) / steps) ** 2)))}


def _num(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


# -- the momentum axis (docs/theory.md §9, §7): β beside the scaling rules ------------------------------------------

def check_momenta(momenta: Any) -> tuple:
    """The momentum axis: a non-empty list of distinct β ∈ [0, 1) (exact where given exactly); a ConfigError naming
    ``momentum`` otherwise."""
    from backend.exact import jsonable_number

    if isinstance(momenta, (str, bytes)) or not isinstance(momenta, (list, tuple)) or not momenta:
        raise ConfigError("momentum", f"expected a non-empty list of momenta β in [0, 1), got {momenta!r}")
    out = []
    for value in momenta:
        beta = parse_number(value, "momentum")
        if not 0 <= beta < 1:
            raise ConfigError("momentum", f"each β must be in [0, 1), got {jsonable_number(beta)}")
        if beta in out:
            raise ConfigError("momentum", f"β = {float(beta):g} is given twice")
        out.append(beta)
    return tuple(out)


def momentum_key(beta) -> str:
    """β as the answer's key: "0", "0.5", "0.9"."""
    return f"{float(beta):g}"


def optimizer_json(config) -> dict[str, Any]:
    """The config's ``optimizer`` field as its setting writes it (the sequence model's lr, warm-up and clip kept), in
    the named form (plain SGD's omitted field as {"name": "sgd", …})."""
    return {**(config.to_json().get("optimizer") or {}), **optimizer_of(config).to_json()}


def momentum_config(config, beta, effective_lr: bool = False):
    """The config with momentum β (its Nesterov, weight decay and whatever else its optimizer field holds kept;
    Nesterov is heavy ball at β = 0, so it is off there) and, with ``effective_lr``, the step size times (1 − β) —
    the schedule's constant c, or the sequence model's optimizer.lr: the effective step α/(1 − β) of the config's at
    every β. A ConfigError naming the field where the setting cannot run it (an Adam-family optimizer)."""
    name = optimizer_of(config).name
    if name != "sgd":
        raise ConfigError("momentum", f"the momentum axis is the SGD family's; the config's optimizer is {name!r}")
    opt = {**optimizer_json(config), "momentum": beta, **({"nesterov": False} if beta == 0 else {})}
    changes: dict[str, Any] = {"optimizer": opt}
    if effective_lr:
        lr = getattr(config, "lr", None)
        if hasattr(lr, "c"):
            changes["lr"] = {**lr.to_json(), "c": _times(lr.c, 1 - beta)}
        elif "lr" in opt:  # the sequence model's step size lives in its optimizer field
            opt["lr"] = _times(parse_number(opt["lr"], "optimizer.lr"), 1 - beta)
        else:
            raise ConfigError("effective_lr", "needs a learning-rate schedule lr with a constant c in the config")
    return config.replace(**changes)


def _times(c, factor):
    """c · factor, exact ("p/q") when both are exact."""
    from fractions import Fraction

    from backend.exact import jsonable_number

    if isinstance(c, Fraction) and isinstance(factor, Fraction):
        return jsonable_number(c * factor)
    return float(c) * float(factor)


def advise_momentum(config, budget: int, momenta, scalings=tuple(SCALINGS), b_ref: float | None = None,
                    target_loss: float | None = None, effective_lr: bool = False, progress=None, cancel=None,
                    executor=None) -> dict[str, Any]:
    """The advisor along a momentum axis: for every (rule, β) the answer of ``advise`` for the config with momentum β
    (``momentum_config``); exact in one pass of lanes (β × rule × b) where the setting has ``advise``, else one replica
    sweep per β. Returns {"momentum", "effective_lr", "scalings", "answers": {rule: {β: answer}}, "best_b": {rule:
    {β: b}}, "best": {rule: {"momentum", "b", "loss"} — the best (b, β) of the rule}}."""
    check_scalings(scalings)
    refuse_schedule(config)
    momenta = check_momenta(momenta)
    configs = [momentum_config(config, beta, effective_lr) for beta in momenta]
    if hasattr(settings.for_config(config), "advise"):
        answers = _exact_momentum(config, configs, momenta, budget, scalings, b_ref, target_loss)
    else:  # one sweep per β; on an executor one count of cells over all of them (here: each run's own steps)
        if executor is not None:
            progress = as_progress(progress)
            progress.total = sum(len(sweep_cells(cfg, budget, scalings, b_ref)) for cfg in configs)
        per_beta = [advise_rules(cfg, budget, scalings, b_ref, target_loss, progress if executor is None else
                                 Progress(on_advance=progress.advance), cancel, executor) for cfg in configs]
        answers = {s: {momentum_key(beta): {**per_beta[i][s], "momentum": float(beta),
                                            "optimizer": optimizer_json(configs[i])}
                       for i, beta in enumerate(momenta)} for s in scalings}
    first = next(iter(next(iter(answers.values())).values()))
    out: dict[str, Any] = {"setting": config.setting, "budget": first["budget"], "b_ref": first["b_ref"],
                           "exact": first["exact"], "momentum": [float(b) for b in momenta],
                           "effective_lr": bool(effective_lr), "scalings": list(scalings), "answers": answers,
                           "best_b": {s: {k: a["best_b"] for k, a in per.items()} for s, per in answers.items()},
                           "best": {s: _best_over_momentum(per) for s, per in answers.items()}}
    return out


def _best_over_momentum(per_beta: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The (b, β) of the lowest final loss among the b that did not diverge, over every β (None if all diverged)."""
    best = None
    for key, ans in per_beta.items():
        b = ans["best_b"]
        if b is None:
            continue
        loss = ans["curves"][str(b)]["loss"]
        if best is None or loss < best["loss"]:
            best = {"momentum": float(key), "b": b, "loss": loss}
    return best


def _exact_momentum(config, configs, momenta, budget, scalings, b_ref, target_loss) -> dict[str, dict[str, Any]]:
    """Every (β, rule, b) as one lane of the setting's exact ``advise``, split into the answers of ``_answer``."""
    for scaling in scalings:
        budget, _, b_ref_checked, target_loss = check_request(configs[0], budget, scaling, b_ref, target_loss)
    b_ref = b_ref_checked
    bs = np.asarray(config.batch_sizes)
    steps = budget // bs
    combos = [(i, s) for i in range(len(momenta)) for s in scalings]
    lr_c = np.concatenate([float(configs[i].lr.c) * (bs / b_ref) ** SCALINGS[s] for i, s in combos])
    beta = np.repeat([float(momenta[i]) for i, _ in combos], len(bs))
    grid = np.unique(np.round(np.geomspace(1, steps.max(), GRID_POINTS)).astype(int)) if steps.max() else [0]
    grid = np.unique(np.concatenate([[0], grid]))
    lanes = np.tile(steps, len(combos))
    horizon = lanes * TARGET_HORIZON if target_loss is not None else lanes
    res = settings.for_config(config).advise(config, np.tile(bs, len(combos)), lanes, lr_c, horizon, target_loss,
                                             grid, momentum=beta)  # the config's Nesterov and λ, β per lane
    B = len(bs)
    answers: dict[str, dict[str, Any]] = {s: {} for s in scalings}
    for j, (i, s) in enumerate(combos):
        part = {k: (v[j * B:(j + 1) * B] if isinstance(v, np.ndarray) else v) for k, v in res.items()}
        ans = _answer(configs[i], budget, s, b_ref, target_loss, steps, lr_c[j * B:(j + 1) * B],
                      horizon[j * B:(j + 1) * B], grid, part)
        answers[s][momentum_key(momenta[i])] = {**ans, "momentum": float(momenta[i]),
                                                "optimizer": optimizer_json(configs[i])}
    return answers
